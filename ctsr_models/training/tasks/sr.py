"""The through-plane super-resolution task: thick-slice inputs simulated on the fly, a residual 3D
network, a masked L1 (or MSE) loss, and validation with :mod:`ctsr_models.metrics` beside the linear
interpolation baseline. Validation predicts through the same regression predictor users get
(:class:`~ctsr_models.inference.RegressionPredictor`, one window per sample).

Intensities: the network works on ``clip(HU, -1024, 3071) / 1000`` (:mod:`ctsr_models.data.intensity`);
predictions are turned back into HU (``* 1000``) before scoring.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from ctsr_models.data import (
    DegradationRanges, SRTrainDataset, SRValDataset, ThinGrid, VolumeCache, VolumeEntry, VolumeSource, find_volumes,
    net_to_hu, z_range_of,
)
from ctsr_models.inference import RegressionPredictor, load_network, resolve_model
from ctsr_models.io import InputError
from ctsr_models.metrics import evaluate_arrays
from ctsr_models.nets import build_net

from ..config import ConfigError, TrainerConfig
from .base import Task, check_sources_and_net

log = logging.getLogger(__name__)

_SSIM_MIN = 11  # voxels per axis that SSIM (Gaussian sigma 1.5) needs
_PANEL_WINDOW_HU = (-1000.0, 1000.0)
_PER_SOURCE = ("psnr", "ssim", "linear_psnr", "psnr_gain")  # scored per held-out source when there are several


@dataclass
class SRDataConfig:
    """Training data and how training pairs are simulated (the ``data:`` section).

    Attributes:
        train: volume sources (see :class:`ctsr_models.data.VolumeSource`).
        cache_dir: where decoded volumes are cached.
        target_spacing: thin spacing ``s`` of the truth along the degraded axis, mm.
        spacing_tolerance: relative difference from ``s`` accepted without resampling the truth.
        upsample_truth: interpolate data coarser than ``s`` onto ``s``; ``false`` keeps its own spacing.
        patch_size: ``(D, H, W)`` voxels; ``D`` is the degraded axis on the thin grid.
        spacing_ratio: slab spacing over ``s``, ``[lo, hi]`` (uniform).
        thickness_over_spacing: slab thickness over slab spacing, ``[lo, hi]`` (uniform).
        profiles: slice profiles drawn from (``rect``, ``gaussian``).
        noise_hu: SD of Gaussian noise on the slabs, ``[lo, hi]`` HU (uniform).
        min_body_fraction: patches are redrawn (a few times) while less of them than this is body.
    """

    train: list[VolumeSource] = field(default_factory=list)
    cache_dir: Path = Path(".cache/volumes")
    target_spacing: float = 1.0
    spacing_tolerance: float = 0.05
    upsample_truth: bool = True
    patch_size: tuple[int, int, int] = (32, 64, 64)
    spacing_ratio: tuple[float, float] = (2.0, 6.0)
    thickness_over_spacing: tuple[float, float] = (1.0, 1.0)
    profiles: list[str] = field(default_factory=lambda: ["rect", "gaussian"])
    noise_hu: tuple[float, float] = (0.0, 0.0)
    min_body_fraction: float = 0.2

    def __post_init__(self) -> None:
        self.grid = ThinGrid(self.target_spacing, self.spacing_tolerance, self.upsample_truth)
        self.ranges = DegradationRanges(self.spacing_ratio, self.thickness_over_spacing, tuple(self.profiles),
                                        self.noise_hu)
        if min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be positive, got {list(self.patch_size)}")
        need = math.ceil(self.ranges.max_extent())
        if self.patch_size[0] < need:
            raise ValueError(f"patch_size[0] = {self.patch_size[0]} is too short for two slabs at the largest "
                             f"spacing_ratio and thickness: use at least {need}")


@dataclass
class SRValConfig:
    """Validation (the ``val:`` section): fixed samples from held-out sources.

    Attributes:
        sources: held-out volume sources (empty: no validation).
        n_samples: number of validation samples (split across ranks, each scored once).
        patch_size: ``(D, H, W)`` voxels of each sample.
        ratios: slab spacing (= thickness, rect profile) over ``s``, cycled over the samples.
        seed: seed of the sample positions.
    """

    sources: list[VolumeSource] = field(default_factory=list)
    n_samples: int = 16
    patch_size: tuple[int, int, int] = (48, 64, 64)
    ratios: list[float] = field(default_factory=lambda: [3.0, 5.0])
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        if not self.ratios or min(self.ratios) <= 1:
            raise ValueError(f"ratios must be numbers > 1, got {self.ratios}")
        if min(self.patch_size[1:]) < _SSIM_MIN or self.patch_size[0] - 3 * max(self.ratios) < _SSIM_MIN:
            raise ValueError(f"patch_size {list(self.patch_size)} is too small to score with SSIM: need H, W >= "
                             f"{_SSIM_MIN} and D >= 3 * max(ratios) + {_SSIM_MIN}")


@dataclass
class NetConfig:
    """The network (the ``model:`` section): a registered name and its keyword arguments."""

    name: str = "sr_unet"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SRNetConfig(NetConfig):
    """The SR network (the ``model:`` section), optionally initialised from trained weights.

    Attributes:
        init_from: weights loaded before step 0: a shipped model name (its SHA-256 is checked, as for
            inference) or a ``.pt`` file (a training checkpoint, whose EMA weights are taken when it has
            them, or a plain state dict). Fine-tuning, not a resume: the optimiser, schedule and step start
            fresh. ``None``: random initialisation.
    """

    init_from: str | None = None


@dataclass
class SRConfig:
    """The whole SR config: ``trainer``, ``data``, ``model``, ``val`` and the ``loss`` (``l1`` or ``mse``)."""

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: SRDataConfig = field(default_factory=SRDataConfig)
    model: SRNetConfig = field(default_factory=SRNetConfig)
    val: SRValConfig = field(default_factory=SRValConfig)
    loss: Literal["l1", "mse"] = "l1"


def _masked_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean L1 or squared error over the voxels where ``mask`` (``(B, 1, D, 1, 1)``) is 1."""
    diff = pred.float() - target.float()
    err = diff.abs() if kind == "l1" else diff.square()
    weights = mask.expand_as(err)
    return (err * weights).sum() / weights.sum().clamp_min(1.0)


def initial_weights(source: str) -> dict[str, torch.Tensor]:
    """The state dict that ``model.init_from`` names (see :class:`SRNetConfig`).

    Args:
        source: a shipped SR model name, or a ``.pt`` file: a training checkpoint (its EMA weights when it
            has them, else its raw ones) or a plain state dict.

    Raises:
        ConfigError: unknown model, missing file, or weights that fail their SHA-256 check (one line).
    """
    path = Path(source)
    if source.endswith(".pt") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"model.init_from: no such weights file: {source}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "config" in state and "model" in state:  # a complete training checkpoint
            ema = state.get("ema")
            if ema:
                return {k.removeprefix("module."): v for k, v in ema.items() if k != "n_averaged"}
            return state["model"]
        return state
    try:
        return load_network(resolve_model(source), torch.device("cpu")).state_dict()
    except InputError as exc:
        raise ConfigError(f"model.init_from: {exc}") from None


def _load_initial(net: nn.Module, source: str, cfg: NetConfig) -> None:
    """Load ``initial_weights(source)`` into ``net`` (strict), or raise a one-line ConfigError."""
    try:
        net.load_state_dict(initial_weights(source), strict=True)
    except RuntimeError:
        raise ConfigError(f"model.init_from: the weights of {source} do not fit network {cfg.name!r} with "
                          f"{cfg.kwargs}") from None


def _window(hu: np.ndarray) -> np.ndarray:
    lo, hi = _PANEL_WINDOW_HU
    return np.clip((hu - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


class SRTask(Task):
    """Through-plane SR: the network refines thick slabs interpolated onto the thin grid."""

    name: ClassVar[str] = "sr"
    config_class: ClassVar[type] = SRConfig
    val_metrics: ClassVar[tuple[str, ...]] = (
        "psnr", "ssim", "ssim2d", "mae_hu_body", "psnr_1000", "linear_psnr", "linear_ssim", "linear_mae_hu_body",
        "psnr_gain",
    )

    def __init__(self, cfg: SRConfig) -> None:
        super().__init__(cfg)
        self.train_entries: list[VolumeEntry] = []
        self.val_entries: list[VolumeEntry] = []
        self.val_source_of: list[int] = []

    def check(self) -> None:
        """Data paths exist and the network can be built with its arguments."""
        net = check_sources_and_net(self.cfg.data.train, self.cfg.val.sources, self.cfg.model.name,
                                    self.cfg.model.kwargs)
        source = getattr(self.cfg.model, "init_from", None)
        if source:
            _load_initial(net, source, self.cfg.model)

    def _entries(self, sources: list[VolumeSource], label: str, cache: VolumeCache) -> list[VolumeEntry]:
        entries = []
        for i, source in enumerate(sources):
            refs = find_volumes(source, f"{label}[{i}]")
            for ref in refs:
                vol = cache.load(ref)
                entries.append(VolumeEntry(vol, tuple(source.axes), z_range_of(vol.shape[0], source.z_fraction),
                                           source.weight / len(refs)))
                if label == "val.sources":
                    self.val_source_of.append(i)
        return entries

    def prepare(self) -> None:
        """Find every volume and decode it into the cache (once; later runs only read the cache)."""
        cache = VolumeCache(self.cfg.data.cache_dir)
        self.train_entries = self._entries(self.cfg.data.train, "data.train", cache)
        self.val_source_of = []
        self.val_entries = self._entries(self.cfg.val.sources, "val.sources", cache)
        if len(self.cfg.val.sources) > 1 and type(self).val_step is SRTask.val_step:
            # several held-out sources: also score each on its own (``psnr_val1``: sources[1])
            per_source = [f"{m}_val{i}" for i in range(len(self.cfg.val.sources)) for m in _PER_SOURCE]
            self.val_metrics = type(self).val_metrics + tuple(per_source)  # type: ignore[misc]
        log.info("SR data: %d training and %d validation volumes", len(self.train_entries), len(self.val_entries))

    def build_model(self) -> nn.Module:
        """The network; with ``model.init_from``, holding those weights (before step 0 and the EMA copy)."""
        net = build_net(self.cfg.model.name, **self.cfg.model.kwargs)
        source = getattr(self.cfg.model, "init_from", None)
        if source:
            _load_initial(net, source, self.cfg.model)
            log.info("model initialised from %s", source)
        return net

    def train_dataset(self, rank: int) -> SRTrainDataset:
        data = self.cfg.data
        return SRTrainDataset(self.train_entries, data.patch_size, data.grid, data.ranges, self.cfg.trainer.seed,
                              rank, data.min_body_fraction)

    def val_dataset(self) -> SRValDataset | None:
        if not self.val_entries:
            return None
        val = self.cfg.val
        return SRValDataset(self.val_entries, val.n_samples, val.patch_size, self.cfg.data.grid, val.ratios, val.seed)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = model(batch["input"], batch["ratios"])
        return _masked_loss(pred, batch["target"], batch["mask"], self.cfg.loss)

    @torch.no_grad()
    def _predict_hu(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> np.ndarray:
        predictor = RegressionPredictor(self.name, model, batch["input"].device)
        pred = predictor.forward(batch["input"], batch["ratios"])
        return net_to_hu(pred[:, 0].cpu().numpy())

    def _val_arrays(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[np.ndarray, ...]:
        """``(prediction, input, truth)`` of a validation batch, each ``(B, D, H, W)`` HU."""
        pred = self._predict_hu(model, batch)
        inp = net_to_hu(batch["input"].float()[:, 0].cpu().numpy())
        ref = net_to_hu(batch["target"].float()[:, 0].cpu().numpy())
        return pred, inp, ref

    def val_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[dict[str, float]]:
        """Metrics on the scored thin slices (one slab in from each end of the stack) of each sample."""
        pred, inp, ref = self._val_arrays(model, batch)
        out = []
        for b, (start, stop) in enumerate(batch["score"].cpu().tolist()):
            base_m = evaluate_arrays(inp[b, start:stop], ref[b, start:stop])
            if np.isfinite(pred[b]).all():
                model_m = evaluate_arrays(pred[b, start:stop], ref[b, start:stop])
            else:  # a diverged model is scored as NaN (left out of the means) instead of stopping the run
                log.warning("validation sample %d: the prediction is not finite", int(batch["index"][b]))
                model_m = {key: math.nan for key in base_m}
            metrics = dict(model_m)
            metrics.update({f"linear_{k}": base_m[k] for k in ("psnr", "ssim", "mae_hu_body")})
            metrics["psnr_gain"] = model_m["psnr"] - base_m["psnr"]
            if len(self.cfg.val.sources) > 1:  # per-source copies (see prepare)
                source = self.val_source_of[int(batch["index"][b]) % len(self.val_entries)]
                metrics.update({f"{m}_val{source}": metrics[m] for m in _PER_SOURCE})
            out.append(metrics)
        return out

    def panels(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Input | prediction | truth, the through-plane slice at mid-``W`` of sample 0, [-1000, 1000] HU."""
        pred = self._predict_hu(model, batch)[0]
        inp = net_to_hu(batch["input"].float()[0, 0].cpu().numpy())
        ref = net_to_hu(batch["target"].float()[0, 0].cpu().numpy())
        mid = ref.shape[2] // 2
        gap = np.ones((ref.shape[0], 2), dtype=np.float32)
        row = [_window(inp[:, :, mid]), gap, _window(pred[:, :, mid]), gap, _window(ref[:, :, mid])]
        return {"input_pred_truth": np.concatenate(row, axis=1)}

    def flops_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[Any, ...]:
        return batch["input"][:1], batch["ratios"][:1]
