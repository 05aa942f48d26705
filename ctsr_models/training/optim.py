"""Optimizer (with configured parameter groups), learning-rate schedule, freeze schedule, mixed
precision and weight averaging for the trainer."""
from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .config import ConfigError, FreezeConfig, TrainerConfig

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


def name_matches(name: str, pattern: str) -> bool:
    """True when parameter ``name`` is under module prefix ``pattern`` (``a.b`` takes ``a.b`` and
    ``a.b.*``), or matches it as a glob when ``pattern`` holds ``*``, ``?`` or ``[``."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    prefix = pattern.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def _no_match(where: str, pattern: str, model: nn.Module) -> ConfigError:
    top = list(dict.fromkeys(name.split(".")[0] for name, _ in model.named_parameters()))
    return ConfigError(f"{where}: {pattern!r} matches no parameter of the model; its top-level modules are "
                       f"{', '.join(top)}")


def _split_by_rank(params: list[nn.Parameter], decay: float, lr: float, mult: float, name: str) -> list[dict]:
    """Two AdamW groups of one configured group: decay on weights of rank >= 2, none on the rest."""
    common = {"lr": lr * mult, "lr_mult": mult, "name": name}
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": decay, **common},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, **common}]


def make_optimizer(model: nn.Module, cfg: TrainerConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, in the groups of ``cfg.param_groups``.

    Each parameter goes to the first configured group whose ``match`` takes it, else to the default
    group (``lr_mult`` 1, ``cfg.weight_decay``). Every group is split in two: decoupled weight decay on
    weights of rank >= 2, none on biases and norm/PReLU scales. The optimizer's groups are, in order,
    the default pair, then one pair per configured group (a pair may be empty); each group dict
    carries ``lr_mult`` and ``name`` (``default`` or the match pattern), and its ``lr`` starts at
    ``cfg.lr * lr_mult`` (the schedule's base).

    Raises:
        ConfigError: a configured ``match`` that takes no parameter (the message lists the model's
            top-level modules).
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    taken: list[list[nn.Parameter]] = [[] for _ in cfg.param_groups]
    default: list[nn.Parameter] = []
    for name, p in named:
        k = next((k for k, g in enumerate(cfg.param_groups) if name_matches(name, g.match)), None)
        (default if k is None else taken[k]).append(p)
    groups = _split_by_rank(default, cfg.weight_decay, cfg.lr, 1.0, "default")
    for k, g in enumerate(cfg.param_groups):
        if not taken[k]:
            raise _no_match(f"trainer.param_groups[{k}].match", g.match, model)
        decay = cfg.weight_decay if g.weight_decay is None else g.weight_decay
        groups += _split_by_rank(taken[k], decay, cfg.lr, g.lr_mult, g.match)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


class FreezeSchedule:
    """Which parameters are frozen at an optimizer step: a pure function of the step.

    A parameter named by several entries stays frozen until the latest of their ``until_step``.

    Args:
        model: the (unwrapped) model.
        entries: ``trainer.freeze``.

    Raises:
        ConfigError: a module name that takes no parameter (the message lists the top-level modules).
    """

    def __init__(self, model: nn.Module, entries: Sequence[FreezeConfig]) -> None:
        names = [name for name, _ in model.named_parameters()]
        self.until: dict[str, int] = {}
        for i, entry in enumerate(entries):
            for j, pattern in enumerate(entry.modules):
                hits = [name for name in names if name_matches(name, pattern)]
                if not hits:
                    raise _no_match(f"trainer.freeze[{i}].modules[{j}]", pattern, model)
                for name in hits:
                    self.until[name] = max(self.until.get(name, 0), entry.until_step)

    def frozen(self, step: int) -> frozenset[str]:
        """Names of the parameters frozen during optimizer step ``step`` (0-based)."""
        return frozenset(name for name, until in self.until.items() if step < until)

    def apply(self, model: nn.Module, step: int, trainable: dict[str, bool]) -> frozenset[str]:
        """Set ``requires_grad`` of every parameter for ``step``: its own flag in ``trainable`` (what the
        task built) unless frozen now. Returns the frozen names."""
        frozen = self.frozen(step)
        for name, p in model.named_parameters():
            p.requires_grad_(trainable[name] and name not in frozen)
        return frozen


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainerConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step :class:`WarmupCosine` schedule over ``cfg.steps``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio))


def restore_optimizer(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                      state: dict[str, Any], cfg: TrainerConfig) -> None:
    """Load the optimizer and schedule states of a checkpoint into the ones :func:`make_optimizer` and
    :func:`make_scheduler` built from ``cfg``.

    The moments and step counts come from the checkpoint; the config wins for the hyperparameters: the
    schedule (e.g. more ``steps``), ``lr``, each group's ``lr_mult`` and weight decay. For an unchanged
    config the learning rates are bitwise those of the uninterrupted run.

    Raises:
        ConfigError: the checkpoint's groups do not fit the ones ``trainer.param_groups`` makes now.
    """
    fresh = [{key: group[key] for key in ("lr_mult", "name", "weight_decay")} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as exc:
        raise ConfigError(f"the checkpoint's optimizer does not fit trainer.param_groups ({exc}); resume with the "
                          f"param_groups it was trained with") from None
    scheduler.load_state_dict(state["scheduler"])
    schedule = WarmupCosine(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    scheduler.lr_lambdas = [schedule] * len(fresh)
    scheduler.base_lrs = [cfg.lr * f["lr_mult"] for f in fresh]
    lrs = [base * schedule(scheduler.last_epoch) for base in scheduler.base_lrs]
    for group, f, base, lr in zip(optimizer.param_groups, fresh, scheduler.base_lrs, lrs):
        group.update(f, initial_lr=base, lr=lr)
    scheduler._last_lr = lrs  # what get_last_lr() reports until the next step


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
