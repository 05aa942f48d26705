"""Diffusion super-resolution training: the SR task's pairs, a denoiser conditioned on the resampled thick
input and on a frozen regression model's output, residual shifting from that output to the truth.

Per training patch (same pairs as :mod:`~ctsr_models.training.tasks.sr`, network units):
    1. ``reg = regression(input, ratios)``: the shipped regression model (frozen, no grad, on the fly);
    2. ``cond = [input, reg]`` and ``y = reg``, so the denoiser only adds the detail the regression lacks;
    3. ``t`` uniform over the scheduler's training timesteps, ``x_t = add_noise(truth, noise, t, y)``;
    4. loss = masked L1 / MSE between ``net(scale_model_input(x_t), t, cond)`` and ``training_target``.

Validation samples each held-out patch in ``val_steps`` steps through the same
:class:`~ctsr_models.inference.DiffusionPredictor` users get (one window, seeded by the sample index) and
scores it beside the regression output and linear interpolation (:mod:`ctsr_models.metrics`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ctsr_models.data import net_to_hu
from ctsr_models.diffusion import build_scheduler
from ctsr_models.inference import (
    DiffusionPredictor, DiffusionSettings, RegressionPredictor, load_network, resolve_model,
)
from ctsr_models.io.errors import InputError
from ctsr_models.metrics import evaluate_arrays
from ctsr_models.nets import build_net

from ..config import ConfigError, TrainerConfig
from .sr import NetConfig, SRDataConfig, SRTask, SRValConfig, _masked_loss, _window

log = logging.getLogger(__name__)


@dataclass
class DiffusionTrainConfig:
    """The ``diffusion:`` section.

    Attributes:
        scheduler: registered scheduler name (:mod:`ctsr_models.diffusion`).
        scheduler_kwargs: its arguments (stored with the shipped model).
        regression_model: shipped ``sr`` regression model giving the conditioning and ``y`` (frozen).
        val_steps: sampling steps in validation.
    """

    scheduler: str = "resshift"
    scheduler_kwargs: dict[str, Any] = field(default_factory=lambda: {"num_train_timesteps": 15, "kappa": 0.2})
    regression_model: str = "sr_unet_small_v3"
    val_steps: int = 4


@dataclass
class SRDiffusionConfig:
    """The whole config: ``trainer``, ``data`` and ``val`` as for ``sr``, the denoiser and ``diffusion``."""

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: SRDataConfig = field(default_factory=SRDataConfig)
    model: NetConfig = field(default_factory=lambda: NetConfig(name="sr_diffusion_unet",
                                                                kwargs={"cond_channels": 2}))
    val: SRValConfig = field(default_factory=SRValConfig)
    diffusion: DiffusionTrainConfig = field(default_factory=DiffusionTrainConfig)
    loss: str = "l1"


class SRDiffusionTask(SRTask):
    """Diffusion SR on the SR task's data (see the module docstring)."""

    name: ClassVar[str] = "sr_diffusion"
    config_class: ClassVar[type] = SRDiffusionConfig
    val_metrics: ClassVar[tuple[str, ...]] = (
        "psnr", "ssim", "mae_hu_body", "regression_psnr", "regression_ssim", "regression_mae_hu_body",
        "linear_psnr", "psnr_gain_vs_regression",
    )

    def __init__(self, cfg: SRDiffusionConfig) -> None:
        super().__init__(cfg)
        self.regression: nn.Module | None = None
        try:
            self.scheduler = build_scheduler(cfg.diffusion.scheduler, **cfg.diffusion.scheduler_kwargs)
        except ValueError as exc:
            raise ConfigError(f"diffusion: {exc}") from None

    def settings(self, steps: int | None = None) -> DiffusionSettings:
        """The sampling settings of this run (what ``ship_model`` stores; calibration not fitted)."""
        d = self.cfg.diffusion
        return DiffusionSettings(scheduler=d.scheduler, scheduler_kwargs=dict(d.scheduler_kwargs),
                                 steps=steps or d.val_steps, regression_model=d.regression_model)

    def check(self) -> None:
        """The SR checks, patch sizes that fit the denoiser, the loss, and the regression model exists."""
        super().check()
        if self.cfg.loss not in ("l1", "mse"):
            raise ConfigError(f"loss must be l1 or mse, got {self.cfg.loss!r}")
        if self.cfg.model.kwargs.get("cond_channels", 2) != 2:
            raise ConfigError("model.kwargs.cond_channels must be 2 (resampled input, regression output)")
        multiple = build_net(self.cfg.model.name, **self.cfg.model.kwargs).multiple
        for label, size in (("data.patch_size", self.cfg.data.patch_size), ("val.patch_size", self.cfg.val.patch_size)):
            if any(s % multiple for s in size):
                raise ConfigError(f"{label} {list(size)} must be multiples of {multiple} for this denoiser")
        try:
            self.settings()
            resolve_model(self.cfg.diffusion.regression_model)
        except (ValueError, InputError) as exc:
            raise ConfigError(f"diffusion: {exc}") from None

    def prepare(self) -> None:
        """The SR data, and the frozen regression model (checked weights, CPU, eval, no grad)."""
        super().prepare()
        spec = resolve_model(self.cfg.diffusion.regression_model)
        self.regression = load_network(spec, torch.device("cpu")).requires_grad_(False)

    def _conditioning(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, 2, D, H, W)``: the resampled input and the frozen regression output (network units)."""
        inp = batch["input"].float()
        if self.regression is None:
            raise RuntimeError("prepare() loads the regression model before training")
        self.regression = self.regression.to(inp.device).eval()
        with torch.no_grad():
            reg = self.regression(inp, batch["ratios"]).float()
        return torch.cat([inp, reg], dim=1)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0 = batch["target"].float()
        cond = self._conditioning(batch)
        noise = torch.randn_like(x0)
        t = self.scheduler.sample_timesteps(x0)
        x_t = self.scheduler.add_noise(x0, noise, t, cond[:, -1:])
        pred = model(self.scheduler.scale_model_input(x_t, t), t, cond)
        target = self.scheduler.training_target(x0, noise, t, cond[:, -1:])
        return _masked_loss(pred, target, batch["mask"], self.cfg.loss)

    def _predictor(self, model: nn.Module, device: torch.device, shape: tuple[int, ...]) -> DiffusionPredictor:
        regression = RegressionPredictor(self.cfg.diffusion.regression_model, self.regression, device)
        return DiffusionPredictor(self.name, model, regression, self.settings(), device, tuple(shape))

    @torch.no_grad()
    def _val_arrays(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[np.ndarray, ...]:
        """``(sample, regression, input, truth)`` of a validation batch, each ``(B, D, H, W)`` HU."""
        cond = self._conditioning(batch)
        device = cond.device
        predictor = self._predictor(model, device, tuple(cond.shape[2:]))
        samples = []
        for b in range(cond.shape[0]):
            generator = torch.Generator(device=device).manual_seed(int(batch["index"][b]))
            samples.append(predictor.sample_window(cond[b:b + 1], generator))
        hu = [net_to_hu(a[:, 0].cpu().numpy()) for a in (torch.cat(samples), cond[:, 1:], cond[:, :1],
                                                          batch["target"].float())]
        return tuple(hu)

    def val_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[dict[str, float]]:
        """Sample, regression and linear scores on the scored slices of each held-out patch."""
        pred, reg, inp, ref = self._val_arrays(model, batch)
        out = []
        for b, (start, stop) in enumerate(batch["score"].cpu().tolist()):
            scored = slice(start, stop)
            reg_m = evaluate_arrays(reg[b, scored], ref[b, scored])
            lin_m = evaluate_arrays(inp[b, scored], ref[b, scored])
            if np.isfinite(pred[b]).all():
                model_m = evaluate_arrays(pred[b, scored], ref[b, scored])
            else:
                log.warning("validation sample %d: the sample is not finite", int(batch["index"][b]))
                model_m = {key: math.nan for key in reg_m}
            metrics = {k: model_m[k] for k in ("psnr", "ssim", "mae_hu_body")}
            metrics.update({f"regression_{k}": reg_m[k] for k in ("psnr", "ssim", "mae_hu_body")})
            metrics["linear_psnr"] = lin_m["psnr"]
            metrics["psnr_gain_vs_regression"] = model_m["psnr"] - reg_m["psnr"]
            out.append(metrics)
        return out

    def panels(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Input | regression | sample | truth, the through-plane slice at mid-``W`` of sample 0."""
        pred, reg, inp, ref = (a[0] for a in self._val_arrays(model, {k: v[:1] for k, v in batch.items()}))
        mid = ref.shape[2] // 2
        gap = np.ones((ref.shape[0], 2), dtype=np.float32)
        row = [_window(inp[:, :, mid]), gap, _window(reg[:, :, mid]), gap, _window(pred[:, :, mid]), gap,
               _window(ref[:, :, mid])]
        return {"input_regression_sample_truth": np.concatenate(row, axis=1)}

    def flops_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[Any, ...]:
        x = batch["target"][:1].float()
        t = torch.zeros(1, dtype=torch.long, device=x.device)
        return x, t, torch.cat([batch["input"][:1].float(), x], dim=1)
