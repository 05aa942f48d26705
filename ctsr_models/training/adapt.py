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
    3. The guard (:func:`guard_verdict`) needs two signals to agree. Held-out pairs: the pretrained
       network is scored on them before any step, and the best adapted weights must beat it by more
       than ``min_gain_db``. Data consistency (:class:`ConsistencyProbe`): the RAW output of each
       network (no projection) on a bounded sub-volume of the scan, degraded again with the slab
       profile onto the input grid, against the acquired slabs (RMSE in HU inside the body); the
       adapted one may not be worse than the pretrained one by more than ``consistency_tolerance``
       (relative). Otherwise the pretrained network is used; the result gives both numbers and why.
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

from ctsr_models.data.inplane import body_crop
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
CONSISTENCY_TOLERANCE = 0.01
"""Relative slack of the data-consistency rule. The failure the guard must catch (issue 15: the result
0.24 dB worse while the held-out pairs improved) is 2.8 % more RMSE against the truth; the raw-output
consistency RMSE of one network on one sub-volume is deterministic to < 0.01 HU (float32 windows), so
1 % (0.1-0.3 HU at the 10-30 HU typical of raw outputs) refuses changes of that size and ignores noise."""


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
        consistency_tolerance: the adapted model is kept only if the data-consistency RMSE of its raw
            output is at most ``(1 + consistency_tolerance)`` times the pretrained one's (see
            :data:`CONSISTENCY_TOLERANCE` for the default's reason).
        probe_inplane: rows and columns (at most) of the consistency sub-volume, centred on the body.
        probe_slabs: slabs (at most) of the consistency sub-volume, a band in the middle of the stack.
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
    consistency_tolerance: float = CONSISTENCY_TOLERANCE
    probe_inplane: int = 96
    probe_slabs: int = 16
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
        if not self.consistency_tolerance >= 0:
            raise InputError(f"consistency tolerance must be >= 0, got {self.consistency_tolerance}")
        if self.probe_inplane < 16 or self.probe_slabs < 4:
            raise InputError(f"the consistency sub-volume needs at least 16 rows/columns and 4 slabs, got "
                             f"{self.probe_inplane} and {self.probe_slabs}")


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
        guard: the guard's verdict (both signals and the reason); ``None`` before it ran.
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
    guard: GuardVerdict | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (for the CLI, the server and the result's findings)."""
        guard = self.guard.to_dict() if self.guard is not None else {}
        return {"adapted": self.adapted, "message": self.message, **guard,
                "heldout_psnr_pretrained": _round(self.pretrained_psnr), "heldout_psnr_adapted": _round(self.best_psnr),
                "heldout_psnr_linear": _round(self.linear_psnr), "steps": self.steps, "best_step": self.best_step,
                "seconds": round(self.seconds, 2), "stopped_by": self.stopped_by,
                "profile": self.settings.get("profile"),
                "history": [[s, _round(p)] for s, p in self.history]}


def _round(value: float) -> float | None:
    return round(float(value), 3) if math.isfinite(value) else None


@dataclass(frozen=True)
class GuardVerdict:
    """The guard's decision and the two signals it rests on.

    Attributes:
        adapted: True when the adapted weights may be used.
        reason: one line saying which rule decided, with the numbers.
        heldout_pretrained_db, heldout_adapted_db: held-out in-plane pair PSNR (dB) of each network.
        consistency_pretrained_hu, consistency_adapted_hu: data-consistency RMSE (HU, inside the body) of
            each network's raw output on the probe sub-volume (NaN: not measured).
        consistency_limit_hu: the largest adapted RMSE the rule accepts.
    """

    adapted: bool
    reason: str
    heldout_pretrained_db: float
    heldout_adapted_db: float
    consistency_pretrained_hu: float
    consistency_adapted_hu: float
    consistency_limit_hu: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields for the adaptation summary (``guard`` is the reason)."""
        return {"guard": self.reason, "consistency_rmse_pretrained_hu": _round(self.consistency_pretrained_hu),
                "consistency_rmse_adapted_hu": _round(self.consistency_adapted_hu),
                "consistency_limit_hu": _round(self.consistency_limit_hu)}


def guard_verdict(heldout_pretrained: float, heldout_adapted: float, consistency_pretrained: float,
                  consistency_adapted: float, min_gain_db: float = 0.0,
                  tolerance: float = CONSISTENCY_TOLERANCE) -> GuardVerdict:
    """Decide whether adapted weights may replace the pretrained ones: BOTH signals must agree.

    Args:
        heldout_pretrained, heldout_adapted: held-out in-plane pair PSNR in dB (NaN: no finite score).
        consistency_pretrained, consistency_adapted: raw-output data-consistency RMSE in HU (NaN: not
            measured; a probe without body voxels leaves the decision to the held-out pairs).
        min_gain_db: the adapted PSNR must exceed the pretrained one by more than this.
        tolerance: the adapted RMSE may exceed the pretrained one by at most this fraction of it.

    Returns:
        The verdict with both signals and the reason.
    """
    limit = consistency_pretrained * (1.0 + tolerance)
    pairs = f"held-out in-plane PSNR {heldout_pretrained:.2f} -> {heldout_adapted:.2f} dB"
    dc = (f"data-consistency RMSE of the raw output {consistency_pretrained:.2f} -> {consistency_adapted:.2f} HU "
          f"(limit {limit:.2f})")
    if not (math.isfinite(heldout_adapted) and heldout_adapted > heldout_pretrained + min_gain_db):
        adapted, reason = False, f"refused: the held-out pairs did not improve by more than {min_gain_db:g} dB"
    elif not math.isfinite(consistency_pretrained):
        adapted, reason = True, "accepted on the held-out pairs alone: no body voxels to measure data consistency"
    elif not (math.isfinite(consistency_adapted) and consistency_adapted <= limit):
        adapted, reason = False, "refused: the adapted network reproduces the acquired slabs worse"
    else:
        adapted, reason = True, "accepted: held-out pairs better and data consistency no worse"
    return GuardVerdict(adapted, f"{reason} ({pairs}; {dc})", heldout_pretrained, heldout_adapted,
                        consistency_pretrained, consistency_adapted, limit)


@dataclass(frozen=True)
class ConsistencyProbe:
    """The data-consistency signal of the guard: a bounded sub-volume of the scan, enhanced without the
    projection, degraded again with the slab profile and compared with its acquired slabs.

    Attributes:
        volume: the sub-volume (a band of slabs in the middle of the stack, centred on the body in-plane).
        options: enhancement settings of the probe (target spacing, thickness, profile, consistency off).
    """

    volume: Volume
    options: EnhanceOptions

    @classmethod
    def of_scan(cls, volume: Volume, model: str, target_spacing: float, thickness: float, profile: str,
                device: torch.device, max_inplane: int = 96, max_slabs: int = 16) -> ConsistencyProbe:
        """The probe of ``volume``: at most ``max_slabs`` middle slabs, ``max_inplane`` rows and columns."""
        start = max(0, (volume.shape[0] - max_slabs) // 2)
        band = volume.replace(array=volume.array[start:start + max_slabs],
                              origin=tuple(float(v) for v in volume.index_to_physical([0, 0, start])))
        options = EnhanceOptions(target_spacing=target_spacing, model=model, input_thickness=thickness,
                                 input_profile=profile, consistency=False, device=device.type)
        return cls(body_crop(band, max_inplane), options)

    def rmse(self, net: nn.Module) -> float:
        """RMSE (HU, slabs > -500 HU) between the acquired slabs and the re-degraded raw output of ``net``."""
        with torch.no_grad():
            _, details = enhance_detailed(self.volume, self.options, net=net.eval())
        value = details["data_consistency"]["rmse_before_hu"]
        return math.nan if value is None else float(value)


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
    d = task.degradation
    probe = ConsistencyProbe.of_scan(volume, spec.name, target_spacing, d.thickness, d.profile, device,
                                     options.probe_inplane, options.probe_slabs)
    pretrained = load_network(spec, device)
    probe_started = time.perf_counter()
    consistency_pretrained = probe.rmse(pretrained)
    probe_seconds = time.perf_counter() - probe_started  # the adapted network's probe costs the same: reserved
    trainer = Trainer(task, None, DistInfo(), device, to_dict(cfg))
    trainer.setup()
    tracker = _Tracker(trainer, options, started, report)
    baseline = trainer.validate()
    pretrained_psnr, linear_psnr = baseline["psnr"], baseline["linear_psnr"]
    tracker.on_validation(0, baseline)
    deadline = None if options.seconds is None else started + options.seconds - probe_seconds
    trainer.fit(control=FitControl(deadline=deadline, on_step=tracker.on_step, on_validation=tracker.on_validation))
    stopped_by = ("time" if deadline is not None and time.perf_counter() >= deadline else
                  "steps" if trainer.step >= options.steps else "early stopping")
    result = _choose(trainer, tracker, spec, options, (pretrained, pretrained_psnr, consistency_pretrained), probe)
    result.linear_psnr = linear_psnr
    result.seconds, result.stopped_by = time.perf_counter() - started, stopped_by
    result.settings = {**task.settings(), "options": _options_dict(options),
                       "consistency_probe": {"shape_zyx": list(probe.volume.shape),
                                             "seconds_each": round(probe_seconds, 2)}}
    (log.info if result.adapted else log.warning)("%s", result.message)
    if options.save_path is not None:
        save_adapted(result, spec, options.save_path)
    report(1.0, "adapting")
    return result


def _choose(trainer: Trainer, tracker: _Tracker, spec: ModelSpec, options: AdaptOptions,
            pretrained: tuple[nn.Module, float, float], probe: ConsistencyProbe) -> AdaptResult:
    """Apply the guard (:func:`guard_verdict`): the best adapted weights when both signals allow, else the
    pretrained network ``(net, held-out PSNR, consistency RMSE)``."""
    pretrained_net, pretrained_psnr, consistency_pretrained = pretrained
    best, consistency_adapted = math.nan, math.nan
    if tracker.best_state is not None:
        best = tracker.best_psnr
        trainer.val_net.load_state_dict(tracker.best_state)
        consistency_adapted = probe.rmse(trainer.val_net)
    verdict = guard_verdict(pretrained_psnr, best, consistency_pretrained, consistency_adapted,
                            options.min_gain_db, options.consistency_tolerance)
    if verdict.adapted:
        net = trainer.val_net
        message = f"adapted to this scan (step {tracker.best_step} of {trainer.step}): {verdict.reason}"
    else:
        net = pretrained_net
        message = (f"adaptation {verdict.reason} after {trainer.step} steps; kept the pretrained model {spec.name}")
    return AdaptResult(net=net.eval(), adapted=verdict.adapted, message=message, pretrained_psnr=pretrained_psnr,
                       best_psnr=best, linear_psnr=math.nan, steps=trainer.step,
                       best_step=tracker.best_step if verdict.adapted else 0, seconds=0.0, stopped_by="",
                       history=list(tracker.history), guard=verdict)


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
