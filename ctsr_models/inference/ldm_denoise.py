"""Low-dose CT denoising of a whole volume with the latent diffusion denoiser (``ldm_denoiser`` models).

Pipeline (:func:`ldm_denoise`):
    1. The volume (HU -> network units) is cut into overlapping 3D windows by MONAI's
       ``SlidingWindowInferer`` (Gaussian blending, the model's ``roi_size``, replicate padding where the
       volume is smaller than a window).
    2. In each window: encode the low-dose image once (:meth:`LatentDenoiser.encode`), then for each sample
       ``k < K`` run the ResShift chain from that latent in ``steps`` network evaluations
       (:func:`ctsr_models.diffusion.sample`) with a generator seeded by ``(seed, k, window)`` only, and
       decode. The window returns the K decoded samples as K channels, so the blending is done per sample and
       sample 0 of a K-sample run is the K = 1 result, voxel for voxel.
    3. Mean and standard deviation (``ddof = 1``) over the K samples, in HU; ``K = 1`` gives the sample itself
       and a zero standard deviation. The standard deviation is not calibrated (scale 1; the manifest says so).

Memory: the blended output holds K float32 volumes (K = 4 on 512 x 512 x 100: 420 MB).
:func:`denoise_detailed` is the one entry point of ``ctsr-denoise`` and ``ct_denoise``: it runs a
regression model with :func:`~ctsr_models.inference.denoise.denoise` and a diffusion model here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from ctsr_models.data.intensity import hu_to_net, net_to_hu
from ctsr_models.diffusion import FewStepScheduler, build_scheduler, sample
from ctsr_models.io import InputError, Volume

from .denoise import TASK, DenoiseOptions, denoise
from .device import Progress, pick_device, silent
from .diffusion_predictor import check_sampling, generated_label, window_seed
from .models import DiffusionSettings, ModelKind, ModelSpec, load_network, resolve_model
from .predictor import n_windows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LDMDenoiseOptions:
    """How to denoise with a latent diffusion model (and which model).

    Attributes:
        model: a shipped ``denoise`` model name, ``default`` or ``diffusion``.
        device: ``auto``, ``cpu`` or ``cuda``.
        steps: sampling steps (``None``: the model's default).
        samples: samples K (``None``: the model's default).
        seed: random seed of the whole result (``None``: 0).
        overlap: sliding-window overlap fraction, in [0, 1).
    """

    model: str = "diffusion"
    device: str = "auto"
    steps: int | None = None
    samples: int | None = None
    seed: int | None = None
    overlap: float = 0.25

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < 1:
            raise InputError(f"overlap must be in [0, 1), got {self.overlap}")


@torch.no_grad()
def sample_latent(net: nn.Module, scheduler: FewStepScheduler, z_low: torch.Tensor, steps: int,
                  generator: torch.Generator | None) -> torch.Tensor:
    """One ResShift chain per batch element from the low-dose latent ``z_low`` ``(B, C, z, y, x)``;
    returns the standard-dose latent sample, same shape, float32."""

    def net_fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return net(x, t, c).float()

    z_low = z_low.float()
    return sample(net_fn, scheduler, z_low, z_low, steps, generator)


@torch.no_grad()
def denoise_window(net: nn.Module, scheduler: FewStepScheduler, low: torch.Tensor, steps: int,
                   generators: list[torch.Generator | None]) -> torch.Tensor:
    """Encode a low-dose window once and decode one sample per generator.

    Args:
        net: an ``ldm_denoiser`` (``encode``, ``decode``, ``forward(z_t, t, z_low)``).
        scheduler: the model's scheduler.
        low: ``(1, 1, Z, Y, X)`` network units, sizes multiples of ``net.multiple``.
        steps: sampling steps.
        generators: one per sample.

    Returns:
        ``(1, K, Z, Y, X)`` float32 network units, sample k in channel k.
    """
    z_low = net.encode(low.float()).float()
    outs = [net.decode(sample_latent(net, scheduler, z_low, steps, g)).float() for g in generators]
    return torch.cat(outs, dim=1)


def _roi(spec: ModelSpec, net: nn.Module) -> tuple[int, int, int]:
    roi = tuple(int(r) for r in spec.roi_size)
    multiple = int(getattr(net, "multiple", 1))
    if any(r % multiple for r in roi):
        raise InputError(f"model {spec.name!r}: roi_size {roi} must be multiples of {multiple}")
    return roi  # type: ignore[return-value]


def ldm_denoise_array(array: np.ndarray, net: nn.Module, settings: DiffusionSettings, roi: tuple[int, int, int],
                      device: torch.device, steps: int, samples: int, seed: int, overlap: float = 0.25,
                      progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """K latent-diffusion samples of a whole volume (see the module docstring).

    Args:
        array: ``(Z, Y, X)`` HU. Not modified.
        net: the ``ldm_denoiser`` network.
        settings: its sampling settings (scheduler and arguments).
        roi: window ``(z, y, x)`` voxels, multiples of ``net.multiple``.
        device: where the network runs.
        steps, samples, seed: sampling steps, K and the random seed.
        overlap: window overlap fraction.
        progress: ``progress(fraction, "sampling")``.

    Returns:
        ``(mean, std)``, each ``(Z, Y, X)`` float32 HU.
    """
    report = progress or silent
    scheduler = build_scheduler(settings.scheduler, **settings.scheduler_kwargs)
    net = net.to(device).eval()
    x = torch.from_numpy(hu_to_net(np.asarray(array, dtype=np.float32)))[None, None]
    total, window = n_windows(tuple(x.shape[2:]), roi, overlap, 1), [0]

    def run_window(patch: torch.Tensor) -> torch.Tensor:
        generators = [torch.Generator(device=device).manual_seed(window_seed(seed, k, window[0]))
                      for k in range(samples)]
        window[0] += 1
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = denoise_window(net, scheduler, patch, steps, generators)
        report(min(window[0] / total, 1.0) * 0.98, "sampling")
        return out

    inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=1, overlap=overlap, mode="gaussian",
                                   padding_mode="replicate", sw_device=device, device=torch.device("cpu"))
    with torch.inference_mode():
        drawn = net_to_hu(inferer(x, run_window)[0].numpy().astype(np.float64))
    mean = drawn.mean(axis=0)
    std = drawn.std(axis=0, ddof=1) * settings.calibration_scale if samples > 1 else np.zeros_like(mean)
    return mean.astype(np.float32), std.astype(np.float32)


def ldm_denoise(volume: Volume, options: LDMDenoiseOptions = LDMDenoiseOptions(),
                progress: Progress | None = None) -> tuple[Volume, Volume, dict[str, Any]]:
    """Denoise a (low-dose) CT with a shipped latent diffusion ``denoise`` model.

    Args:
        volume: CT in HU. Not modified.
        options: model, device, steps, samples, seed, overlap.
        progress: ``progress(fraction, stage)``.

    Returns:
        ``(mean, std, details)``: the mean of the K samples (float32 HU, the input's geometry; its findings say
        it contains AI-generated detail), their per-voxel standard deviation (float32 HU, same geometry) and
        JSON-able details (``ai_generated``, steps, samples, seed, scheduler, label).

    Raises:
        InputError: unknown model or device, a model of another kind, or steps/samples/seed out of range.
    """
    spec = resolve_model(options.model, task=TASK)
    if spec.kind is not ModelKind.DIFFUSION or spec.diffusion is None:
        raise InputError(f"denoise model {spec.name!r} is of kind {spec.kind.value}, not a diffusion model")
    settings = spec.diffusion
    steps = settings.steps if options.steps is None else options.steps
    samples = settings.samples if options.samples is None else options.samples
    seed = 0 if options.seed is None else options.seed
    check_sampling(steps, samples, seed)
    try:
        build_scheduler(settings.scheduler, **settings.scheduler_kwargs).set_timesteps(steps)
    except ValueError as exc:
        raise InputError(f"model {spec.name!r}: {exc}") from None
    device = pick_device(options.device)
    report = progress or silent
    report(0.0, "loading model")
    net = load_network(spec, device)
    mean, std = ldm_denoise_array(volume.array, net, settings, _roi(spec, net), device, steps, samples, seed,
                                  options.overlap, report)
    label = generated_label(spec.name, samples, steps)
    if settings.calibration_coverage is None:
        label = label.replace("calibrated std", "std over samples (not calibrated)")
    finding = f"denoised by AI model {spec.name}: {label}"
    log.info(finding)
    details = {"ai_generated": True, "steps": steps, "samples": samples, "seed": seed,
               "scheduler": settings.scheduler, "uncertainty": {"kind": "std over samples", "unit": "HU",
                                                                "scale": settings.calibration_scale,
                                                                "coverage": settings.calibration_coverage},
               "label": label}
    report(1.0, "done")
    return (volume.replace(array=mean, findings=[*volume.findings, finding]),
            volume.replace(array=std, findings=[*volume.findings, f"uncertainty (std HU over samples) of {spec.name}"]),
            details)


def denoise_detailed(volume: Volume, options: LDMDenoiseOptions,
                     progress: Progress | None = None) -> tuple[Volume, dict[str, Any]]:
    """Denoise with any shipped ``denoise`` model: the entry point of ``ctsr-denoise`` and ``ct_denoise``.

    A regression model runs :func:`~ctsr_models.inference.denoise.denoise` (``steps``/``samples``/``seed``
    must then be ``None``); a diffusion model runs :func:`ldm_denoise`.

    Returns:
        ``(result, details)``: details carry ``model`` (the resolved name) and, for a diffusion model,
        ``diffusion`` (see :func:`ldm_denoise`) and ``uncertainty`` (the std :class:`Volume`).

    Raises:
        InputError: unknown model, sampling options for a regression model, or bad values.
    """
    spec = resolve_model(options.model, task=TASK)
    if spec.kind is not ModelKind.DIFFUSION:
        given = [n for n in ("steps", "samples", "seed") if getattr(options, n) is not None]
        if given:
            raise InputError(f"{given[0]} applies to diffusion models only, not to {options.model!r}")
        result = denoise(volume, DenoiseOptions(model=options.model, device=options.device), progress)
        return result, {"model": spec.name}
    mean, std, details = ldm_denoise(volume, options, progress)
    return mean, {"model": spec.name, "diffusion": details, "uncertainty": std}
