"""Diffusion super-resolution of a whole volume: K samples, each consistent with the acquired slabs, their
mean and a calibrated per-voxel standard deviation.

Pipeline (:meth:`DiffusionPredictor.predict_detailed`):
    1. Conditioning on the output grid, in network units: channel 0 the slabs linearly resampled at their
       centres (:func:`~ctsr_models.inference.predictor.resampled_input`), channel 1 the output of the
       regression model the diffusion model was trained with (its own sliding window). Channel 1 is also
       ``y``, where residual shifting starts.
    2. For each sample ``k < K``: MONAI's ``SlidingWindowInferer`` (Gaussian blending, one window per
       call) runs :func:`ctsr_models.diffusion.sample` in every window; window ``w`` of sample ``k`` draws
       its noise from a generator seeded by ``(seed, k, w)`` only, so a result depends on the seed and not on
       what ran before (the same seed gives the same voxels on the same device).
    3. Data consistency, exactly, on the whole volume: the sample (HU) is projected onto the volumes whose
       slabs are the input's (:meth:`ctsr_models.physics.consistency.SlabOperator.project`, the input's
       slab profile and thickness on the output grid). It is done after sampling, not inside the loop:
       a window sees only part of the z axis and blended windows would not keep a per-window constraint,
       while the projection of the blended sample is exact for the whole volume; the mean of projected
       samples is projected too (the consistent set is affine).
    4. Mean and standard deviation (``ddof = 1``) over the K samples, accumulated one sample at a time
       (Welford), so memory holds three volumes whatever K; the standard deviation is multiplied by the
       model's conformal calibration factor (:class:`~ctsr_models.inference.models.DiffusionSettings`),
       so ``mean +- z * std`` has the stated coverage on the held-out data it was fitted on. ``K = 1``
       returns the sample itself and a zero standard deviation.

Caveat: in window overlaps the blended value averages independent draws, so the spread there is
somewhat lower than in a window's centre; the calibration factor is fitted through the same predictor.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from ctsr_models.data.intensity import hu_to_net, net_to_hu
from ctsr_models.diffusion import FewStepScheduler, build_scheduler, sample
from ctsr_models.io.errors import InputError
from ctsr_models.io.volume import Volume
from ctsr_models.physics.consistency import SlabOperator, consistency_rmse

from .device import Progress, silent
from .grid import ZGrid
from .models import MAX_DIFFUSION_SAMPLES, MAX_DIFFUSION_STEPS, DiffusionSettings, ModelKind
from .predictor import Prediction, Predictor, RegressionPredictor, n_windows, resampled_input

log = logging.getLogger(__name__)

_COND_SHARE = 0.15  # progress fraction spent on the conditioning (regression pass)


def window_seed(seed: int, sample_index: int, window_index: int) -> int:
    """The seed of one window of one sample: a hash of the three numbers (independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(sample_index), int(window_index)]).generate_state(1)[0])


def check_sampling(steps: int, samples: int, seed: int) -> None:
    """Raise :class:`InputError` unless ``1 <= steps <= 50``, ``1 <= samples <= 16`` and ``seed >= 0``."""
    for name, value, high in (("steps", steps, MAX_DIFFUSION_STEPS), ("samples", samples, MAX_DIFFUSION_SAMPLES)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
            raise InputError(f"{name} must be a whole number from 1 to {high}, got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"seed must be a whole number >= 0, got {seed!r}")


class DiffusionPredictor(Predictor):
    """K diffusion samples per volume, data-consistent, with their mean and calibrated spread.

    Args:
        name: the model's name.
        net: the denoiser, ``net(x_t, t, cond) -> x0`` (``sr_diffusion_unet``), ``cond`` ``(B, 2, D, H, W)``.
        regression: the predictor of the regression model the denoiser is conditioned on.
        settings: the model's sampling and calibration settings.
        device: where the networks run.
        roi_size: window ``(z, y, x)`` in voxels, multiples of the denoiser's size multiple.
        steps: sampling steps (``None``: the settings' default); must fit the scheduler.
        samples: K (``None``: the settings' default).
        seed: random seed of the whole result.
        overlap: sliding-window overlap fraction.
        profile: slice profile of the input for data consistency (``rect`` or ``gaussian``).

    Raises:
        InputError: steps, samples or seed out of range, or more steps than the scheduler has.
    """

    kind = ModelKind.DIFFUSION

    def __init__(self, name: str, net: nn.Module, regression: RegressionPredictor, settings: DiffusionSettings,
                 device: torch.device, roi_size: tuple[int, int, int], steps: int | None = None,
                 samples: int | None = None, seed: int = 0, overlap: float = 0.25, profile: str = "rect") -> None:
        super().__init__(name)
        self.steps = settings.steps if steps is None else steps
        self.samples = settings.samples if samples is None else samples
        check_sampling(self.steps, self.samples, seed)
        self.scheduler: FewStepScheduler = build_scheduler(settings.scheduler, **settings.scheduler_kwargs)
        try:
            self.scheduler.set_timesteps(self.steps)
        except ValueError as exc:
            raise InputError(f"model {name!r}: {exc}") from None
        multiple = getattr(net, "multiple", 1)
        if any(r % multiple for r in roi_size):
            raise ValueError(f"roi_size {tuple(roi_size)} must be multiples of {multiple}")
        self.net, self.regression, self.settings, self.device = net, regression, settings, device
        self.roi_size, self.seed, self.overlap, self.profile = tuple(roi_size), seed, overlap, profile

    def sample_window(self, cond: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One sample per batch element: ``cond`` ``(B, 2, D, H, W)`` network units -> ``(B, 1, D, H, W)``
        float32 network units (starts from ``y = cond[:, -1:]``; no data consistency here)."""

        def net_fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return self.net(x, t, c).float()

        return sample(net_fn, self.scheduler, cond[:, -1:].float(), cond.float(), self.steps, generator)

    def conditioning(self, volume: Volume, grid: ZGrid, thickness: float, progress: Progress) -> torch.Tensor:
        """``(1, 2, D, H, W)`` float32 CPU tensor in network units: resampled input, regression output."""
        linear = hu_to_net(resampled_input(volume, grid))
        regressed = hu_to_net(self.regression.predict(volume, grid, thickness, progress))
        return torch.from_numpy(np.stack([linear, regressed]))[None]

    def _sample_volume(self, cond: torch.Tensor, index: int, progress: Progress) -> np.ndarray:
        """Sample ``index`` on the whole grid, ``(D, H, W)`` float32 HU (before data consistency)."""
        window = [0]
        total = n_windows(tuple(cond.shape[2:]), self.roi_size, self.overlap, 1)

        def run_window(patch: torch.Tensor) -> torch.Tensor:
            generator = torch.Generator(device=self.device).manual_seed(window_seed(self.seed, index, window[0]))
            window[0] += 1
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                out = self.sample_window(patch, generator)
            progress(min(window[0] / total, 1.0), "sampling")
            return out

        inferer = SlidingWindowInferer(roi_size=self.roi_size, sw_batch_size=1, overlap=self.overlap,
                                       mode="gaussian", padding_mode="replicate", sw_device=self.device,
                                       device=torch.device("cpu"))
        with torch.inference_mode():
            out = inferer(cond, run_window)
        return net_to_hu(out[0, 0].numpy())

    def predict_detailed(self, volume: Volume, grid: ZGrid, thickness: float,
                         progress: Progress | None = None) -> Prediction:
        """Mean of K data-consistent samples and their calibrated std (see the module docstring).

        Returns:
            :class:`Prediction` with ``array`` and ``std`` ``(grid.n_slices, y, x)`` float32 HU and ``details``
            (steps, samples, seed, calibration, the worst consistency RMSE over the samples).
        """
        report = progress or silent
        self.net = self.net.to(self.device).eval()
        cond = self.conditioning(volume, grid, thickness, lambda f, s: report(f * _COND_SHARE, "conditioning"))
        operator = SlabOperator.for_grid(grid, thickness, self.profile)
        slabs = np.asarray(volume.array, dtype=np.float32)
        mean = np.zeros(cond.shape[2:], dtype=np.float64)
        m2 = np.zeros_like(mean)
        worst = 0.0
        for k in range(self.samples):
            span = (1.0 - _COND_SHARE) / self.samples

            def sample_progress(f: float, stage: str, k: int = k) -> None:
                report(_COND_SHARE + span * (k + f) * 0.98, f"sample {k + 1}/{self.samples}")

            drawn = operator.project(self._sample_volume(cond, k, sample_progress), slabs)
            worst = max(worst, _nan_to_zero(consistency_rmse(drawn, slabs, operator)))
            delta = drawn - mean
            mean += delta / (k + 1)
            m2 += delta * (drawn - mean)
        std = (np.sqrt(m2 / (self.samples - 1)) * self.settings.calibration_scale if self.samples > 1
               else np.zeros_like(mean))
        log.info("diffusion %s: %d sample(s), %d steps, seed %d; worst consistency RMSE %.3f HU", self.name,
                 self.samples, self.steps, self.seed, worst)
        return Prediction(mean.astype(np.float32), std.astype(np.float32), self._details(worst))

    def predict(self, volume: Volume, grid: ZGrid, thickness: float, progress: Progress | None = None) -> np.ndarray:
        return self.predict_detailed(volume, grid, thickness, progress).array

    def _details(self, worst_rmse: float) -> dict[str, Any]:
        settings = self.settings
        return {"ai_generated": True, "steps": self.steps, "samples": self.samples, "seed": self.seed,
                "scheduler": settings.scheduler, "conditioned_on": settings.regression_model,
                "consistency_rmse_hu_max": round(worst_rmse, 4), "slice_profile": self.profile,
                "uncertainty": {"kind": "calibrated std", "unit": "HU", "scale": settings.calibration_scale,
                                "z": settings.calibration_z, "coverage": settings.calibration_coverage},
                "label": generated_label(self.name, self.samples, self.steps)}


def generated_label(name: str, samples: int, steps: int) -> str:
    """The sentence every diffusion result carries (findings, result JSON)."""
    plural = "sample" if samples == 1 else "samples"
    return (f"contains AI-generated detail (diffusion model {name}, {samples} {plural}, {steps} steps); "
            "uncertainty = calibrated std")


def _nan_to_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value
