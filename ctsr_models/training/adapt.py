"""Per-volume adaptation: fine-tune a copy of a shipped SR model on the scan's own in-plane detail, then
hand the network it made to inference (:func:`enhance_adapted`, what ``ctsr-enhance --adapt`` and the
server's ``adapt`` parameter run).

Steps (:func:`adapt_network`):
    1. The ``sr_adapt`` task (:mod:`ctsr_models.training.tasks.sr_adapt`) turns the scan into in-plane
       training pairs degraded with its own slab thickness, spacing and profile, and holds out a band
       of slices for validation.
    2. The one trainer (:class:`~ctsr_models.training.Trainer`) fine-tunes a fresh copy of the shipped
       network, in memory (no run folder), within a step and a time budget, validating on the
       held-out pairs every ``val_every`` steps and stopping early after ``patience`` validations
       without improvement. The shipped weights file is only read (its SHA-256 is checked).
    3. The guard: the pretrained network is scored on the same held-out pairs before any step. The
       best adapted weights are kept only if they beat it by more than ``min_gain_db``; otherwise the
       pretrained network is used, and the result says so.
    4. :func:`enhance_adapted` checks the request first (:func:`~ctsr_models.inference.plan_enhancement`),
       adapts, and enhances with the network adaptation returned
       (:func:`~ctsr_models.inference.enhance_detailed` with ``net=``).
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctsr_models.inference import EnhanceOptions, ModelSpec, enhance_detailed, load_network, plan_enhancement
from ctsr_models.inference.device import Progress, pick_device, progress_span, silent
from ctsr_models.io.atomic import atomic_file
from ctsr_models.io.errors import InputError
from ctsr_models.io.volume import Volume
from ctsr_models.nets import build_net

from .config import to_dict
from .distributed import DistInfo
from .tasks.sr_adapt import SRAdaptConfig, SRAdaptTask, adapt_trainer_defaults
from .trainer import FitControl, Trainer

log = logging.getLogger(__name__)

ADAPTED_FORMAT = 1
PROFILES = ("rect", "gaussian", "auto")
MAX_STEPS = 100_000
MAX_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class AdaptOptions:
    """How to adapt (a step budget, a time budget, or both: whichever ends first).

    Attributes:
        steps: optimizer steps at most.
        seconds: wall-clock budget of the fine-tuning in seconds (``None``: steps only).
        lr: learning rate (constant, AdamW).
        batch_size: pairs per step.
        patch_size: ``(D, H, W)`` of the pairs (``D`` along x or y on the thin grid, ``H`` slices).
        val_every: steps between validations on the held-out pairs.
        patience: validations without improvement before stopping (0: never stop early).
        n_val: held-out pairs.
        holdout_fraction: share of the slices held out (a band in the middle of the stack).
        profile: slice profile of the input: ``rect``, ``gaussian`` or ``auto`` (estimated).
        min_gain_db: the adapted model is kept only if its held-out PSNR beats the pretrained one by
            more than this.
        seed: data and initialisation seed.
        save_path: where to save the adapted weights and settings (``None``: not saved).
    """

    steps: int = 300
    seconds: float | None = 120.0
    lr: float = 1e-3
    batch_size: int = 4
    patch_size: tuple[int, int, int] = (32, 32, 48)
    val_every: int = 20
    patience: int = 4
    n_val: int = 12
    holdout_fraction: float = 0.2
    profile: str = "rect"
    min_gain_db: float = 0.0
    seed: int = 0
    save_path: Path | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= MAX_STEPS:
            raise InputError(f"adaptation steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        if self.seconds is not None and not (math.isfinite(self.seconds) and 0 < self.seconds <= MAX_SECONDS):
            raise InputError(f"adaptation seconds must be a number in (0, {MAX_SECONDS:g}], got {self.seconds}")
        if self.profile not in PROFILES:
            raise InputError(f"adaptation profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"adaptation learning rate must be > 0, got {self.lr}")


@dataclass
class AdaptResult:
    """What adaptation did.

    Attributes:
        net: the network to enhance with (adapted, or the pretrained one when the guard kept it), eval mode.
        adapted: True when the adapted weights are used.
        message: one line for people (what was kept and why).
        pretrained_psnr: held-out PSNR (dB) of the pretrained network.
        best_psnr: best held-out PSNR (dB) of the adapted network (NaN if never finite).
        linear_psnr: held-out PSNR (dB) of linear interpolation (the pairs' own input).
        steps: optimizer steps done.
        best_step: step of the best validation (0: the pretrained weights).
        seconds: wall time of the whole adaptation (data, steps, validations).
        stopped_by: ``steps``, ``time`` or ``early stopping``.
        settings: the task's settings (thickness, spacing, profile, patches, bands) and the options.
        history: ``(step, held-out PSNR)`` of each validation.
    """

    net: nn.Module
    adapted: bool
    message: str
    pretrained_psnr: float
    best_psnr: float
    linear_psnr: float
    steps: int
    best_step: int
    seconds: float
    stopped_by: str
    settings: dict[str, Any] = field(default_factory=dict)
    history: list[tuple[int, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (for the CLI, the server and the result's findings)."""
        return {"adapted": self.adapted, "message": self.message,
                "heldout_psnr_pretrained": _round(self.pretrained_psnr), "heldout_psnr_adapted": _round(self.best_psnr),
                "heldout_psnr_linear": _round(self.linear_psnr), "steps": self.steps, "best_step": self.best_step,
                "seconds": round(self.seconds, 2), "stopped_by": self.stopped_by,
                "profile": self.settings.get("profile"),
                "history": [[s, _round(p)] for s, p in self.history]}


def _round(value: float) -> float | None:
    return round(float(value), 3) if math.isfinite(value) else None


class _Tracker:
    """Keeps the pretrained score, the best adapted weights (steps > 0), the history, progress and the
    early-stopping count (validations that beat neither the pretrained nor the best adapted score)."""

    def __init__(self, trainer: Trainer, options: AdaptOptions, started: float, report: Progress) -> None:
        self.trainer, self.options, self.started, self.report = trainer, options, started, report
        self.pretrained_psnr = math.nan
        self.best_psnr, self.best_step, self.best_state = -math.inf, 0, None
        self.stale, self.history = 0, []

    def fraction(self, step: int) -> float:
        done = step / self.options.steps
        if self.options.seconds is not None:
            done = max(done, (time.perf_counter() - self.started) / self.options.seconds)
        return min(done, 1.0)

    def on_step(self, step: int) -> None:
        self.report(self.fraction(step), "adapting")

    def on_validation(self, step: int, metrics: dict[str, float]) -> bool:
        value = float(metrics.get("psnr", math.nan))
        self.history.append((step, value))
        if step == 0:
            self.pretrained_psnr = value
            return False
        bar = max(self.best_psnr, self.pretrained_psnr)
        if math.isfinite(value) and value > self.best_psnr:
            self.best_psnr, self.best_step = value, step
            self.best_state = copy.deepcopy(self.trainer.val_net.state_dict())
        self.stale = 0 if (math.isfinite(value) and value > bar) else self.stale + 1
        log.info("adaptation step %d: held-out PSNR %.3f dB (pretrained %.3f, best adapted %.3f at step %d)", step,
                 value, self.pretrained_psnr, self.best_psnr, self.best_step)
        return self.options.patience > 0 and self.stale >= self.options.patience


def _task_config(options: AdaptOptions, spec: ModelSpec, target_spacing: float, thickness: float | None,
                 device: torch.device) -> SRAdaptConfig:
    trainer = adapt_trainer_defaults()
    trainer.steps, trainer.lr, trainer.batch_size = options.steps, options.lr, options.batch_size
    trainer.val_every, trainer.seed, trainer.device = options.val_every, options.seed, device.type
    trainer.log_every = max(options.val_every, 1)
    return SRAdaptConfig(trainer=trainer, model=spec.name, target_spacing=target_spacing,
                         input_thickness=thickness, profile=options.profile, patch_size=tuple(options.patch_size),
                         holdout_fraction=options.holdout_fraction, n_val=options.n_val)


def adapt_network(volume: Volume, spec: ModelSpec, target_spacing: float, thickness: float | None,
                  options: AdaptOptions, device: torch.device, progress: Progress | None = None) -> AdaptResult:
    """Fine-tune a copy of ``spec``'s network on ``volume``'s in-plane pairs (see the module docstring).

    Args:
        volume: the thick-slice scan (HU); not modified.
        spec: the shipped model to start from.
        target_spacing: thin spacing ``s`` in mm the result will be enhanced to.
        thickness: slab thickness in mm (``None``: the header's, else the slice spacing).
        options: budgets and settings.
        device: where to train.
        progress: ``progress(fraction, "adapting")`` during the fine-tuning.

    Returns:
        The network to enhance with and what happened.

    Raises:
        InputError: a scan too small to hold slices out, or a model without a network.
    """
    started = time.perf_counter()
    report = progress or silent
    cfg = _task_config(options, spec, target_spacing, thickness, device)
    task = SRAdaptTask(cfg, volume)
    task.check()
    try:
        task.prepare()
    except ValueError as exc:
        raise InputError(f"cannot adapt to this scan: {exc}") from None
    trainer = Trainer(task, None, DistInfo(), device, to_dict(cfg))
    trainer.setup()
    tracker = _Tracker(trainer, options, started, report)
    baseline = trainer.validate()
    pretrained_psnr, linear_psnr = baseline["psnr"], baseline["linear_psnr"]
    tracker.on_validation(0, baseline)
    deadline = None if options.seconds is None else started + options.seconds
    trainer.fit(control=FitControl(deadline=deadline, on_step=tracker.on_step, on_validation=tracker.on_validation))
    stopped_by = ("time" if deadline is not None and time.perf_counter() >= deadline else
                  "steps" if trainer.step >= options.steps else "early stopping")
    result = _choose(trainer, tracker, spec, options, pretrained_psnr, linear_psnr)
    result.seconds, result.stopped_by = time.perf_counter() - started, stopped_by
    result.settings = {**task.settings(), "options": _options_dict(options)}
    (log.info if result.adapted else log.warning)("%s", result.message)
    if options.save_path is not None:
        save_adapted(result, spec, options.save_path)
    report(1.0, "adapting")
    return result


def _choose(trainer: Trainer, tracker: _Tracker, spec: ModelSpec, options: AdaptOptions, pretrained_psnr: float,
            linear_psnr: float) -> AdaptResult:
    """Apply the no-worse guard: the best adapted weights if they beat the pretrained ones, else the pretrained."""
    best = tracker.best_psnr if tracker.best_state is not None else math.nan
    adapted = math.isfinite(best) and best > pretrained_psnr + options.min_gain_db
    if adapted:
        net = trainer.val_net
        net.load_state_dict(tracker.best_state)
        message = (f"adapted to this scan: held-out in-plane PSNR {pretrained_psnr:.2f} -> {best:.2f} dB "
                   f"(step {tracker.best_step} of {trainer.step})")
    else:
        net = load_network(spec, trainer.device)
        shown = f"best {best:.2f} dB" if math.isfinite(best) else "no finite score"
        message = (f"adaptation did not improve this scan's held-out in-plane pairs ({shown} vs {pretrained_psnr:.2f} "
                   f"dB pretrained after {trainer.step} steps); kept the pretrained model {spec.name}")
    return AdaptResult(net=net.eval(), adapted=adapted, message=message, pretrained_psnr=pretrained_psnr,
                       best_psnr=best, linear_psnr=linear_psnr, steps=trainer.step,
                       best_step=tracker.best_step if adapted else 0, seconds=0.0, stopped_by="",
                       history=list(tracker.history))


def _options_dict(options: AdaptOptions) -> dict[str, Any]:
    data = asdict(options)
    data["save_path"] = None
    data["patch_size"] = list(options.patch_size)
    return data


def save_adapted(result: AdaptResult, spec: ModelSpec, path: str | Path) -> Path:
    """Save the weights used (adapted or pretrained) with the network and the run's settings.

    The file holds only tensors and plain data (``torch.load(path, weights_only=True)`` reads it):
    ``format``, ``state_dict``, ``net``, ``net_kwargs``, ``base_model``, ``base_sha256``, ``roi_size``,
    ``adapted`` and ``summary`` (the held-out scores and settings). Written atomically.
    """
    path = Path(path)
    state = {k: v.detach().cpu().clone() for k, v in result.net.state_dict().items()}
    payload = {"format": ADAPTED_FORMAT, "state_dict": state, "net": spec.net, "net_kwargs": dict(spec.net_kwargs),
               "base_model": spec.name, "base_sha256": spec.sha256, "roi_size": list(spec.roi_size),
               "adapted": result.adapted, "summary": {**result.summary(), "settings": result.settings}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)
    log.info("adapted weights saved (%s)", path.name)
    return path


def load_adapted(path: str | Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The network saved by :func:`save_adapted` (eval mode on ``device``) and its saved settings.

    Raises:
        InputError: not a file written by :func:`save_adapted`.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError(f"cannot read adapted weights {Path(path).name}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != ADAPTED_FORMAT:
        raise InputError(f"{Path(path).name} is not a file of adapted weights (ctsr-enhance --save-adapted)")
    net = build_net(payload["net"], **payload["net_kwargs"])
    net.load_state_dict(payload["state_dict"], strict=True)
    return net.to(device).eval(), {k: v for k, v in payload.items() if k != "state_dict"}


def enhance_adapted(volume: Volume, options: EnhanceOptions, adapt: AdaptOptions,
                    progress: Progress | None = None) -> tuple[Volume, dict[str, Any]]:
    """Adapt the model of ``options`` to ``volume``, then enhance ``volume`` with the network adaptation returned.

    The request is checked (grid, output size, thickness, model) before any training. Progress:
    adaptation fills the first half, the enhancement the second.

    Returns:
        The enhanced volume (float32 HU on the output grid) and ``{"model": name, "adaptation":
        summary}``: the name says ``(adapted to this scan)`` when the adapted weights were used, and
        the summary is :meth:`AdaptResult.summary`; the volume's findings end with what adaptation did.

    Raises:
        InputError: as :func:`~ctsr_models.inference.enhance`, an interpolation model, or a scan
            adaptation cannot use.
    """
    plan = plan_enhancement(volume, options)
    if not plan.spec.has_network:
        raise InputError(f"model {options.model!r} is an interpolation; adaptation needs a network model")
    report = progress or silent
    report(0.0, "preparing")
    result = adapt_network(volume, plan.spec, plan.grid.spacing, plan.thickness, adapt, pick_device(options.device),
                           progress_span(report, 0.0, 0.5))
    summary = result.summary()
    label = plan.spec.name + (" (adapted to this scan)" if result.adapted else "")
    out, details = enhance_detailed(volume, options, progress_span(report, 0.5, 1.0), net=result.net, plan=plan,
                                    label=label, notes=[result.message])
    return out, {**details, "adaptation": summary}
