"""Low-dose CT denoising of a whole volume with a shipped ``denoise`` model (used by ``ctsr-denoise`` and
the server task ``ct_denoise``).

The regression denoiser is 2.5D: each axial slice is predicted from itself and its neighbours
(``in_slices`` of them, the volume's first and last slices repeated at the ends). Slices go through the
network a chunk at a time, each chunk in overlapping in-plane windows (MONAI ``SlidingWindowInferer``,
Gaussian blending), so memory is bounded by the chunk, not by the volume. HU in, HU out; the geometry and
the number of slices are unchanged, and the input is never modified.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from ctsr_models.data.intensity import hu_to_net, net_to_hu
from ctsr_models.io import InputError, Volume

from .device import Progress, pick_device, silent
from .models import ModelKind, load_network, resolve_model

log = logging.getLogger(__name__)

TASK = "denoise"
"""The manifest task of denoising models."""


@dataclass(frozen=True)
class DenoiseOptions:
    """How to denoise.

    Attributes:
        model: a shipped ``denoise`` model name, or ``default``.
        device: ``auto``, ``cpu`` or ``cuda``.
        overlap: in-plane sliding-window overlap fraction, in [0, 1).
        slices_per_chunk: axial slices that go through the network together (bounds memory).
    """

    model: str = "default"
    device: str = "auto"
    overlap: float = 0.25
    slices_per_chunk: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < 1:
            raise InputError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.slices_per_chunk < 1:
            raise InputError(f"slices_per_chunk must be >= 1, got {self.slices_per_chunk}")


def neighbour_stack(array: np.ndarray, start: int, stop: int, in_slices: int) -> np.ndarray:
    """Slices ``start..stop-1`` of ``array`` ``(Z, H, W)``, each with its neighbours: ``(stop-start, in_slices,
    H, W)`` float32 network scale; indices outside the volume repeat its first or last slice."""
    r = in_slices // 2
    idx = np.clip(np.arange(start, stop)[:, None] + np.arange(-r, r + 1)[None, :], 0, array.shape[0] - 1)
    return hu_to_net(np.asarray(array, dtype=np.float32)[idx])


def denoise_array(array: np.ndarray, net: nn.Module, device: torch.device, roi_size: tuple[int, int],
                  options: DenoiseOptions = DenoiseOptions(), progress: Progress | None = None) -> np.ndarray:
    """Run a 2.5D denoising network over every axial slice.

    Args:
        array: ``(Z, H, W)`` HU. Not modified.
        net: maps ``(B, in_slices, H, W)`` to ``(B, 1, H, W)`` in network scale; ``net.in_slices`` is read.
        device: where the network runs.
        roi_size: in-plane window ``(H, W)`` voxels.
        options: overlap and chunk size.
        progress: ``progress(fraction, "inference")``.

    Returns:
        ``(Z, H, W)`` float32 HU.
    """
    report = progress or silent
    in_slices = int(getattr(net, "in_slices", 1))
    net = net.to(device).eval()
    inferer = SlidingWindowInferer(roi_size=roi_size, sw_batch_size=4, overlap=options.overlap, mode="gaussian",
                                   padding_mode="replicate", sw_device=device, device=torch.device("cpu"))

    def window(patch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return net(patch).float()

    out = np.empty(array.shape, dtype=np.float32)
    n = array.shape[0]
    with torch.inference_mode():
        for start in range(0, n, options.slices_per_chunk):
            stop = min(start + options.slices_per_chunk, n)
            x = torch.from_numpy(neighbour_stack(array, start, stop, in_slices))
            out[start:stop] = net_to_hu(inferer(x, window)[:, 0].numpy())
            report(stop / n * 0.98, "inference")
    return out


def denoise(volume: Volume, options: DenoiseOptions = DenoiseOptions(), progress: Progress | None = None) -> Volume:
    """Denoise a (low-dose) CT with a shipped ``denoise`` model.

    Args:
        volume: CT in HU, any number of slices. Not modified.
        options: model, device, overlap, chunk size.
        progress: ``progress(fraction, stage)``.

    Returns:
        A float32 HU volume with the input's geometry and meta; its findings say which AI model denoised it.

    Raises:
        InputError: unknown model or device, or a model of a kind this pipeline cannot run.
    """
    spec = resolve_model(options.model, task=TASK)
    if spec.kind is not ModelKind.REGRESSION:
        raise InputError(f"denoise model {spec.name!r} is of kind {spec.kind.value}; only regression models run here")
    device = pick_device(options.device)
    report = progress or silent
    report(0.0, "loading model")
    net = load_network(spec, device)
    hu = denoise_array(volume.array, net, device, tuple(spec.roi_size[1:]), options, report)
    finding = f"denoised by AI model {spec.name} (low-dose CT denoising; AI-generated image, not an acquired one)"
    log.info(finding)
    report(1.0, "done")
    return volume.replace(array=hu, findings=[*volume.findings, finding])
