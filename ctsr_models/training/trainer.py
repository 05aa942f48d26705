"""The one training loop, shared by every task (nanoGPT's loop, nnU-Net's hooks and checkpoints).

Per optimizer step: ``grad_accum`` micro-batches (DDP gradient sync only on the last, via ``no_sync``),
autocast in bf16/fp16 when enabled, loss scaling for fp16, unscale before clipping the global gradient
norm, AdamW (in the configured parameter groups), the warm-up + cosine schedule, then the EMA update.
Before each step the freeze schedule, a pure function of the step, sets which parameters train.
Rank 0 alone logs and writes; every rank takes part in the collectives (validation sums, RNG states
for checkpoints, parameter digests).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, default_collate

from ctsr_models import __version__
from ctsr_models.data import StreamSampler

from . import distributed as dist
from .checkpoint import CHECKPOINT_FORMAT, numbered_name, prune, rng_state, save_atomic, set_rng_state
from .distributed import DistInfo
from .optim import (FreezeSchedule, amp_dtype, autocast, make_ema, make_optimizer, make_scaler, make_scheduler,
                    restore_optimizer)
from .reporting import Reporter
from .tasks.base import Task
from .throughput import flops_per_sample, throughput_report

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic algorithms (warn where none exists) and no cuDNN autotuning, or the fast settings."""
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic


def param_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer's bytes: equal digests mean bitwise-equal models."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class FitControl:
    """Hooks for a run driven from code rather than from ``python -m train`` (e.g. per-scan adaptation).

    Attributes:
        deadline: ``time.perf_counter()`` value after which :meth:`Trainer.fit` stops, after the step in
            progress (and its validation, if one is due); ``None``: no time limit.
        on_step: called after every optimizer step with the step number.
        on_validation: called after every validation with the step and the metrics; returning True
            stops the run (early stopping).
    """

    deadline: float | None = None
    on_step: Callable[[int], None] | None = None
    on_validation: Callable[[int, dict[str, float]], bool] | None = None

    def out_of_time(self) -> bool:
        """True once the deadline has passed."""
        return self.deadline is not None and time.perf_counter() >= self.deadline


class Trainer:
    """Trains a :class:`~ctsr_models.training.tasks.base.Task`.

    Args:
        task: the task (already checked and prepared).
        run_dir: the run folder (written by rank 0 only); ``None`` for a run that writes nothing (one
            process, no checkpoints, no summary file, no TensorBoard).
        info: this process's ranks.
        device: this process's device.
        config: the resolved config as plain data (stored in every checkpoint).
    """

    def __init__(self, task: Task, run_dir: Path | None, info: DistInfo, device: torch.device,
                 config: dict[str, Any]) -> None:
        self.task, self.cfg = task, task.trainer_cfg
        self.run_dir, self.info, self.device, self.config = run_dir, info, device, config
        self.amp = amp_dtype(self.cfg.amp, device)
        self.step, self.samples, self.train_time = 0, 0, 0.0
        self.last_val: dict[str, float] = {}
        self.val_ids: list[list[int]] = []
        self.last_loss: float | None = None
        self._last_val_step, self._last_ckpt_step = -1, -1
        self._timed_samples, self._timed_s, self._clock = 0, 0.0, 0.0

    # ---------------------------------------------------------------- set-up
    def setup(self, state: dict[str, Any] | None = None) -> None:
        """Build model, EMA, DDP wrapper, optimizer, schedule, scaler and data; restore ``state`` if given."""
        cfg = self.cfg
        set_determinism(cfg.deterministic, self.device)
        seed_everything(cfg.seed)  # the same initial weights on every rank
        raw = self.task.build_model()
        if state is not None:
            raw.load_state_dict(state["model"])
        raw.to(self.device)
        if cfg.channels_last:
            raw.to(memory_format=torch.channels_last_3d)
        self.raw = raw
        self.trainable = {name: p.requires_grad for name, p in raw.named_parameters()}
        self.freeze = FreezeSchedule(raw, cfg.freeze)
        self.frozen: frozenset[str] | None = None
        self.ema = make_ema(raw, cfg.ema_decay)
        # DDP registers the parameters trainable now (before any freezing), so unfrozen ones are synchronised
        # later; while some are frozen their hooks never fire, which find_unused_parameters tolerates.
        self.ddp = DistributedDataParallel(raw, device_ids=[self.device] if self.device.type == "cuda" else None,
                                           find_unused_parameters=bool(cfg.freeze)) \
            if self.info.distributed else None
        self.model: nn.Module = self.ddp if self.ddp is not None else raw
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.optimizer = make_optimizer(raw, cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.scaler = make_scaler(self.device, self.amp)
        self.train_ds = self.task.train_dataset(self.info.rank)
        self.val_ds = self.task.val_dataset()
        seed_everything(cfg.seed + self.info.rank)
        if state is not None:
            self._restore(state)
        self._enter_phase()
        in_memory = self.run_dir is None  # nothing reports throughput: skip counting FLOPs
        self.flops = flops_per_sample(raw, self._sample_inputs()) if self.info.is_main and not in_memory else None
        self.reporter = Reporter(self.run_dir, self.info.is_main, cfg.tensorboard and self.run_dir is not None,
                                 cfg.steps, self.step)

    def _restore(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        restore_optimizer(self.optimizer, self.scheduler, state, cfg)
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.samples = int(state["step"]), int(state["samples"])
        self.train_time = float(state.get("train_time_s", 0.0))
        self.last_val = dict(state.get("val", {}))
        rngs = state["rng"]
        if len(rngs) != self.info.world_size:
            log.warning("checkpoint written by %d ranks, resuming on %d: RNG states are not exact", len(rngs),
                        self.info.world_size)
        set_rng_state(rngs[self.info.rank] if self.info.rank < len(rngs) else rngs[0])
        log.info("resumed at step %d (%d samples per rank used)", self.step, self.samples)

    def _enter_phase(self) -> None:
        """Freeze or unfreeze parameters for the coming step ``self.step`` (a pure function of the step).

        A frozen parameter has ``requires_grad`` off, so it gets no gradient and AdamW skips it: no
        update, no weight decay, no moments; it stays bitwise equal, and so does its EMA. When it is
        unfrozen, its AdamW moments and bias correction start from zero, as for a new parameter.
        """
        frozen = self.freeze.apply(self.raw, self.step, self.trainable)
        if self.frozen is not None and frozen != self.frozen:
            log.info("step %d: %d parameter tensors frozen, %d unfrozen (AdamW moments start at zero)", self.step,
                     len(frozen - self.frozen), len(self.frozen - frozen))
        elif self.frozen is None and frozen:
            log.info("step %d: %d parameter tensors frozen", self.step, len(frozen))
        self.frozen = frozen

    def _sample_inputs(self) -> tuple[Any, ...]:
        batch = self._to_device(default_collate([self.train_ds[0]]))
        return self.task.flops_inputs(batch)

    def _loader(self) -> DataLoader:
        cfg = self.cfg
        start = self.step * cfg.batch_size * cfg.grad_accum
        return DataLoader(self.train_ds, batch_size=cfg.batch_size, sampler=StreamSampler(start),
                          num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda", drop_last=True,
                          generator=torch.Generator().manual_seed(cfg.seed + self.info.rank),
                          prefetch_factor=4 if cfg.num_workers else None)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in batch.items():
            value = value.to(self.device, non_blocking=True)
            if self.cfg.channels_last and value.ndim == 5:
                value = value.contiguous(memory_format=torch.channels_last_3d)
            out[key] = value
        return out

    # ---------------------------------------------------------------- the loop
    def _train_step(self, batches: Iterator[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (mean loss, gradient norm)."""
        cfg, accum = self.cfg, self.cfg.grad_accum
        total = torch.zeros((), device=self.device)
        for micro in range(accum):
            batch = self._to_device(next(batches))
            sync = self.ddp is None or micro == accum - 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                with autocast(self.device, self.amp):
                    loss = self.task.loss(self.model, batch) / accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
        grad_norm = None
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.raw)
        return total, grad_norm

    def _due(self, every: int) -> bool:
        return self.step == self.cfg.steps or (every > 0 and self.step % every == 0)

    def _tick(self) -> float:
        """Seconds since the previous tick, GPU work included (synchronises only here, not every step)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        elapsed, self._clock = now - self._clock, now
        return elapsed

    def fit(self, stop_at: int | None = None, control: FitControl | None = None) -> dict[str, Any]:
        """Train until ``trainer.steps`` (or until step ``stop_at``, with a checkpoint to resume from).

        Throughput counts training steps only: the first step of a launch (warm-up, compilation),
        validation and checkpointing are left out of ``samples_per_s``.

        Args:
            stop_at: stop after this step.
            control: optional time limit, per-step callback and early stopping (one process only).

        Returns:
            The run summary (also written to ``summary.json`` by rank 0).
        """
        control = control or FitControl()
        if self.info.distributed and (control.deadline is not None or control.on_validation is not None):
            raise ValueError("a time limit or early stopping needs a single-process run (ranks would disagree)")
        cfg, started = self.cfg, time.perf_counter()
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        per_step = cfg.batch_size * cfg.grad_accum
        batches = iter(self._loader())
        self._clock, pending, first = time.perf_counter(), 0, True
        self.raw.train()
        with self.reporter.session():
            while self.step < end and not control.out_of_time():
                self._enter_phase()
                loss, grad_norm = self._train_step(batches)
                self.step, self.samples, pending = self.step + 1, self.samples + per_step, pending + per_step
                if first:
                    self.train_time += self._tick()
                    pending, first = 0, False
                log_now = self.step % cfg.log_every == 0 or self.step == end
                val_now = self.val_ds is not None and self._due(cfg.val_every)
                ckpt_now = self._due(cfg.ckpt_every)
                rate = None
                if (log_now or val_now or ckpt_now) and pending:
                    elapsed = self._tick()
                    self.train_time += elapsed
                    self._timed_samples, self._timed_s = self._timed_samples + pending, self._timed_s + elapsed
                    rate, pending = pending * self.info.world_size / elapsed, 0
                if log_now:
                    self._log_step(loss, grad_norm, rate)
                self.reporter.step(self.last_loss if log_now else None, rate)
                if control.on_step is not None:
                    control.on_step(self.step)
                stop = control.out_of_time()
                if val_now:
                    stop = self._validate_with(control) or stop
                if ckpt_now:
                    self.save()
                if val_now or ckpt_now:
                    self._tick()
                if stop:
                    log.info("stopping at step %d (%s)", self.step,
                             "time limit" if control.out_of_time() else "early stopping")
                    break
        del batches
        if self.step != self._last_ckpt_step:
            self.save()
        return self._finish(time.perf_counter() - started, stop_at)

    def _validate_with(self, control: FitControl) -> bool:
        """Validate, then ask ``control`` whether to stop."""
        metrics = self.validate()
        return bool(control.on_validation(self.step, metrics)) if control.on_validation is not None else False

    def _log_step(self, loss: torch.Tensor, grad_norm: torch.Tensor | None, rate: float | None) -> None:
        """Rank-averaged loss (an all-reduce) to the log and TensorBoard."""
        values = torch.stack([loss.float(), (grad_norm if grad_norm is not None else torch.zeros_like(loss)).float()])
        values = dist.all_reduce_sum(values.detach().clone()) / self.info.world_size
        self.last_loss = float(values[0])
        lr = self.scheduler.get_last_lr()[0]
        scalars = {"loss": self.last_loss, "lr": lr}
        if rate is not None:
            scalars["samples_per_s"] = rate
        if grad_norm is not None:
            scalars["grad_norm"] = float(values[1])
        self.reporter.scalars(self.step, scalars, "train")
        if self.info.is_main:
            shown = f"  {rate:.1f} samples/s" if rate is not None else ""
            log.info("step %d/%d  loss %.5g  lr %.3g%s", self.step, self.cfg.steps, self.last_loss, lr, shown)

    # ---------------------------------------------------------------- validation
    @property
    def val_net(self) -> nn.Module:
        """The network that validation scores (and checkpoints ship): the EMA when enabled, else the raw one."""
        return self.ema.module if (self.ema is not None and self.cfg.validate_ema) else self.raw

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Score every validation sample exactly once across ranks (sample ``i`` on rank ``i % world``).

        Returns:
            The mean of each metric over all samples (NaN values are left out of a mean); also kept in
            ``last_val``, with the sample ids of each rank in ``val_ids``.
        """
        if self.val_ds is None:
            return {}
        net, names = self.val_net, self.task.val_metrics
        was_training = net.training
        net.eval()
        ids = dist.shard(len(self.val_ds), self.info.rank, self.info.world_size)
        sums = torch.zeros(2 * len(names), dtype=torch.float64)
        panels_left = self.cfg.image_panels if self.info.is_main else 0
        for i in ids:
            batch = self._to_device(default_collate([self.val_ds[i]]))
            with autocast(self.device, self.amp):
                results = self.task.val_step(net, batch)
                images = self.task.panels(net, batch) if panels_left > 0 else {}
            for metrics in results:
                for k, name in enumerate(names):
                    value = float(metrics.get(name, math.nan))
                    if math.isfinite(value):
                        sums[k] += value
                        sums[len(names) + k] += 1
            if images:
                self.reporter.images(self.step, {f"val_{i}/{key}": img for key, img in images.items()})
                panels_left -= 1
        sums = dist.all_reduce_sum(sums.to(self.device)).cpu()
        means = {name: float(sums[k] / sums[len(names) + k]) if sums[len(names) + k] > 0 else math.nan
                 for k, name in enumerate(names)}
        self.val_ids = dist.all_gather_objects(ids)
        self.last_val, self._last_val_step = means, self.step
        self.reporter.scalars(self.step, means, "val")
        if self.info.is_main:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in means.items() if k in ("psnr", "ssim", "linear_psnr"))
            log.info("validation at step %d on %d samples: %s", self.step, len(self.val_ds), shown)
        net.train(was_training)
        return means

    # ---------------------------------------------------------------- checkpoints and summary
    def state_dict(self, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        """The complete checkpoint (see :mod:`ctsr_models.training.checkpoint`)."""
        return {
            "format": CHECKPOINT_FORMAT, "task": self.task.name, "ctsr_models": __version__,
            "torch": str(torch.__version__),
            "step": self.step, "samples": self.samples, "train_time_s": self.train_time,
            "world_size": self.info.world_size, "model": self.raw.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rngs,
            "val": self.last_val, "config": self.config,
        }

    def save(self) -> Path | None:
        """Write ``checkpoints/last.pt``, a numbered copy and ``model_ema.pt`` (rank 0; all ranks must call,
        since every rank's RNG state is gathered)."""
        rngs = dist.all_gather_objects(rng_state())
        self._last_ckpt_step = self.step
        if not self.info.is_main or self.run_dir is None:
            return None
        folder = self.run_dir / "checkpoints"
        state = self.state_dict(rngs)
        save_atomic(state, folder / "last.pt")
        if self.cfg.keep_checkpoints > 0:
            save_atomic(state, folder / numbered_name(self.step))
            prune(folder, self.cfg.keep_checkpoints)
        save_atomic((self.raw if self.ema is None else self.ema.module).state_dict(), folder / "model_ema.pt")
        log.info("checkpoint at step %d: %s", self.step, folder / "last.pt")
        return folder / "last.pt"

    def _finish(self, wall_s: float, stop_at: int | None) -> dict[str, Any]:
        digests = dist.all_gather_objects(param_digest(self.raw))
        rate = self._timed_samples * self.info.world_size / self._timed_s if self._timed_s > 0 else 0.0
        folder = (self.run_dir or Path()) / "checkpoints"
        summary = {
            "task": self.task.name, "run_dir": None if self.run_dir is None else str(self.run_dir),
            "completed": self.step >= self.cfg.steps,
            "step": self.step, "steps": self.cfg.steps, "stop_at": stop_at, "world_size": self.info.world_size,
            "device": str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device),
            "amp": str(self.amp).replace("torch.", "") if self.amp else "off",
            "wall_time_s": wall_s, "train_time_s_total": self.train_time, "samples_per_rank": self.samples,
            "samples_per_s": rate, **throughput_report(self.flops, rate, self.info.world_size, self.device),
            "final_loss": self.last_loss, "val_step": self._last_val_step if self._last_val_step >= 0 else None,
            "val": self.last_val, "val_model": "ema" if (self.ema is not None and self.cfg.validate_ema) else "raw",
            "val_sample_ids_per_rank": self.val_ids, "param_sha256_per_rank": digests,
            "checkpoint": str(folder / "last.pt"), "model_ema": str(folder / "model_ema.pt"),
        }
        if len(set(digests)) > 1:
            log.error("model parameters differ between ranks: %s", digests)
        self.reporter.summary(summary)
        self.reporter.close()
        return summary
