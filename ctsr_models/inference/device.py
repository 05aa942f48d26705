"""Where a network runs and how a long computation reports progress: the one definition of each,
used by every pipeline (enhancement, X-ray to CT), per-scan adaptation, the CLIs, the server and the
benchmarks."""
from __future__ import annotations

from collections.abc import Callable

import torch

from ctsr_models.io.errors import InputError

DEVICES = ("auto", "cpu", "cuda")
"""Device names users may pass (``--device``, the server's ``device`` parameter)."""

Progress = Callable[[float, str], None]
"""``progress(fraction_done, stage)``: fraction in [0, 1], stage a short word (``"inference"``)."""


def pick_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is refused.

    Raises:
        InputError: a name not in :data:`DEVICES`, or ``cuda`` on a machine without a CUDA GPU.
    """
    if name not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def silent(fraction: float, stage: str) -> None:
    """A :data:`Progress` that reports nothing."""


def progress_span(progress: Progress | None, start: float, stop: float) -> Progress:
    """``progress`` for one stage of a longer run: fractions ``[0, 1]`` of the stage map to
    ``[start, stop]`` of the whole (``None``: :func:`silent`)."""
    report = progress or silent
    if (start, stop) == (0.0, 1.0):
        return report
    return lambda fraction, stage: report(start + (stop - start) * fraction, stage)
