"""The biplanar X-ray → CT task: pairs simulated on the fly from CT volumes (or read from the X2CT-GAN
LIDC files), the geometry-aware :class:`~ctsr_models.nets.XrayToCT`, an L1 + SSIM + projection-consistency
loss, and validation in the clean protocol beside the mean-CT baseline.

Intensities: the network's CT scale is :func:`~ctsr_models.data.xray_pairs.hu_to_ct_net` (``[-1000, 1500]``
HU → ``[0, 1]``), its inputs :func:`~ctsr_models.data.xray_pairs.normalize_xray` images.

Validation metrics (clean protocol, on the whole output cube):
    * ``psnr``: HU clipped to ``[-1000, 1500]`` mapped to ``[0, 1]``, data range 1;
    * ``ssim``: 3D SSIM (Gaussian sigma 1.5, data range 1) in the same window;
    * ``mae_hu``: mean absolute error of the clipped HU; ``mae_hu_body``: the DESIGN.md MAE inside the body;
    * ``proj_psnr``: projection consistency, PSNR (data range 1) between the input X-rays (without
      augmentation) and :func:`~ctsr_models.physics.project` of the prediction with the same geometries,
      both :func:`~ctsr_models.data.xray_pairs.normalize_xray`-ed;
    * ``mean_*``: the same for the mean training CT (the no-information baseline).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctsr_models.data import VolumeCache, VolumeSource, find_volumes, matched_paths
from ctsr_models.data.anatomy_augment import AnatomyAug
from ctsr_models.data.lidc_h5 import LidcCase, LidcConfig, read_split
from ctsr_models.data.xray_pairs import (
    CLEAN_HU, CachedCT, ContrastAug, PairSettings, PoseJitter, XrayPairDataset, XraySetup, body_centre, ct_net_to_hu,
    hu_to_ct_net, normalize_xray_torch, resample_ct, unpack_geometry,
)
from ctsr_models.io import InputError
from ctsr_models.metrics import mae_body, psnr, ssim3d
from ctsr_models.nets import NETS, build_net
from ctsr_models.physics import hu_to_mu, project

from ..config import ConfigError, TrainerConfig
from .base import Task
from .sr import NetConfig

log = logging.getLogger(__name__)

_SSIM_SIGMA, _SSIM_RADIUS = 1.5, 5  # scikit-image's Gaussian SSIM window (truncate 3.5 sigma)
_MEAN_CT_SOURCES = 32  # training CTs averaged into the mean-CT baseline at most


@dataclass
class XrayDataConfig:
    """CT volumes (the ``data:`` section). Of each source only ``path``, ``weight``, ``series_uid`` and
    ``resample_irregular`` are used: every volume is used whole.

    Attributes:
        train: training CT sources (see :class:`ctsr_models.data.VolumeSource`).
        val: held-out CT sources (validated at their body centre, nominal poses, no augmentation).
        cache_dir: where decoded volumes are cached.
        centre_jitter_mm: random shift of the output cube from the body centre in training, ± mm.
        scale_range: anatomy magnification ``[lo, hi]`` in training (patient size).
    """

    train: list[VolumeSource] = field(default_factory=list)
    val: list[VolumeSource] = field(default_factory=list)
    cache_dir: Path = Path(".cache/volumes")
    centre_jitter_mm: float = 10.0
    scale_range: tuple[float, float] = (0.95, 1.05)

    def __post_init__(self) -> None:
        if self.centre_jitter_mm < 0 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError("need centre_jitter_mm >= 0 and 0 < scale_range[0] <= scale_range[1]")


@dataclass
class XrayLossConfig:
    """Loss weights and the projection-consistency settings (the ``loss:`` section).

    Attributes:
        l1: weight of the L1 distance in the CT scale.
        ssim: weight of ``1 - SSIM`` (3D, Gaussian sigma 1.5) in the CT scale.
        projection: weight of the L1 distance between the normalised projections of the prediction and
            of the truth, both views, at ``proj_px`` pixels.
        proj_px: detector pixels per side of the projection loss.
        step_mm: projector step along the rays (``None``: one output voxel).
        points: voxels sampled per sample and step for point-decoder networks (``xray2ct_implicit``),
            which are trained with the L1 term on those points only (no SSIM, no projection).
    """

    l1: float = 1.0
    ssim: float = 0.5
    projection: float = 0.5
    proj_px: int = 64
    step_mm: float | None = None
    points: int = 4096

    def __post_init__(self) -> None:
        if min(self.l1, self.ssim, self.projection) < 0 or self.l1 + self.ssim + self.projection <= 0:
            raise ValueError("loss weights must be >= 0 with a positive sum")
        if self.proj_px < 4 or (self.step_mm is not None and not self.step_mm > 0):
            raise ValueError("need proj_px >= 4 and step_mm > 0")
        if self.points < 1:
            raise ValueError(f"loss.points must be >= 1, got {self.points}")


@dataclass
class Xray2CTConfig:
    """The whole X-ray → CT config."""

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: XrayDataConfig = field(default_factory=XrayDataConfig)
    setup: XraySetup = field(default_factory=XraySetup)
    jitter: PoseJitter | None = field(default_factory=PoseJitter)
    contrast: ContrastAug | None = field(default_factory=ContrastAug)
    anatomy: AnatomyAug | None = None
    model: NetConfig = field(default_factory=lambda: NetConfig(name="xray2ct"))
    loss: XrayLossConfig = field(default_factory=XrayLossConfig)
    lidc_h5: LidcConfig = field(default_factory=LidcConfig)
    val_samples: int = 0


# ------------------------------------------------------------------------------------------ losses
def _gaussian_blur(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian (sigma 1.5, 11 taps) over the 3 spatial axes, valid part only."""
    r = torch.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-0.5 * (r / _SSIM_SIGMA) ** 2)
    g = g / g.sum()
    for shape in ((1, 1, -1, 1, 1), (1, 1, 1, -1, 1), (1, 1, 1, 1, -1)):
        x = F.conv3d(x, g.reshape(shape))
    return x


def ssim_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean 3D SSIM of ``(B, 1, D, H, W)`` tensors in ``[0, 1]`` (data range 1), differentiable.

    The same numbers as :func:`ctsr_models.metrics.ssim3d` (scikit-image, Gaussian sigma 1.5, population
    covariance, the 5-voxel border left out), with separable filters: 33 taps per voxel instead of the
    1331 of a dense 11³ window (MONAI's ``SSIMLoss``), which matters on 128³ volumes.
    """
    c1, c2 = 0.01**2, 0.03**2
    n = a.shape[0]
    stats = _gaussian_blur(torch.cat([a, b, a * a, b * b, a * b]).float())
    ua, ub, uaa, ubb, uab = stats.split(n)
    va, vb, vab = uaa - ua * ua, ubb - ub * ub, uab - ua * ub
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    return s.mean()


def project_ct_net(ct_net: torch.Tensor, geoms: torch.Tensor, setup: XraySetup, px: int | None,
                   step_mm: float | None) -> torch.Tensor:
    """Normalised projections ``(B, 2, px, px)`` of CT-scale volumes ``(B, 1, S, S, S)`` on ``setup.grid()``.

    Args:
        geoms: ``(B, 2, 16)`` packed geometries (frame of ``setup.grid()``).
        px: detector pixels per side (``None``: the geometries' own).
        step_mm: projector step (``None``: one voxel).
    """
    mu = hu_to_mu(ct_net_to_hu(ct_net.float()))
    grid = setup.grid()
    views = []
    for v in range(geoms.shape[1]):
        gs = [unpack_geometry(geoms[b, v]) for b in range(geoms.shape[0])]
        gs = [g.resized((px, px)) if px else g for g in gs]
        views.append(project(mu, grid, gs, step_mm or setup.spacing))
    return normalize_xray_torch(torch.stack(views, dim=1))


def sample_points(coords: torch.Tensor, target: torch.Tensor, n: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random voxels per sample (uniform, with replacement): their detector coordinates and values.

    Args:
        coords: ``(B, 2, S, S, S, 2)`` lifting coordinates at every voxel of the target.
        target: ``(B, 1, S, S, S)``.

    Returns:
        ``(B, 2, n, 2)`` coordinates and ``(B, 1, n)`` target values of the same voxels.
    """
    b, views = coords.shape[:2]
    flat_c = coords.reshape(b, views, -1, 2)
    flat_t = target.reshape(b, 1, -1)
    if flat_c.shape[2] != flat_t.shape[2]:
        raise ValueError(f"coords {tuple(coords.shape)} and target {tuple(target.shape)} must cover the same voxels")
    idx = torch.randint(flat_t.shape[2], (b, n), generator=generator, device="cpu").to(coords.device)
    pts = torch.gather(flat_c, 2, idx[:, None, :, None].expand(b, views, n, 2))
    return pts, torch.gather(flat_t, 2, idx[:, None, :])


def point_loss(model: nn.Module, batch: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """L1 in the CT scale on ``n`` random voxels per sample (point-decoder networks)."""
    pts, target = sample_points(batch["coords"], batch["target"], n)
    pred = model(batch["frontal"], batch["lateral"], pts).float()
    return (pred - target.float()).abs().mean()


def _psnr_unit(a: np.ndarray, b: np.ndarray) -> float:
    return psnr(a, b, 0.0, 1.0)


# ------------------------------------------------------------------------------------------ the task
class XrayToCTTask(Task):
    """Biplanar X-ray → CT (see the module docstring)."""

    name: ClassVar[str] = "xray2ct"
    config_class: ClassVar[type] = Xray2CTConfig
    val_metrics: ClassVar[tuple[str, ...]] = (
        "psnr", "ssim", "mae_hu", "mae_hu_body", "proj_psnr", "mean_psnr", "mean_ssim", "mean_mae_hu",
        "mean_proj_psnr", "psnr_gain",
    )

    def __init__(self, cfg: Xray2CTConfig) -> None:
        super().__init__(cfg)
        self.train_sources: list[Any] = []
        self.train_weights: list[float] = []
        self.val_sources: list[Any] = []
        self.mean_ct: np.ndarray | None = None
        # the network's size and detector_px go into the resolved config (and every checkpoint), so the
        # model kwargs alone rebuild the network (ctsr_models.inference.models.ship_model)
        cfg.model.kwargs = self._model_kwargs()

    # --------------------------------------------------------------------------- set-up
    def _model_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.cfg.model.kwargs)
        for key, value in (("size", self.cfg.setup.size), ("detector_px", self.cfg.setup.detector_px)):
            if kwargs.setdefault(key, value) != value:
                raise ConfigError(f"model.kwargs.{key} = {kwargs[key]} differs from setup.{key} = {value}")
        return kwargs

    def check(self) -> None:
        """Data paths exist, the sources are whole volumes, and the network builds for the setup."""
        cfg, lidc = self.cfg, self.cfg.lidc_h5
        if not cfg.data.train and lidc.root is None:
            raise ConfigError("data.train lists no CT sources and lidc_h5.root is not set: give training data")
        for label, sources in (("data.train", cfg.data.train), ("data.val", cfg.data.val)):
            for i, source in enumerate(sources):
                matched_paths(source, f"{label}[{i}]")
                if tuple(source.z_fraction) != (0.0, 1.0):
                    raise ConfigError(f"{label}[{i}].z_fraction: X-ray to CT uses whole volumes; hold out a "
                                      f"whole volume instead")
        if lidc.root is not None:
            if not lidc.root.is_dir():
                raise InputError(f"lidc_h5.root: data not found: {lidc.root}")
            if lidc.train_split is None:
                raise ConfigError("lidc_h5.train_split is required with lidc_h5.root")
        try:
            build_net(cfg.model.name, **self._model_kwargs())
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from None

    def _cached(self, sources: list[VolumeSource], label: str, cache: VolumeCache) -> tuple[list[Any], list[float]]:
        out, weights = [], []
        for i, source in enumerate(sources):
            refs = find_volumes(source, f"{label}[{i}]")
            for ref in refs:
                out.append(CachedCT(cache.load(ref)))
                weights.append(source.weight / len(refs))
        return out, weights

    def prepare(self) -> None:
        """Decode the CTs into the cache, list the LIDC cases, and make the mean-CT baseline."""
        cfg, lidc = self.cfg, self.cfg.lidc_h5
        cache = VolumeCache(cfg.data.cache_dir)
        self.train_sources, self.train_weights = self._cached(cfg.data.train, "data.train", cache)
        self.val_sources, _ = self._cached(cfg.data.val, "data.val", cache)
        if lidc.root is not None:
            cases = [LidcCase(p, lidc) for p in read_split(lidc.root, lidc.train_split, lidc.max_cases)]
            self.train_sources += cases
            self.train_weights += [1.0] * len(cases)
            if lidc.val_split is not None:
                self.val_sources += [LidcCase(p, lidc) for p in read_split(lidc.root, lidc.val_split, lidc.max_cases)]
        self.mean_ct = self._mean_ct()
        log.info("X-ray to CT data: %d training and %d validation CTs", len(self.train_sources), len(self.val_sources))

    def _mean_ct(self) -> np.ndarray:
        """The mean training target (each CT at its body centre; at most 32 CTs)."""
        setup, total = self.cfg.setup, None
        sources = self.train_sources[:_MEAN_CT_SOURCES]
        for source in sources:
            vol = source.volume()
            centre = np.zeros(3) if source.given_xrays else body_centre(vol)
            t = hu_to_ct_net(resample_ct(vol, setup.grid(centre)))
            total = t.astype(np.float64) if total is None else total + t
        return (total / len(sources)).astype(np.float32)

    def _settings(self, train: bool) -> PairSettings:
        cfg = self.cfg
        lifting = build_net(cfg.model.name, **self._model_kwargs()).lifting_size
        return PairSettings(cfg.setup, lifting, cfg.loss.proj_px, cfg.loss.step_mm or cfg.setup.spacing,
                            cfg.jitter if train else None, cfg.contrast if train else None,
                            cfg.data.centre_jitter_mm, cfg.data.scale_range, cfg.anatomy if train else None)

    def build_model(self) -> nn.Module:
        return build_net(self.cfg.model.name, **self._model_kwargs())

    def train_dataset(self, rank: int) -> XrayPairDataset:
        return XrayPairDataset(self.train_sources, self._settings(True), self.cfg.trainer.seed, rank,
                               self.train_weights, train=True)

    def val_dataset(self) -> XrayPairDataset | None:
        if not self.val_sources:
            return None
        n = self.cfg.val_samples or len(self.val_sources)
        return XrayPairDataset(self.val_sources, self._settings(False), self.cfg.trainer.seed, train=False,
                               n_samples=n)

    # --------------------------------------------------------------------------- training
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        w = self.cfg.loss
        if getattr(NETS[self.cfg.model.name], "point_decoder", False):
            return point_loss(model, batch, w.points)
        pred = model(batch["frontal"], batch["lateral"], batch["coords"]).float()
        target = batch["target"].float()
        total = w.l1 * (pred - target).abs().mean()
        if w.ssim > 0:
            total = total + w.ssim * (1.0 - ssim_torch(pred, target))
        if w.projection > 0:
            proj = project_ct_net(pred, batch["geom"], self.cfg.setup, w.proj_px, w.step_mm)
            total = total + w.projection * (proj - batch["proj_ref"].float()).abs().mean()
        return total

    # --------------------------------------------------------------------------- validation
    def _scores(self, pred_net: np.ndarray, ref_hu: np.ndarray, proj: np.ndarray, xray_ref: np.ndarray) -> dict:
        pred_hu = ct_net_to_hu(pred_net)
        lo, hi = CLEAN_HU
        return {
            "psnr": psnr(pred_hu, ref_hu, lo, hi),
            "ssim": ssim3d(pred_hu, ref_hu, lo, hi),
            "mae_hu": float(np.mean(np.abs(np.clip(pred_hu, lo, hi) - np.clip(ref_hu, lo, hi)))),
            "mae_hu_body": mae_body(pred_hu, ref_hu),
            "proj_psnr": _psnr_unit(proj, xray_ref),
        }

    @torch.no_grad()
    def _predict(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(batch["frontal"], batch["lateral"], batch["coords"]).float()

    def val_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[dict[str, float]]:
        """Clean-protocol metrics of the prediction and of the mean CT for each sample."""
        pred = self._predict(model, batch)
        mean = torch.as_tensor(self.mean_ct, device=pred.device)[None, None].expand_as(pred)
        with torch.no_grad():
            proj = project_ct_net(pred, batch["geom"], self.cfg.setup, None, self.cfg.loss.step_mm).cpu().numpy()
            proj_mean = project_ct_net(mean, batch["geom"], self.cfg.setup, None, self.cfg.loss.step_mm).cpu().numpy()
        ref_hu = ct_net_to_hu(batch["target"].float()[:, 0].cpu().numpy())
        xray_ref = batch["xray_ref"].float().cpu().numpy()
        out = []
        for b in range(pred.shape[0]):
            p = pred[b, 0].cpu().numpy()
            if not np.isfinite(p).all():
                log.warning("validation sample %d: the prediction is not finite", int(batch["index"][b]))
                model_m = {k: math.nan for k in ("psnr", "ssim", "mae_hu", "mae_hu_body", "proj_psnr")}
            else:
                model_m = self._scores(p, ref_hu[b], proj[b], xray_ref[b])
            base = self._scores(self.mean_ct, ref_hu[b], proj_mean[b], xray_ref[b])
            metrics = dict(model_m)
            metrics.update({f"mean_{k}": base[k] for k in ("psnr", "ssim", "mae_hu", "proj_psnr")})
            metrics["psnr_gain"] = model_m["psnr"] - base["psnr"]
            out.append(metrics)
        return out

    def panels(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Inputs (frontal | lateral) and coronal and axial mid-slices (prediction | truth), CT scale."""
        pred = self._predict(model, batch)[0, 0].clamp(0, 1).cpu().numpy()
        ref = batch["target"].float()[0, 0].cpu().numpy()
        mid = ref.shape[0] // 2
        gap = np.ones((ref.shape[0], 2), dtype=np.float32)
        views = [batch[k].float()[0, 0].cpu().numpy() for k in ("frontal", "lateral")]
        return {
            "inputs": np.concatenate([views[0], np.ones((views[0].shape[0], 2), np.float32), views[1]], axis=1),
            "coronal_pred_truth": np.concatenate([pred[::-1, mid], gap, ref[::-1, mid]], axis=1),
            "axial_pred_truth": np.concatenate([pred[mid], gap, ref[mid]], axis=1),
        }

    def flops_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[Any, ...]:
        return batch["frontal"][:1], batch["lateral"][:1], batch["coords"][:1]
