"""The 3D autoencoder task: random 3D patches of standard-dose CT, a MONAI ``AutoencoderKL``
(:class:`ctsr_models.nets.autoencoder.CTAutoencoder`), an L1 reconstruction loss plus a small KL term,
and validation of the reconstruction PSNR/SSIM/MAE on fixed crops of held-out volumes.

No perceptual or adversarial loss: both need pretrained networks that would have to be downloaded,
and nothing is downloaded here. Patches are cut on each volume's own voxel grid (no resampling): the
autoencoder is local, and the denoiser built on it works on the scan's grid too.

Intensities: the network works on ``clip(HU, -1024, 3071) / 1000``; reconstructions go back to HU before
scoring with :mod:`ctsr_models.metrics` (PSNR over [-1024, 3071] HU → [0, 1], data range 1).

``latent_scale``: during training every loss evaluation updates a running estimate of the variance of
the posterior means over the training batch (``v <- (1 - m) v + m var(mu)``, ``m`` = ``latent_momentum``
of the network, 0.05 by default: about the last 20 batches); ``latent_scale = 1 / sqrt(v)`` is a buffer
of the network, averaged by the EMA with the weights, so every checkpoint carries the scale of its own
weights and the shipped EMA weights end with ``1 / std`` of the latents of the last training patches.
Validation reports ``latent_std``, the standard deviation of the scaled latents of held-out crops (≈ 1).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ctsr_models.data import CachedVolume, VolumeCache, VolumeSource, find_volumes, hu_to_net, net_to_hu, z_range_of
from ctsr_models.data.patches import AIR_HU, BODY_HU
from ctsr_models.metrics.image_metrics import mae_body, psnr, ssim3d
from ctsr_models.nets import build_net

from ..config import ConfigError, TrainerConfig
from .base import Task, check_sources_and_net
from .sr import NetConfig

log = logging.getLogger(__name__)

_SSIM_MIN = 11


@dataclass
class AutoencoderDataConfig:
    """Training data (the ``data:`` section).

    Attributes:
        train: volume sources (``axes`` is ignored; ``z_fraction`` limits the slices, ``weight`` the sampling).
        cache_dir: decoded volumes.
        patch_size: ``(D, H, W)`` voxels of a training patch, ``(z, y, x)``; each divisible by the
            network's downsampling factor.
        min_body_fraction: a patch is redrawn (up to 5 times, keeping the best) while less of it than this
            is above -500 HU.
        flip: random left-right (x) flips.
    """

    train: list[VolumeSource] = field(default_factory=list)
    cache_dir: Path = Path(".cache/volumes")
    patch_size: tuple[int, int, int] = (32, 64, 64)
    min_body_fraction: float = 0.3
    flip: bool = True

    def __post_init__(self) -> None:
        if min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be positive, got {list(self.patch_size)}")
        if not 0.0 <= self.min_body_fraction <= 1.0:
            raise ValueError(f"min_body_fraction must be in [0, 1], got {self.min_body_fraction}")


@dataclass
class AutoencoderValConfig:
    """Validation (the ``val:`` section): fixed crops of held-out sources.

    Attributes:
        sources: held-out volume sources (empty: no validation).
        n_samples: number of crops; crop ``i`` comes from volume ``i mod n`` at a position drawn from
            ``(seed, i)`` (split across ranks, each scored once).
        patch_size: ``(D, H, W)`` voxels of each crop (at least 11 each, for the 3D SSIM).
        seed: seed of the crop positions.
    """

    sources: list[VolumeSource] = field(default_factory=list)
    n_samples: int = 8
    patch_size: tuple[int, int, int] = (32, 96, 96)
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        if min(self.patch_size) < _SSIM_MIN:
            raise ValueError(f"patch_size {list(self.patch_size)} is too small for the 3D SSIM: need >= {_SSIM_MIN}")


@dataclass
class AutoencoderConfig:
    """The whole autoencoder config: ``trainer``, ``data``, ``model``, ``val``, ``loss`` (``l1``) and
    ``kl_weight`` (weight of the KL divergence of the posterior from N(0, I), summed over the latent and
    averaged over the batch)."""

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: AutoencoderDataConfig = field(default_factory=AutoencoderDataConfig)
    model: NetConfig = field(default_factory=lambda: NetConfig(name="autoencoder_kl"))
    val: AutoencoderValConfig = field(default_factory=AutoencoderValConfig)
    loss: str = "l1"
    kl_weight: float = 1.0e-6

    def __post_init__(self) -> None:
        if self.loss != "l1":
            raise ValueError(f"loss must be l1, got {self.loss!r}")
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")


@dataclass
class PatchVolume:
    """A cached volume as a dataset member: its z range (slices) and sampling weight."""

    volume: CachedVolume
    z_range: tuple[int, int]
    weight: float


def crop(entry: PatchVolume, size: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A ``(D, H, W)`` float32 HU crop at a random position inside the volume's z range, padded with air
    (-1024 HU) at the far end where the volume is smaller."""
    bounds = (entry.z_range, (0, entry.volume.shape[1]), (0, entry.volume.shape[2]))
    windows = []
    for (lo, hi), length in zip(bounds, size):
        start = lo + int(rng.integers(0, max(hi - lo - length, 0) + 1))
        windows.append(slice(start, min(start + length, hi)))
    patch = np.asarray(entry.volume.array[tuple(windows)], dtype=np.float32)
    pad = [(0, n - s) for n, s in zip(size, patch.shape)]
    return np.pad(patch, pad, constant_values=AIR_HU) if any(p[1] for p in pad) else patch


class CTPatchDataset(Dataset):
    """Random training patches; item ``i`` is a pure function of ``(seed, rank, i)``.

    Args:
        entries: the volumes with z ranges and weights.
        patch_size: ``(D, H, W)`` voxels.
        seed: the run's data seed.
        rank: this process's rank.
        min_body_fraction: see :class:`AutoencoderDataConfig`.
        flip: random x flips.
    """

    def __init__(self, entries: Sequence[PatchVolume], patch_size: Sequence[int], seed: int, rank: int = 0,
                 min_body_fraction: float = 0.3, flip: bool = True, tries: int = 5) -> None:
        if not entries:
            raise ValueError("the training dataset has no volumes")
        self.entries, self.patch_size = list(entries), tuple(int(n) for n in patch_size)
        self.seed, self.rank, self.min_body_fraction, self.flip, self.tries = seed, rank, min_body_fraction, flip, tries
        weights = np.array([e.weight for e in self.entries], dtype=np.float64)
        self.probs = weights / weights.sum()

    def __len__(self) -> int:
        return 2**62

    def patch_hu(self, index: int) -> np.ndarray:
        """Training patch ``index`` of this rank, ``(D, H, W)`` float32 HU."""
        rng = np.random.default_rng([self.seed, self.rank, int(index)])
        entry = self.entries[int(rng.choice(len(self.entries), p=self.probs))]
        best, best_fraction = None, -1.0
        for _ in range(self.tries):
            patch = crop(entry, self.patch_size, rng)
            fraction = float(np.mean(patch > BODY_HU))
            if fraction > best_fraction:
                best, best_fraction = patch, fraction
            if fraction >= self.min_body_fraction:
                break
        if self.flip and rng.random() < 0.5:
            best = best[:, :, ::-1]
        return np.ascontiguousarray(best)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": torch.from_numpy(hu_to_net(self.patch_hu(index))[None])}


class CTPatchValDataset(Dataset):
    """Fixed validation crops: crop ``i`` from volume ``i mod n`` at a position drawn from ``(seed, i)``."""

    def __init__(self, entries: Sequence[PatchVolume], n_samples: int, patch_size: Sequence[int], seed: int) -> None:
        if not entries:
            raise ValueError("the validation dataset has no volumes")
        self.entries, self.n_samples = list(entries), int(n_samples)
        self.patch_size, self.seed = tuple(int(n) for n in patch_size), int(seed)

    def __len__(self) -> int:
        return self.n_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.n_samples:
            raise IndexError(f"validation crop {index} out of range 0..{self.n_samples - 1}")
        patch = crop(self.entries[index % len(self.entries)], self.patch_size, np.random.default_rng([self.seed, index]))
        return {"image": torch.from_numpy(hu_to_net(patch)[None])}


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of ``N(mu, sigma^2)`` from ``N(0, 1)``, summed over all but the batch axis, batch mean."""
    mu, sigma = mu.float(), sigma.float()
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2).clamp_min(1e-12)) - 1.0)
    return kl.flatten(1).sum(1).mean()


def _unwrap(model: nn.Module) -> nn.Module:
    """The network inside DDP / ``torch.compile`` wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def _window(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu + 1000.0) / 2000.0, 0.0, 1.0).astype(np.float32)


class AutoencoderTask(Task):
    """3D CT autoencoder: reconstruction of standard-dose patches."""

    name: ClassVar[str] = "autoencoder"
    config_class: ClassVar[type] = AutoencoderConfig
    val_metrics: ClassVar[tuple[str, ...]] = ("psnr", "ssim", "mae_hu_body", "latent_std")

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__(cfg)
        self.train_entries: list[PatchVolume] = []
        self.val_entries: list[PatchVolume] = []

    def check(self) -> None:
        """Data paths exist, the network builds, and the patch sizes fit its downsampling factor."""
        net = check_sources_and_net(self.cfg.data.train, self.cfg.val.sources, self.cfg.model.name,
                                    self.cfg.model.kwargs)
        factor = int(getattr(net, "factor", 1))
        for key, size in (("data.patch_size", self.cfg.data.patch_size), ("val.patch_size", self.cfg.val.patch_size)):
            if any(int(n) % factor for n in size):
                raise ConfigError(f"{key} {list(size)} must be divisible by the network's downsampling factor {factor}")

    def _entries(self, sources: list[VolumeSource], label: str) -> list[PatchVolume]:
        cache = VolumeCache(self.cfg.data.cache_dir)
        entries = []
        for i, source in enumerate(sources):
            refs = find_volumes(source, f"{label}[{i}]")
            for ref in refs:
                vol = cache.load(ref)
                entries.append(PatchVolume(vol, z_range_of(vol.shape[0], source.z_fraction), source.weight / len(refs)))
        return entries

    def prepare(self) -> None:
        """Decode every volume into the cache (once; later runs only read it)."""
        try:
            self.train_entries = self._entries(self.cfg.data.train, "data.train")
            self.val_entries = self._entries(self.cfg.val.sources, "val.sources")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        log.info("autoencoder data: %d training and %d validation volumes", len(self.train_entries),
                 len(self.val_entries))

    def build_model(self) -> nn.Module:
        return build_net(self.cfg.model.name, **self.cfg.model.kwargs)

    def train_dataset(self, rank: int) -> CTPatchDataset:
        data = self.cfg.data
        return CTPatchDataset(self.train_entries, data.patch_size, self.cfg.trainer.seed, rank,
                              data.min_body_fraction, data.flip)

    def val_dataset(self) -> CTPatchValDataset | None:
        if not self.val_entries:
            return None
        val = self.cfg.val
        return CTPatchValDataset(self.val_entries, val.n_samples, val.patch_size, val.seed)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """L1 of the reconstruction (network scale) + ``kl_weight`` x KL; updates the latent scale estimate."""
        image = batch["image"]
        recon, mu, sigma = model(image)
        if model.training:
            _unwrap(model).update_latent_scale(mu)
        loss = (recon.float() - image.float()).abs().mean()
        if self.cfg.kl_weight:
            loss = loss + self.cfg.kl_weight * kl_divergence(mu, sigma)
        return loss

    def _reconstruct(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray, float]:
        """``(reconstruction, truth, latent std)``: ``(B, D, H, W)`` HU each, the std of the scaled latents."""
        with torch.no_grad():
            z = model.encode(batch["image"])
            recon = model.decode(z).float()
        return (net_to_hu(recon[:, 0].cpu().numpy()), net_to_hu(batch["image"].float()[:, 0].cpu().numpy()),
                float(z.float().std()))

    def val_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[dict[str, float]]:
        """Reconstruction PSNR, 3D SSIM and MAE in the body (HU) of each crop, and its latent std."""
        recon, ref, latent_std = self._reconstruct(model, batch)
        out = []
        for b in range(ref.shape[0]):
            if not np.isfinite(recon[b]).all():  # a diverged model is scored as NaN instead of stopping the run
                out.append({"psnr": math.nan, "ssim": math.nan, "mae_hu_body": math.nan, "latent_std": math.nan})
                continue
            out.append({"psnr": psnr(recon[b], ref[b]), "ssim": ssim3d(recon[b], ref[b]),
                        "mae_hu_body": mae_body(recon[b], ref[b]), "latent_std": latent_std})
        return out

    def panels(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Truth | reconstruction of the middle axial slice of sample 0, [-1000, 1000] HU."""
        recon, ref, _ = self._reconstruct(model, batch)
        mid = ref.shape[1] // 2
        gap = np.ones((ref.shape[2], 2), dtype=np.float32)
        return {"truth_recon": np.concatenate([_window(ref[0, mid]), gap, _window(recon[0, mid])], axis=1)}

    def flops_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[Any, ...]:
        return (batch["image"][:1], False)  # no posterior sample: counting FLOPs must not draw random numbers
