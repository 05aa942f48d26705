"""The low-dose denoising task (regression baseline): 2.5D patches of physically simulated low-dose CT
(:mod:`ctsr_models.data.dose_pairs`, simulated once into a cache), a residual 2D U-Net, an L1 loss
(plus an optional SSIM term), and validation PSNR/SSIM on held-out slabs beside the low-dose input.

Intensities: the network works on ``clip(HU, -1024, 3071) / 1000``; predictions are turned back into HU
before scoring with :mod:`ctsr_models.metrics` (data range 1 over [-1024, 3071] HU).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from monai.losses import SSIMLoss
from torch import nn

from ctsr_models.data import VolumeCache, VolumeSource, find_volumes, net_to_hu, z_range_of
from ctsr_models.data.dose_pairs import DoseSlab, DoseSlabSettings, DoseTrainDataset, DoseValDataset, build_all
from ctsr_models.metrics.image_metrics import HU_MAX, HU_MIN, psnr, ssim2d
from ctsr_models.nets import build_net

from ..config import ConfigError, TrainerConfig
from .base import Task, check_sources_and_net
from .sr import NetConfig

log = logging.getLogger(__name__)

_SSIM_MIN = 11


@dataclass
class DoseDataConfig:
    """What the dose tasks (``denoise``, ``ldm_denoise``) share in their ``data:`` section: the sources and the
    simulated low-dose slabs.

    Attributes:
        train: volume sources (``axes`` is ignored: slabs are axial; ``z_fraction`` limits the slices).
        cache_dir: decoded volumes; the simulated slabs go to its ``dose_pairs`` subfolder.
        doses: dose fractions simulated, each in (0, 1).
        photons: incident photons per ray of the standard-dose scans.
        slabs_per_volume: axial slabs simulated per volume.
        slab_slices: slices per slab.
        noise_seed: base seed of the simulated noise.
        min_body_fraction: patches are redrawn (a few times) while less of them than this is body.
    """

    train: list[VolumeSource] = field(default_factory=list)
    cache_dir: Path = Path(".cache/volumes")
    doses: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5])
    photons: float = 1.0e5
    slabs_per_volume: int = 3
    slab_slices: int = 7
    noise_seed: int = 0
    min_body_fraction: float = 0.3

    def slab_settings(self, slabs_per_volume: int | None = None) -> DoseSlabSettings:
        return DoseSlabSettings(tuple(float(d) for d in self.doses), float(self.photons),
                                slabs_per_volume or self.slabs_per_volume, self.slab_slices, self.noise_seed)

    def __post_init__(self) -> None:
        self.slab_settings()


@dataclass
class DenoiseDataConfig(DoseDataConfig):
    """Training data (the ``data:`` section): :class:`DoseDataConfig` and the 2.5D patches.

    Attributes:
        in_slices: adjacent slices the network sees (odd).
        patch_size: ``(H, W)`` voxels of a training patch.
    """

    in_slices: int = 3
    patch_size: tuple[int, int] = (96, 96)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.in_slices < 1 or self.in_slices % 2 == 0 or self.in_slices > self.slab_slices:
            raise ValueError(f"in_slices must be odd and at most slab_slices ({self.slab_slices}), got {self.in_slices}")
        if min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be positive, got {list(self.patch_size)}")


@dataclass
class DenoiseValConfig:
    """Validation (the ``val:`` section): fixed samples from slabs of held-out sources.

    Attributes:
        sources: held-out volume sources (empty: no validation).
        slabs_per_volume: slabs simulated per held-out volume (same doses as training).
        n_samples: number of samples (split across ranks, each scored once).
        patch_size: ``(H, W)`` voxels of each sample (at least 11 for SSIM).
        seed: seed of the sample positions.
    """

    sources: list[VolumeSource] = field(default_factory=list)
    slabs_per_volume: int = 2
    n_samples: int = 16
    patch_size: tuple[int, int] = (128, 128)
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        if min(self.patch_size) < _SSIM_MIN:
            raise ValueError(f"patch_size {list(self.patch_size)} is too small to score with SSIM: need >= {_SSIM_MIN}")


@dataclass
class DenoiseConfig:
    """The whole denoising config: ``trainer``, ``data``, ``model``, ``val``, ``loss`` (``l1``) and
    ``ssim_weight`` (weight of a 2D SSIM loss added to L1; 0 switches it off)."""

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DenoiseDataConfig = field(default_factory=DenoiseDataConfig)
    model: NetConfig = field(default_factory=lambda: NetConfig(name="denoise_unet"))
    val: DenoiseValConfig = field(default_factory=DenoiseValConfig)
    loss: str = "l1"
    ssim_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.loss != "l1":
            raise ValueError(f"loss must be l1, got {self.loss!r}")
        if not self.ssim_weight >= 0:
            raise ValueError(f"ssim_weight must be >= 0, got {self.ssim_weight}")


def _window(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu + 1000.0) / 2000.0, 0.0, 1.0).astype(np.float32)


def _dose_slabs(data: Any, sources: list[VolumeSource], label: str, n_slabs: int) -> list[DoseSlab]:
    cache = VolumeCache(data.cache_dir)
    entries = []
    for i, source in enumerate(sources):
        refs = find_volumes(source, f"{label}[{i}]")
        for ref in refs:
            vol = cache.load(ref)
            entries.append((vol, z_range_of(vol.shape[0], source.z_fraction), source.weight / len(refs)))
    return build_all(entries, data.slab_settings(n_slabs), Path(data.cache_dir) / "dose_pairs")


def train_val_slabs(cfg: Any, task: str) -> tuple[list[DoseSlab], list[DoseSlab]]:
    """Decode the training and validation volumes of a dose task's config and simulate their low-dose slabs
    (once: later runs, and the other dose tasks, read the shared ``cache_dir/dose_pairs`` cache).

    Args:
        cfg: a config with ``data`` (``train``, ``slabs_per_volume``, ``slab_slices``, ``cache_dir``,
            ``slab_settings()``) and ``val`` (``sources``, ``slabs_per_volume``), e.g. :class:`DenoiseConfig`.
        task: the task's name, for the log.

    Raises:
        ConfigError: a source that cannot be read, or no volume long enough for a slab.
    """
    try:
        train = _dose_slabs(cfg.data, cfg.data.train, "data.train", cfg.data.slabs_per_volume)
        val = _dose_slabs(cfg.data, cfg.val.sources, "val.sources", cfg.val.slabs_per_volume)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not train:
        raise ConfigError(f"data.train: every volume is shorter than slab_slices ({cfg.data.slab_slices})")
    log.info("%s data: %d training and %d validation slabs", task, len(train), len(val))
    return train, val


class DenoiseTask(Task):
    """Low-dose → standard-dose regression on 2.5D patches."""

    name: ClassVar[str] = "denoise"
    config_class: ClassVar[type] = DenoiseConfig
    val_metrics: ClassVar[tuple[str, ...]] = ("psnr", "ssim2d", "input_psnr", "input_ssim2d", "psnr_gain")

    def __init__(self, cfg: DenoiseConfig) -> None:
        super().__init__(cfg)
        self.train_slabs: list[DoseSlab] = []
        self.val_slabs: list[DoseSlab] = []
        self._ssim = SSIMLoss(spatial_dims=2, data_range=(HU_MAX - HU_MIN) / 1000.0) if cfg.ssim_weight else None

    def check(self) -> None:
        """Data paths exist and the network can be built with its arguments."""
        net = check_sources_and_net(self.cfg.data.train, self.cfg.val.sources, self.cfg.model.name,
                                    self.cfg.model.kwargs)
        if getattr(net, "in_slices", self.cfg.data.in_slices) != self.cfg.data.in_slices:
            raise ConfigError(f"model.kwargs.in_slices ({net.in_slices}) differs from data.in_slices "
                              f"({self.cfg.data.in_slices})")

    def prepare(self) -> None:
        """Decode every volume and simulate its low-dose slabs (once; later runs only read the cache)."""
        self.train_slabs, self.val_slabs = train_val_slabs(self.cfg, "denoise")

    def build_model(self) -> nn.Module:
        return build_net(self.cfg.model.name, **self.cfg.model.kwargs)

    def train_dataset(self, rank: int) -> DoseTrainDataset:
        data = self.cfg.data
        return DoseTrainDataset(self.train_slabs, data.patch_size, data.in_slices, self.cfg.trainer.seed, rank,
                                data.min_body_fraction)

    def val_dataset(self) -> DoseValDataset | None:
        if not self.val_slabs:
            return None
        val = self.cfg.val
        return DoseValDataset(self.val_slabs, val.n_samples, val.patch_size, self.cfg.data.in_slices, val.seed)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = model(batch["input"]).float()
        target = batch["target"].float()
        loss = (pred - target).abs().mean()
        if self._ssim is not None:
            loss = loss + self.cfg.ssim_weight * self._ssim(pred, target)
        return loss

    def _arrays(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[np.ndarray, ...]:
        """``(prediction, low-dose centre slice, truth)``, each ``(B, H, W)`` HU."""
        with torch.no_grad():
            pred = net_to_hu(model(batch["input"]).float()[:, 0].cpu().numpy())
        centre = batch["input"].shape[1] // 2
        inp = net_to_hu(batch["input"].float()[:, centre].cpu().numpy())
        ref = net_to_hu(batch["target"].float()[:, 0].cpu().numpy())
        return pred, inp, ref

    def val_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[dict[str, float]]:
        """PSNR and SSIM of the prediction and of the low-dose input against standard dose, per sample."""
        pred, inp, ref = self._arrays(model, batch)
        out = []
        for b in range(ref.shape[0]):
            m = {"input_psnr": psnr(inp[b], ref[b]), "input_ssim2d": ssim2d(inp[b][None], ref[b][None])}
            if np.isfinite(pred[b]).all():
                m.update(psnr=psnr(pred[b], ref[b]), ssim2d=ssim2d(pred[b][None], ref[b][None]))
            else:  # a diverged model is scored as NaN (left out of the means) instead of stopping the run
                m.update(psnr=math.nan, ssim2d=math.nan)
            m["psnr_gain"] = m["psnr"] - m["input_psnr"]
            out.append(m)
        return out

    def panels(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Low dose | prediction | standard dose of sample 0, [-1000, 1000] HU."""
        pred, inp, ref = self._arrays(model, batch)
        gap = np.ones((ref.shape[1], 2), dtype=np.float32)
        return {"input_pred_truth": np.concatenate([_window(inp[0]), gap, _window(pred[0]), gap, _window(ref[0])],
                                                   axis=1)}

    def flops_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[Any, ...]:
        return (batch["input"][:1],)
