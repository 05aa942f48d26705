"""One predictor interface for through-plane SR, one implementation per model kind.

A :class:`Predictor` turns thick slabs into a volume on the output grid
(:mod:`~ctsr_models.inference.grid`); :func:`predictor_for` picks the implementation from the model's
:class:`~ctsr_models.inference.models.ModelKind`. ``ctsr-enhance``, the server task, the benchmarks
(all through :func:`~ctsr_models.inference.enhance.enhance`) and the SR training validation
(:meth:`RegressionPredictor.forward`) call it.

Kinds:
    * ``interpolation`` (:class:`InterpolationPredictor`): SimpleITK resampling along z.
    * ``regression`` (:class:`RegressionPredictor`): the slabs are resampled linearly at their
      physical centres onto the output grid (exactly as training inputs are made,
      :func:`ctsr_models.data.pairs.interpolate_slabs`), then the network refines that volume window
      by window with MONAI's ``SlidingWindowInferer`` (Gaussian blending), so memory stays bounded.
      It runs the network it is given (e.g. one adapted to the scan by :mod:`ctsr_models.training.adapt`)
      or the shipped one.
    * ``diffusion`` (:class:`~ctsr_models.inference.diffusion_predictor.DiffusionPredictor`): K samples of
      a denoiser conditioned on the resampled slabs and a regression model's output, each made
      consistent with the slabs, their mean and calibrated standard deviation
      (:meth:`Predictor.predict_detailed` returns both).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from ctsr_models.data.intensity import hu_to_net, net_to_hu
from ctsr_models.data.pairs import interpolate_slabs
from ctsr_models.io.errors import InputError
from ctsr_models.io.volume import Volume

from .device import Progress, pick_device, silent
from .grid import ZGrid
from .interpolation import interpolate_to_grid
from .models import ModelKind, ModelSpec, load_network, resolve_model

_Y_CHUNK = 64


@dataclass(frozen=True)
class Prediction:
    """What a predictor made.

    Attributes:
        array: ``(n_slices, y, x)`` float32 HU, the result.
        std: ``(n_slices, y, x)`` float32 HU, a calibrated per-voxel standard deviation (diffusion), else ``None``.
        details: JSON-able facts about how it was made (empty for interpolation and regression).
    """

    array: np.ndarray
    std: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Predictor(ABC):
    """Through-plane SR by one model.

    Args:
        name: the model's name (for findings and logs).
    """

    kind: ModelKind

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def predict(self, volume: Volume, grid: ZGrid, thickness: float, progress: Progress | None = None) -> np.ndarray:
        """Enhance ``volume`` onto ``grid``.

        Args:
            volume: thick-slice CT (HU); not modified.
            grid: the output grid (:func:`~ctsr_models.inference.grid.through_plane_grid`).
            thickness: slab thickness in mm.
            progress: ``progress(fraction, stage)``.

        Returns:
            ``(grid.n_slices, y, x)`` float32 HU.
        """

    def predict_detailed(self, volume: Volume, grid: ZGrid, thickness: float,
                         progress: Progress | None = None) -> Prediction:
        """:meth:`predict` with what else the model gives (a diffusion model: the uncertainty); by default
        only the array."""
        return Prediction(self.predict(volume, grid, thickness, progress))


class InterpolationPredictor(Predictor):
    """An interpolation baseline (``linear``, ``cubic`` or ``lanczos``): no network."""

    kind = ModelKind.INTERPOLATION

    def predict(self, volume: Volume, grid: ZGrid, thickness: float, progress: Progress | None = None) -> np.ndarray:
        return interpolate_to_grid(volume, grid, self.name)


class RegressionPredictor(Predictor):
    """A network that maps the linearly resampled slabs to thin slices in one pass per window.

    Args:
        name: the model's name.
        net: the network, called as ``net(x, ratios)`` with ``x`` ``(B, 1, D, H, W)`` in network units
            (:mod:`ctsr_models.data.intensity`) and ``ratios`` ``(B, 2)`` = (slab thickness, slab
            spacing) over the output spacing.
        device: where the network runs (it is moved there, in eval mode, by :meth:`predict`).
        roi_size: sliding-window size ``(z, y, x)`` in voxels of the output grid.
        overlap: sliding-window overlap fraction.
        sw_batch_size: windows per network call.
    """

    kind = ModelKind.REGRESSION

    def __init__(self, name: str, net: nn.Module, device: torch.device, roi_size: tuple[int, int, int] = (48, 128, 128),
                 overlap: float = 0.25, sw_batch_size: int = 1) -> None:
        super().__init__(name)
        if not 0 <= overlap < 1 or sw_batch_size < 1:
            raise ValueError(f"need 0 <= overlap < 1 and sw_batch_size >= 1, got {overlap} and {sw_batch_size}")
        self.net, self.device, self.roi_size = net, device, tuple(roi_size)
        self.overlap, self.sw_batch_size = overlap, sw_batch_size

    def forward(self, x: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
        """One network pass: ``(B, 1, D, H, W)`` and ``(B, 2)`` in, ``(B, 1, D, H, W)`` float32 out
        (network units; the caller chooses grad mode, autocast and the device of the tensors)."""
        return self.net(x, ratios).float()

    def predict(self, volume: Volume, grid: ZGrid, thickness: float, progress: Progress | None = None) -> np.ndarray:
        report = progress or silent
        device = self.device
        self.net = self.net.to(device).eval()
        x = torch.from_numpy(hu_to_net(resampled_input(volume, grid)))[None, None]  # (1, 1, D, H, W), CPU
        ratios = torch.tensor([[thickness / grid.spacing, volume.spacing[2] / grid.spacing]], device=device)
        total = n_windows(x.shape[2:], self.roi_size, self.overlap, self.sw_batch_size)
        done = [0]

        def window(patch: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = self.forward(patch, ratios.expand(patch.shape[0], -1))
            done[0] += 1
            report(min(done[0] / total, 1.0) * 0.98, "inference")
            return out

        inferer = SlidingWindowInferer(roi_size=self.roi_size, sw_batch_size=self.sw_batch_size,
                                       overlap=self.overlap, mode="gaussian", padding_mode="replicate",
                                       sw_device=device, device=torch.device("cpu"))
        with torch.inference_mode():
            y = inferer(x, window)
        del x
        return net_to_hu(y[0, 0].numpy())


def predictor_for(spec: ModelSpec, device: torch.device | None, net: nn.Module | None = None, overlap: float = 0.25,
                  sw_batch_size: int = 1, *, steps: int | None = None, samples: int | None = None, seed: int = 0,
                  profile: str = "rect") -> Predictor:
    """The predictor of ``spec``'s kind.

    Args:
        spec: the model (:func:`~ctsr_models.inference.models.resolve_model`).
        device: where a network runs (``None``: :func:`~ctsr_models.inference.device.pick_device` ``("auto")``;
            unused by an interpolation).
        net: the network to run instead of the shipped weights (e.g. adapted to the scan); ``None``:
            load ``spec``'s checked weights.
        overlap: sliding-window overlap fraction.
        sw_batch_size: windows per network call (a diffusion model samples one window per call).
        steps, samples, seed, profile: sampling of a diffusion model (``None``: the model's defaults) and
            the input's slice profile for its data consistency; ignored by the other kinds.

    Raises:
        InputError: a network given for an interpolation, or bad sampling settings.
        WeightsError: the shipped weights are missing, altered or do not fit.
    """
    if spec.kind is ModelKind.INTERPOLATION:
        if net is not None:
            raise InputError(f"model {spec.name!r} is an interpolation; it cannot run a network")
        return InterpolationPredictor(spec.name)
    if spec.kind is ModelKind.REGRESSION:
        device = device or pick_device("auto")
        net = load_network(spec, device) if net is None else net
        return RegressionPredictor(spec.name, net, device, spec.roi_size, overlap, sw_batch_size)
    if spec.kind is ModelKind.DIFFUSION and spec.diffusion is not None:
        from .diffusion_predictor import DiffusionPredictor  # it builds on this module

        device = device or pick_device("auto")
        base = resolve_model(spec.diffusion.regression_model)
        regression = RegressionPredictor(base.name, load_network(base, device), device, base.roi_size, overlap,
                                         sw_batch_size)
        net = load_network(spec, device) if net is None else net
        return DiffusionPredictor(spec.name, net, regression, spec.diffusion, device, spec.roi_size, steps, samples,
                                  seed, overlap, profile)
    raise InputError(f"model {spec.name!r} is of kind {spec.kind.value}, which this version cannot run")


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


def n_windows(size: tuple[int, ...], roi: tuple[int, ...], overlap: float, batch: int) -> int:
    """Number of predictor calls MONAI's sliding window makes (for progress only)."""
    count = 1
    for n, r in zip(size, roi):
        step = max(int(r * (1 - overlap)), 1)
        count *= 1 if n <= r else math.ceil((n - r) / step) + 1
    return max(math.ceil(count / batch), 1)
