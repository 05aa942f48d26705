"""Latent diffusion denoising of low-dose CT, trained in two phases on the one trainer.

Model: ``ldm_denoiser`` (:mod:`ctsr_models.nets.latent_denoise`): the trained 3D autoencoder (module
``autoencoder``, weights from ``init.autoencoder``) and a small diffusion U-Net in its latent (module
``denoiser``), conditioned on the low-dose latent. Data: 3D patches of the dose-pair cache
(:class:`~ctsr_models.data.dose_pairs.DoseTrain3DDataset`, the same simulated slabs as the regression
denoiser), low dose in, standard dose as the target.

Per training patch (network units, latents from the autoencoder's ``encode``):
    1. ``z_std = E(standard)``, ``z_low = E(low)``; ``t`` uniform; ResShift's
       ``z_t = z_std + eta_t (z_low - z_std) + kappa sqrt(eta_t) eps``;
    2. ``z0 = denoiser(scale_model_input(z_t), t, z_low)``; latent loss ``L1(z0, z_std)`` (the target is
       detached: it must not pull the encoder towards a latent that is easy to predict);
    3. while the autoencoder trains (phase 2, after ``trainer.freeze`` lets it go): plus
       ``image_weight * L1(D(z0), standard)``, the loss that matters to a reader, which is why the joint
       fine-tuning moves the autoencoder at all: the decoder learns to turn the denoiser's latents into
       clean images; and ``recon_weight * L1(D(z_std), standard)``, which keeps it an autoencoder.

Phase 1 (``trainer.freeze: [{modules: [autoencoder], until_step: N}]``): the autoencoder is frozen, bitwise,
and the latent loss trains the denoiser. Phase 2: everything trains, the autoencoder at a smaller learning
rate (``trainer.param_groups: [{match: autoencoder, lr_mult: 0.1}]``). Validation samples each held-out patch
with the scheduler in ``diffusion.val_steps`` steps (seeded by the sample index) and scores it beside the
low-dose input and the autoencoder's own reconstruction of the standard-dose patch.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ctsr_models.data import VolumeSource, net_to_hu
from ctsr_models.data.dose_pairs import DoseSlab, DoseTrain3DDataset, DoseVal3DDataset
from ctsr_models.diffusion import build_scheduler
from ctsr_models.inference import DiffusionSettings, load_network, resolve_model
from ctsr_models.inference.ldm_denoise import sample_latent
from ctsr_models.io.errors import InputError
from ctsr_models.metrics.image_metrics import psnr
from ctsr_models.nets import build_net

from ..config import ConfigError, TrainerConfig
from .base import Task, check_sources_and_net
from .denoise import DoseDataConfig, train_val_slabs
from .sr import NetConfig, initial_weights

log = logging.getLogger(__name__)


@dataclass
class LDMDataConfig(DoseDataConfig):
    """Training data (the ``data:`` section): the dose-pair cache of the ``denoise`` task
    (:class:`~ctsr_models.training.tasks.denoise.DoseDataConfig`), cut in 3D.

    Attributes:
        patch_size: ``(D, H, W)`` voxels of a training patch, multiples of the model's ``multiple``; ``D`` at
            most ``slab_slices``.
    """

    patch_size: tuple[int, int, int] = (4, 64, 64)

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.patch_size) < 1 or self.patch_size[0] > self.slab_slices:
            raise ValueError(f"patch_size must be positive with depth <= slab_slices ({self.slab_slices}), "
                             f"got {list(self.patch_size)}")


@dataclass
class LDMValConfig:
    """Validation (the ``val:`` section): fixed 3D samples from slabs of held-out sources.

    Attributes:
        sources: held-out volume sources (empty: no validation).
        slabs_per_volume: slabs simulated per held-out volume (same doses as training).
        n_samples: number of samples (split across ranks, each scored once).
        patch_size: ``(D, H, W)`` voxels of each sample.
        seed: seed of the sample positions.
    """

    sources: list[VolumeSource] = field(default_factory=list)
    slabs_per_volume: int = 1
    n_samples: int = 8
    patch_size: tuple[int, int, int] = (4, 128, 128)
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")


@dataclass
class LDMInitConfig:
    """Weights loaded before step 0 (the ``init:`` section).

    Attributes:
        autoencoder: the autoencoder's weights: a shipped ``autoencoder`` model name (SHA-256 checked) or a
            ``.pt`` file (a training checkpoint, its EMA weights when it has them, or a plain state dict).
    """

    autoencoder: str = "autoencoder_kl_v1"


@dataclass
class LDMDiffusionConfig:
    """The ``diffusion:`` section.

    Attributes:
        scheduler: registered scheduler name (:mod:`ctsr_models.diffusion`).
        scheduler_kwargs: its arguments (stored with the shipped model); ``kappa`` is in latent units.
        val_steps: sampling steps in validation.
        image_weight: weight of the image-space L1 through the decoder while the autoencoder trains.
        recon_weight: weight of the autoencoder's reconstruction L1 while it trains.
    """

    scheduler: str = "resshift"
    scheduler_kwargs: dict[str, Any] = field(default_factory=lambda: {"num_train_timesteps": 15, "kappa": 0.1})
    val_steps: int = 4
    image_weight: float = 1.0
    recon_weight: float = 1.0

    def __post_init__(self) -> None:
        if not (self.image_weight >= 0 and self.recon_weight >= 0):
            raise ValueError(f"image_weight and recon_weight must be >= 0, got {self.image_weight}, "
                             f"{self.recon_weight}")


@dataclass
class LDMDenoiseConfig:
    """The whole config: ``trainer``, ``data``, ``model``, ``val``, ``init`` and ``diffusion``."""

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: LDMDataConfig = field(default_factory=LDMDataConfig)
    model: NetConfig = field(default_factory=lambda: NetConfig(name="ldm_denoiser"))
    val: LDMValConfig = field(default_factory=LDMValConfig)
    init: LDMInitConfig = field(default_factory=LDMInitConfig)
    diffusion: LDMDiffusionConfig = field(default_factory=LDMDiffusionConfig)


def autoencoder_weights(source: str) -> dict[str, torch.Tensor]:
    """The autoencoder state dict ``init.autoencoder`` names (see :class:`LDMInitConfig`).

    Raises:
        ConfigError: unknown model, missing file or failed SHA-256 check (one line).
    """
    if source.endswith(".pt") or Path(source).is_file():
        try:
            return initial_weights(source)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("model.init_from", "init.autoencoder")) from None
    try:
        return load_network(resolve_model(source, task="autoencoder"), torch.device("cpu")).state_dict()
    except InputError as exc:
        raise ConfigError(f"init.autoencoder: {exc}") from None


def _l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).abs().mean()


class LDMDenoiseTask(Task):
    """Two-phase latent diffusion denoising (see the module docstring)."""

    name: ClassVar[str] = "ldm_denoise"
    config_class: ClassVar[type] = LDMDenoiseConfig
    val_metrics: ClassVar[tuple[str, ...]] = ("psnr", "input_psnr", "psnr_gain", "recon_psnr")

    def __init__(self, cfg: LDMDenoiseConfig) -> None:
        super().__init__(cfg)
        self.train_slabs: list[DoseSlab] = []
        self.val_slabs: list[DoseSlab] = []
        self._latent = (4, 2)
        try:
            self.scheduler = build_scheduler(cfg.diffusion.scheduler, **cfg.diffusion.scheduler_kwargs)
        except ValueError as exc:
            raise ConfigError(f"diffusion: {exc}") from None

    def settings(self, steps: int | None = None, samples: int = 1) -> DiffusionSettings:
        """The sampling settings of this run (what ``ship_model`` stores; no calibration, no regression model)."""
        d = self.cfg.diffusion
        return DiffusionSettings(scheduler=d.scheduler, scheduler_kwargs=dict(d.scheduler_kwargs),
                                 steps=steps or d.val_steps, samples=samples, regression_model=None)

    def check(self) -> None:
        """Data paths exist, the network builds, patch sizes fit it, the autoencoder weights fit it."""
        net = check_sources_and_net(self.cfg.data.train, self.cfg.val.sources, self.cfg.model.name,
                                    self.cfg.model.kwargs)
        multiple = getattr(net, "multiple", 1)
        for label, size in (("data.patch_size", self.cfg.data.patch_size), ("val.patch_size", self.cfg.val.patch_size)):
            if any(s % multiple for s in size):
                raise ConfigError(f"{label} {list(size)} must be multiples of {multiple} (the model's size multiple)")
        self._load_autoencoder(net)

    def _load_autoencoder(self, net: nn.Module) -> None:
        try:
            net.autoencoder.load_state_dict(autoencoder_weights(self.cfg.init.autoencoder), strict=True)
        except RuntimeError:
            raise ConfigError(f"init.autoencoder: the weights of {self.cfg.init.autoencoder} do not fit "
                              f"model.kwargs.autoencoder {self.cfg.model.kwargs.get('autoencoder', {})}") from None

    def prepare(self) -> None:
        """Decode every volume and simulate its low-dose slabs (once; shared with the ``denoise`` task's cache)."""
        self.train_slabs, self.val_slabs = train_val_slabs(self.cfg, "ldm_denoise")

    def build_model(self) -> nn.Module:
        net = build_net(self.cfg.model.name, **self.cfg.model.kwargs)
        self._load_autoencoder(net)
        self._latent = (int(net.latent_channels), int(net.factor))
        return net

    def train_dataset(self, rank: int) -> DoseTrain3DDataset:
        data = self.cfg.data
        return DoseTrain3DDataset(self.train_slabs, data.patch_size, self.cfg.trainer.seed, rank,
                                  data.min_body_fraction)

    def val_dataset(self) -> DoseVal3DDataset | None:
        if not self.val_slabs:
            return None
        val = self.cfg.val
        return DoseVal3DDataset(self.val_slabs, val.n_samples, val.patch_size, val.seed, self.cfg.data.min_body_fraction)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        std, low = batch["target"].float(), batch["input"].float()
        net = getattr(model, "module", model)
        joint = net.autoencoder_trains
        t = self.scheduler.sample_timesteps(std)

        def noising(z_std: torch.Tensor, z_low: torch.Tensor) -> torch.Tensor:
            z_t = self.scheduler.add_noise(z_std, torch.randn_like(z_std), t, z_low)
            return self.scheduler.scale_model_input(z_t, t)

        out = model(std, t, low, noising=noising, decode=joint)
        loss = _l1(out["z0"], out["z_std"].detach())
        if joint:
            d = self.cfg.diffusion
            loss = loss + d.image_weight * _l1(out["image"], std) + d.recon_weight * _l1(out["recon"], std)
        return loss

    @torch.no_grad()
    def _val_arrays(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[np.ndarray, ...]:
        """``(sample, reconstruction, low dose, standard dose)`` of a validation batch, each ``(B, D, H, W)`` HU."""
        low, std = batch["input"].float(), batch["target"].float()
        samples = []
        for b in range(low.shape[0]):
            generator = torch.Generator(device=low.device).manual_seed(int(batch["index"][b]))
            z_low = model.encode(low[b:b + 1]).float()
            samples.append(model.decode(sample_latent(model, self.scheduler, z_low, self.cfg.diffusion.val_steps,
                                                      generator)).float())
        recon = model.decode(model.encode(std)).float()
        return tuple(net_to_hu(a[:, 0].cpu().numpy()) for a in (torch.cat(samples), recon, low, std))

    def val_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[dict[str, float]]:
        """PSNR of the sample, of the low-dose input and of the autoencoder's reconstruction, per sample."""
        pred, recon, low, ref = self._val_arrays(model, batch)
        out = []
        for b in range(ref.shape[0]):
            m = {"input_psnr": psnr(low[b], ref[b]), "recon_psnr": psnr(recon[b], ref[b])}
            if np.isfinite(pred[b]).all():
                m["psnr"] = psnr(pred[b], ref[b])
            else:  # a diverged model is scored as NaN (left out of the means) instead of stopping the run
                log.warning("validation sample %d: the sample is not finite", int(batch["index"][b]))
                m["psnr"] = math.nan
            m["psnr_gain"] = m["psnr"] - m["input_psnr"]
            out.append(m)
        return out

    def flops_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[Any, ...]:
        """The denoiser's inputs (latent-sized zeros): FLOPs are counted for one denoiser pass."""
        channels, factor = self._latent
        z = torch.zeros(1, channels, *(s // factor for s in batch["target"].shape[2:]), device=batch["target"].device)
        return z, torch.zeros(1, dtype=torch.long, device=z.device), z
