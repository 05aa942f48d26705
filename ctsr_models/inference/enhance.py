"""Whole-volume through-plane super-resolution: thick CT in, thin CT out, same patient space.

Pipeline (:func:`enhance`):
    1. The slab thickness comes from the caller, else the header (``slice_thickness``), else it is
       taken equal to the slice spacing (logged).
    2. The output grid follows :mod:`~ctsr_models.inference.grid`.
    3. An interpolation baseline resamples with SimpleITK. A network model first resamples the slabs
       linearly at their physical centres onto the output grid (exactly as its training inputs were
       made, :func:`ctsr_models.data.pairs.interpolate_slabs`), then refines that volume with MONAI's
       ``SlidingWindowInferer`` (Gaussian blending), window by window, so memory stays bounded.
    4. The result is float32 HU on the output grid; writers store int16 HU.

With ``EnhanceOptions.adapt`` set, a copy of the network is first fine-tuned on the scan's own in-plane
detail (:mod:`~ctsr_models.inference.adapt`); the shipped weights are never modified, and the
pretrained network is kept when adaptation does not beat it on the scan's held-out in-plane pairs.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer

from ctsr_models.data.intensity import hu_to_net, net_to_hu
from ctsr_models.data.pairs import interpolate_slabs
from ctsr_models.io.errors import InputError
from ctsr_models.io.volume import Volume

from torch import nn

from .adapt import AdaptOptions, adapt_network
from .grid import ZGrid, through_plane_grid
from .interpolation import interpolate_to_grid
from .models import ModelSpec, load_network, resolve_model

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
"""``progress(fraction_done, stage)``: fraction in [0, 1], stage a short word (``"inference"``)."""

DEVICES = ("auto", "cpu", "cuda")
MAX_OUTPUT_VOXELS = 2_000_000_000  # about 8 GB of float32: refuse larger requests up front
_Y_CHUNK = 64


@dataclass(frozen=True)
class EnhanceOptions:
    """How to enhance.

    Attributes:
        target_spacing: output slice spacing ``s`` in mm.
        model: ``default``, a shipped model name, or ``linear``/``cubic``/``lanczos``.
        input_thickness: slab thickness in mm (default: the header's, else the slice spacing).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        overlap: sliding-window overlap fraction.
        sw_batch_size: windows per network call.
        adapt: fine-tune a copy of the network on this scan first (``None``: no adaptation).
    """

    target_spacing: float = 1.0
    model: str = "default"
    input_thickness: float | None = None
    device: str = "auto"
    overlap: float = 0.25
    sw_batch_size: int = 1
    adapt: AdaptOptions | None = None


def pick_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is refused."""
    if name not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def slab_thickness(volume: Volume, given: float | None) -> float:
    """The input's slab thickness in mm (see step 1 of the module docstring)."""
    if given is not None:
        if not (math.isfinite(given) and given > 0):
            raise InputError(f"input thickness must be a positive number of mm, got {given}")
        return float(given)
    if volume.slice_thickness:
        return float(volume.slice_thickness)
    log.warning("slice thickness unknown; taking it equal to the slice spacing (%.3g mm); "
                "pass --input-thickness to set it", volume.spacing[2])
    return float(volume.spacing[2])


def enhance(volume: Volume, options: EnhanceOptions = EnhanceOptions(), progress: Progress | None = None) -> Volume:
    """Enhance a thick-slice CT to thin slices.

    Args:
        volume: thick-slice CT (HU), any regular geometry.
        options: target spacing, model, thickness, device, adaptation.
        progress: optional callback, see :data:`Progress`.

    Returns:
        The enhanced volume (float32 HU) on the output grid, with the source's DICOM identity.

    Raises:
        InputError: target not finer than the input, output too large, unknown model, bad weights,
            adaptation asked for an interpolation model.
    """
    return enhance_detailed(volume, options, progress)[0]


def enhance_detailed(volume: Volume, options: EnhanceOptions = EnhanceOptions(),
                     progress: Progress | None = None) -> tuple[Volume, dict[str, Any]]:
    """:func:`enhance`, also returning what was done: ``{"model": name, "adaptation": summary or None}``
    (the summary of :meth:`~ctsr_models.inference.adapt.AdaptResult.summary`)."""
    report = progress or (lambda fraction, stage: None)
    grid = through_plane_grid(volume, options.target_spacing)
    n_voxels = grid.n_slices * volume.shape[1] * volume.shape[2]
    if n_voxels > MAX_OUTPUT_VOXELS:
        raise InputError(f"the output would have {n_voxels:,} voxels ({grid.n_slices} slices), more than the "
                         f"{MAX_OUTPUT_VOXELS:,} allowed; choose a larger target spacing")
    thickness = slab_thickness(volume, options.input_thickness)
    model = resolve_model(options.model)
    if options.adapt is not None and isinstance(model, str):
        raise InputError(f"model {options.model!r} is an interpolation; adaptation needs a network model")
    report(0.0, "preparing")
    findings, adaptation = [], None
    if isinstance(model, str):
        array = interpolate_to_grid(volume, grid, model)
        name = model
    else:
        net = None
        if options.adapt is not None:
            result = adapt_network(volume, model, grid.spacing, thickness, options.adapt,
                                   pick_device(options.device), lambda f, stage: report(0.5 * f, stage))
            net, adaptation = result.net, result.summary()
            findings.append(result.message)
        infer_report = report if net is None else (lambda f, stage: report(0.5 + 0.5 * f, stage))
        array = _run_network(volume, grid, thickness, model, options, infer_report, net)
        name = model.name + (" (adapted to this scan)" if adaptation and adaptation["adapted"] else "")
    report(1.0, "done")
    out = Volume(array, slice_thickness=grid.spacing, meta=dict(volume.meta),
                 findings=[*volume.findings, f"enhanced: model {name}, slabs {thickness:g} mm every "
                           f"{volume.spacing[2]:g} mm -> {grid.spacing:g} mm slices", *findings],
                 **grid.output_geometry(volume))
    return out, {"model": name, "adaptation": adaptation}


def resampled_input(volume: Volume, grid: ZGrid) -> np.ndarray:
    """The slabs linearly interpolated at their physical centres onto the output grid.

    Returns:
        ``(grid.n_slices, y, x)`` float32 HU (computed in row chunks to bound temporaries).
    """
    out = np.empty((grid.n_slices, volume.shape[1], volume.shape[2]), dtype=np.float32)
    for y0 in range(0, volume.shape[1], _Y_CHUNK):
        rows = slice(y0, y0 + _Y_CHUNK)
        out[:, rows] = interpolate_slabs(volume.array[:, rows], grid.slab_centres_mm, grid.n_slices, grid.spacing)
    return out


def _run_network(volume: Volume, grid: ZGrid, thickness: float, spec: ModelSpec, options: EnhanceOptions,
                 report: Progress, net: nn.Module | None = None) -> np.ndarray:
    """Sliding-window inference of ``spec``'s network (or of ``net``, e.g. adapted, when given)."""
    device = pick_device(options.device)
    net = load_network(spec, device) if net is None else net.to(device).eval()
    x = torch.from_numpy(hu_to_net(resampled_input(volume, grid)))[None, None]  # (1, 1, D, H, W), CPU
    ratios = torch.tensor([[thickness / grid.spacing, volume.spacing[2] / grid.spacing]], device=device)
    total = _n_windows(x.shape[2:], spec.roi_size, options.overlap, options.sw_batch_size)
    done = [0]

    def predictor(window: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = net(window, ratios.expand(window.shape[0], -1)).float()
        done[0] += 1
        report(min(done[0] / total, 1.0) * 0.98, "inference")
        return out

    inferer = SlidingWindowInferer(roi_size=spec.roi_size, sw_batch_size=options.sw_batch_size,
                                   overlap=options.overlap, mode="gaussian", padding_mode="replicate",
                                   sw_device=device, device=torch.device("cpu"))
    with torch.inference_mode():
        y = inferer(x, predictor)
    del x
    return net_to_hu(y[0, 0].numpy())


def _n_windows(size: tuple[int, ...], roi: tuple[int, ...], overlap: float, batch: int) -> int:
    """Number of predictor calls MONAI's sliding window makes (for progress only)."""
    count = 1
    for n, r in zip(size, roi):
        step = max(int(r * (1 - overlap)), 1)
        count *= 1 if n <= r else math.ceil((n - r) / step) + 1
    return max(math.ceil(count / batch), 1)
