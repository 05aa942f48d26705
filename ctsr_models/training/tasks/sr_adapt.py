"""Per-scan adaptation: fine-tune a shipped SR model on in-plane pairs of the scan it is about to enhance.

The scan's axial planes, degraded along x or y with the scan's own slab thickness, spacing and profile
(:mod:`ctsr_models.data.inplane`), are the training pairs; a band of slices in the middle of the stack
is held out for validation (early stopping and the no-worse guard of
:mod:`ctsr_models.training.adapt`). The network starts from the shipped weights (SHA-256 checked) and
the loss is the SR task's masked L1, so this is :class:`~ctsr_models.training.tasks.sr.SRTask` with
another data source.

It runs in one process, in memory (:mod:`ctsr_models.training.adapt`), or as ``python -m train sr_adapt
--config CONFIG`` with ``scan:`` naming the file (a run folder like any other task).
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

from ctsr_models.data import Degradation, ThinGrid
from ctsr_models.data.inplane import (
    InplaneHeldOut, body_crop, estimate_profile, inplane_train_dataset, memory_volume, scan_entries, split_slices,
)
from ctsr_models.inference import EnhanceOptions, enhance, load_network, resolve_model, through_plane_grid
from ctsr_models.inference.enhance import slab_thickness
from ctsr_models.inference.predictor import resampled_input
from ctsr_models.io import read_volume
from ctsr_models.io.errors import InputError
from ctsr_models.io.volume import Volume
from ctsr_models.metrics import psnr

from ..config import ConfigError, TrainerConfig
from .base import Task
from .sr import SRTask

log = logging.getLogger(__name__)


def adapt_trainer_defaults() -> TrainerConfig:
    """The trainer settings of a fine-tune: constant small learning rate, no warm-up, no EMA, CPU-friendly."""
    return TrainerConfig(steps=300, batch_size=4, lr=1e-4, min_lr_ratio=1.0, warmup_steps=0, ema_decay=0.0,
                         validate_ema=False, num_workers=0, log_every=25, val_every=20, ckpt_every=0,
                         image_panels=0, tensorboard=False)


@dataclass
class SRAdaptConfig:
    """What to adapt to and how (the whole config of the ``sr_adapt`` task).

    Attributes:
        trainer: the trainer settings (defaults: :func:`adapt_trainer_defaults`).
        scan: the thick-slice scan (file or DICOM folder), when run from a config; the library passes
            the volume in memory instead.
        model: the shipped model to start from (``default`` or a name in ``models.json``).
        target_spacing: thin spacing ``s`` in mm the model will enhance to.
        input_thickness: slab thickness ``T`` in mm (``None``: the header's, else the slice spacing).
        profile: slice profile of the scan: ``rect``, ``gaussian``, or ``auto`` (estimated).
        patch_size: ``(D, H, W)``: ``D`` along x or y on the thin grid, ``H`` along z (slices), ``W`` in-plane.
        holdout_fraction: share of the slices (a band in the middle) held out for validation.
        n_val: held-out pairs.
        min_body_fraction: training patches are redrawn while less of them than this is body.
        loss: ``l1`` or ``mse``.
        pairs_from: the thin volume pairs are cut from: the ``pretrained`` model's enhancement of the
            scan, or its ``linear`` interpolation (see :func:`thin_z_volume`).
        max_inplane: pairs come from at most this many rows and columns of each slice, centred on the
            body (:func:`~ctsr_models.data.inplane.body_crop`), which bounds the time and memory of
            the pretrained enhancement.
    """

    trainer: TrainerConfig = field(default_factory=adapt_trainer_defaults)
    scan: Path | None = None
    model: str = "default"
    target_spacing: float = 1.0
    input_thickness: float | None = None
    profile: Literal["auto", "rect", "gaussian"] = "rect"
    patch_size: tuple[int, int, int] = (32, 32, 48)
    holdout_fraction: float = 0.2
    n_val: int = 12
    min_body_fraction: float = 0.3
    loss: Literal["l1", "mse"] = "l1"
    pairs_from: Literal["pretrained", "linear"] = "pretrained"
    max_inplane: int = 256

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target_spacing) and self.target_spacing > 0):
            raise ValueError(f"target_spacing must be > 0 mm, got {self.target_spacing}")
        if self.input_thickness is not None and not self.input_thickness > 0:
            raise ValueError(f"input_thickness must be > 0 mm, got {self.input_thickness}")
        if any(n % 4 or n < 8 for n in self.patch_size):
            raise ValueError(f"patch_size must be multiples of 4, at least 8, got {list(self.patch_size)}")
        if not 0 < self.holdout_fraction < 1 or self.n_val < 1:
            raise ValueError("holdout_fraction must be in (0, 1) and n_val >= 1")
        if self.max_inplane < max(self.patch_size[1:]):
            raise ValueError(f"max_inplane must be at least the patch's in-plane size, got {self.max_inplane}")


def thin_z_volume(volume: Volume, target_spacing: float, thickness: float, pairs_from: str, model: str,
                  device: str) -> tuple[Volume, float]:
    """The scan on the thin output grid, the volume the in-plane pairs are cut from.

    Pairs cut along x or y then have the same voxel size along every axis as the inference windows.
    With ``pairs_from="pretrained"`` the slices come from the pretrained model itself (its enhancement
    of the scan), so the patches' z axis is as sharp as the network's own output and the third axis of
    a pair looks like the in-plane axis it stands for at inference (with ``"linear"``, the slabs
    linearly interpolated: a z axis blurrier than any axis the network sees at inference; measured on
    the aorta crop, adaptation then improved the held-out in-plane pairs but not the result, see
    docs/adapt.md).

    Args:
        volume: the thick-slice scan (HU).
        target_spacing: thin spacing in mm.
        thickness: slab thickness in mm.
        pairs_from: ``pretrained`` or ``linear``.
        model: the shipped model (for ``pretrained``).
        device: ``cpu``, ``cuda`` or ``auto``.

    Returns:
        ``(thin, scale)``: the volume on the output grid and its slices per input slab.
    """
    grid = through_plane_grid(volume, target_spacing)
    if pairs_from == "pretrained":
        thin = enhance(volume, EnhanceOptions(target_spacing=target_spacing, model=model, input_thickness=thickness,
                                              device=device))
    else:
        thin = Volume(resampled_input(volume, grid), **grid.output_geometry(volume))
    return thin, volume.spacing[2] / grid.spacing


class SRAdaptTask(SRTask):
    """In-plane fine-tuning of a shipped SR model on one scan (see the module docstring).

    Args:
        cfg: the config.
        volume: the scan in memory (else ``cfg.scan`` is read in :meth:`prepare`).
    """

    name: ClassVar[str] = "sr_adapt"
    config_class: ClassVar[type] = SRAdaptConfig
    val_metrics: ClassVar[tuple[str, ...]] = ("psnr", "linear_psnr", "psnr_gain", "mae_hu")

    def __init__(self, cfg: SRAdaptConfig, volume: Volume | None = None) -> None:
        Task.__init__(self, cfg)
        self.volume = volume
        self.degradation: Degradation | None = None
        self.profile_scores: dict[str, float] = {}

    def check(self) -> None:
        """A scan is given and the model is a shipped network."""
        if self.volume is None and self.cfg.scan is None:
            raise ConfigError("scan: give the thick-slice scan to adapt to")
        if not resolve_model(self.cfg.model).has_network:
            raise InputError(f"model {self.cfg.model!r} is an interpolation; adaptation needs a network model")

    def prepare(self) -> None:
        """Read the scan (if not given), fix its degradation and split its slices."""
        if self.volume is None:
            self.volume = read_volume(self.cfg.scan)
        vol = self.volume
        thickness = slab_thickness(vol, self.cfg.input_thickness)
        profile = self.cfg.profile
        if profile == "auto":
            profile, self.profile_scores = estimate_profile(vol, thickness)
        if vol.spacing[2] <= self.cfg.target_spacing:
            raise InputError(f"the scan's slices are {vol.spacing[2]:g} mm apart, not coarser than the "
                             f"{self.cfg.target_spacing:g} mm target")
        self.degradation = Degradation(thickness, vol.spacing[2], profile)
        self.grid = ThinGrid(self.cfg.target_spacing)
        cropped = body_crop(vol, self.cfg.max_inplane)
        self.scan, scale = thin_z_volume(cropped, self.cfg.target_spacing, thickness, self.cfg.pairs_from,
                                         self.cfg.model, self.cfg.trainer.device)
        train, held = split_slices(vol.shape[0], self.cfg.holdout_fraction)
        self.train_ranges = [(round(a * scale), round(b * scale)) for a, b in train]
        self.held_out = (round(held[0] * scale), round(held[1] * scale))
        self._check_patch()
        log.info("adaptation data: slabs %.3g mm every %.3g mm (%s), target %.3g mm; slices %s for training, "
                 "%s held out", thickness, vol.spacing[2], profile, self.cfg.target_spacing, self.train_ranges,
                 self.held_out)

    def _check_patch(self) -> None:
        d, s = self.degradation, self.cfg.target_spacing
        need = math.ceil((d.thickness + 2 * d.spacing) / s)
        if self.cfg.patch_size[0] < need:
            raise ConfigError(f"patch_size[0] = {self.cfg.patch_size[0]} is too short for two slabs of "
                              f"{d.thickness:g} mm every {d.spacing:g} mm at {s:g} mm: use at least {need}")

    def build_model(self) -> nn.Module:
        """The shipped network with its checked weights (a fresh copy; the file is only read)."""
        return load_network(resolve_model(self.cfg.model), torch.device("cpu")).train()

    def train_dataset(self, rank: int) -> torch.utils.data.Dataset:
        scan = memory_volume(self.scan)
        return inplane_train_dataset(scan_entries(scan, self.train_ranges), self.cfg.patch_size, self.grid,
                                     self.degradation, self.cfg.trainer.seed + rank, self.cfg.min_body_fraction)

    def val_dataset(self) -> InplaneHeldOut:
        scan = memory_volume(self.scan)
        return InplaneHeldOut(scan_entries(scan, [self.held_out]), self.cfg.n_val, self.cfg.patch_size, self.grid,
                              self.degradation, self.cfg.trainer.seed + 7919)

    def val_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[dict[str, float]]:
        """PSNR and MAE (HU) of the model and PSNR of linear interpolation on the scored thin slices."""
        pred, inp, ref = self._val_arrays(model, batch)
        out = []
        for b, (start, stop) in enumerate(batch["score"].cpu().tolist()):
            p, r, i = pred[b, start:stop], ref[b, start:stop], inp[b, start:stop]
            finite = bool(np.isfinite(p).all())
            model_psnr = psnr(p, r) if finite else math.nan
            linear = psnr(i, r)
            out.append({"psnr": model_psnr, "linear_psnr": linear, "psnr_gain": model_psnr - linear,
                        "mae_hu": float(np.mean(np.abs(p - r))) if finite else math.nan})
        return out

    def settings(self) -> dict[str, Any]:
        """What the adapted weights were made from (JSON-able, no patient data)."""
        d = self.degradation
        return {"base_model": self.cfg.model, "target_spacing_mm": self.cfg.target_spacing,
                "slab_thickness_mm": d.thickness, "slab_spacing_mm": d.spacing, "profile": d.profile,
                "profile_scores": self.profile_scores, "patch_size": list(self.cfg.patch_size),
                "pairs_from": self.cfg.pairs_from, "inplane_crop": list(self.scan.shape[1:]),
                "train_slices": [list(r) for r in self.train_ranges], "held_out_slices": list(self.held_out),
                "n_val": self.cfg.n_val}
