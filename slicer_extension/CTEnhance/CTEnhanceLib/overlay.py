"""The uncertainty overlay, decided without Slicer: what to fetch, where to keep it, its name, its display, its views.

A diffusion model's result (super-resolution or denoising: the same convention for every task) is
the mean of K samples; the server keeps the calibrated per-voxel standard deviation of the same
inference (float32 HU, the result's grid) and names it in the result JSON as ``uncertainty.url``,
a path on the server that hands it out **once**. The client process therefore fetches it right
after the result, in the same job (:func:`uncertainty_url`, :func:`uncertainty_path`), and reports
it in its final JSON line. The module loads it as ``<input> — uncertainty (AI, HU std)``
(:func:`uncertainty_name`) beside the result, and shows it as a colour overlay (foreground layer) on
the result row only (:func:`overlay_plan`), windowed from 0 HU to the 99th percentile of the
volume's values (:func:`overlay_window`), with voxels below 5 % of that window transparent so the
result itself shows wherever the samples agree. While an AI-generated result is shown, the result
views carry :func:`banner_text`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .layout import VIEWS, ViewSpec

UNCERTAINTY_SUFFIX = ".uncertainty.nrrd"
"""The uncertainty file beside a result ``result.nrrd``: ``result.uncertainty.nrrd`` (the server sends NRRD)."""
UNCERTAINTY_EXTENSION = ".nrrd"
UNCERTAINTY_LABEL = "uncertainty (AI, HU std)"
COLOR_NODE_IDS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
"""The overlay's colour map, the first one Slicer has (Inferno: dark to bright yellow, readable in grey)."""
DEFAULT_OPACITY = 0.4
"""Opacity of the overlay over the result (0: hidden, 1: only the overlay)."""
WINDOW_PERCENTILE = 99.0
"""The overlay's colour range ends at this percentile of the uncertainty's values."""
TRANSPARENT_BELOW = 0.05
"""Voxels below this fraction of the colour range are not drawn (the result shows through)."""
MIN_WINDOW_HU = 1.0
"""The smallest colour range (a one-sample result has zero uncertainty everywhere)."""
RESULT_ROWS = ("enhanced",)
"""The comparison rows that show the result (and so the overlay)."""
BANNER_SHOWN = "AI-generated detail — uncertainty shown"
BANNER_HIDDEN = "AI-generated detail — uncertainty hidden"
BANNER_PLAIN = "AI-generated detail"
_SERVER_PATH = re.compile(r"/[A-Za-z0-9._~/%-]*")


def uncertainty_url(details: Mapping[str, Any]) -> str | None:
    """The server path to fetch a result's uncertainty from (``uncertainty.url`` of its result JSON);
    ``None`` when the result has none.

    Raises:
        ValueError: ``uncertainty.url`` is not a path on the same server (no scheme, host, query or ``..``).
    """
    entry = details.get("uncertainty")
    url = entry.get("url") if isinstance(entry, Mapping) else None
    if url is None:
        return None
    if not isinstance(url, str) or not _SERVER_PATH.fullmatch(url) or url.startswith("//") or ".." in url:
        raise ValueError(f"the server named an uncertainty address that is not a path on it: {url!r}")
    return url


def uncertainty_path(output: str | Path) -> Path:
    """Where the uncertainty of the result ``output`` is written: beside it, ``<stem>.uncertainty.nrrd``."""
    output = Path(output)
    lower = output.name.lower()
    stem = output.name[:-len(".nii.gz")] if lower.endswith(".nii.gz") else output.stem
    return output.with_name(stem + UNCERTAINTY_SUFFIX)


def uncertainty_name(input_name: str) -> str:
    """The uncertainty volume's name in the scene: ``<input> — uncertainty (AI, HU std)``."""
    return f"{input_name} — {UNCERTAINTY_LABEL}"


@dataclass(frozen=True)
class OverlayWindow:
    """How the uncertainty is coloured, in HU of standard deviation.

    Attributes:
        lower: the bottom of the colour map (0 HU).
        upper: the top of the colour map (the 99th percentile, at least :data:`MIN_WINDOW_HU`).
        threshold: voxels below this are transparent.
    """

    lower: float
    upper: float
    threshold: float

    @property
    def window(self) -> float:
        """Slicer's window (width of the colour range)."""
        return self.upper - self.lower

    @property
    def level(self) -> float:
        """Slicer's level (centre of the colour range)."""
        return (self.upper + self.lower) / 2


def overlay_window(percentile_99: float) -> OverlayWindow:
    """The colour range for an uncertainty volume whose 99th percentile is ``percentile_99`` HU.

    Raises:
        ValueError: the percentile is negative or not finite (not a standard deviation).
    """
    if not (math.isfinite(percentile_99) and percentile_99 >= 0):
        raise ValueError(f"an uncertainty (standard deviation) percentile must be finite and >= 0, got {percentile_99}")
    upper = max(float(percentile_99), MIN_WINDOW_HU)
    return OverlayWindow(0.0, upper, TRANSPARENT_BELOW * upper)


def overlay_plan(result_id: str, uncertainty_id: str | None, shown: bool = True,
                 views: tuple[ViewSpec, ...] = VIEWS) -> dict[str, str | None]:
    """View tag -> the volume its foreground layer shows: the uncertainty on the result row when shown,
    nothing elsewhere (the original row never gets it).

    Raises:
        ValueError: the uncertainty is the result itself.
    """
    if uncertainty_id is not None and uncertainty_id == result_id:
        raise ValueError("the uncertainty overlay must be a volume of its own, not the result")
    overlay = uncertainty_id if shown else None
    return {view.tag: overlay if view.row in RESULT_ROWS else None for view in views}


def banner_text(details: Mapping[str, Any], overlay_shown: bool | None) -> str:
    """The line on the result views when the result says it is AI-generated (``ai_generated``):
    :data:`BANNER_SHOWN` or :data:`BANNER_HIDDEN` (``overlay_shown``; ``None``: the result has no
    uncertainty, :data:`BANNER_PLAIN`); ``""`` for a result that is not."""
    if details.get("ai_generated") is not True:
        return ""
    if overlay_shown is None:
        return BANNER_PLAIN
    return BANNER_SHOWN if overlay_shown else BANNER_HIDDEN
