"""Optimizer, learning-rate schedule, mixed precision and weight averaging for the trainer."""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .config import ConfigError, TrainerConfig

log = logging.getLogger(__name__)


class WarmupCosine:
    """Learning-rate factor: linear warm-up from 0 to 1 over ``warmup`` steps, then cosine decay to
    ``min_ratio`` at ``total`` steps (and ``min_ratio`` after). A plain object, so its state is plain data
    inside the scheduler's state dict.
    """

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = int(warmup), int(total), float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        span = max(self.total - self.warmup, 1)
        progress = min((step - self.warmup) / span, 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainerConfig) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay on weights of rank >= 2 only (not on biases and PReLU slopes)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainerConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step :class:`WarmupCosine` schedule over ``cfg.steps``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio))


def make_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``model``'s parameters and buffers (``None`` when ``decay`` is 0)."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``trainer.amp`` on ``device`` (``None``: full precision).

    Raises:
        ConfigError: bf16/fp16 asked for where it cannot run.
    """
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        if mode == "bf16":
            return torch.bfloat16
        raise ConfigError("trainer.amp=fp16 needs a CUDA GPU; use bf16 or off on the CPU")
    if mode == "fp16":
        return torch.float16
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if mode == "bf16":
        raise ConfigError("this GPU has no bf16; use trainer.amp=fp16 or auto")
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """The autocast context for ``dtype`` (a no-op context when ``None``)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling, enabled for fp16 only (bf16 and fp32 need none; a disabled scaler is a no-op)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
