"""Start a training run: config, checks and data before any process group, then the trainer.

Everything that can fail because of the user's input (unknown task, bad config keys or values,
missing data folders, empty datasets, unreadable scans, a run folder that already holds a run) fails
here, on every rank, before ``init_process_group``: each process stops with the same one-line error
and nothing waits on a collective that will never come.
"""
from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctsr_models.io.atomic import atomic_file

from . import distributed as dist
from .checkpoint import load_checkpoint
from .config import ConfigError, build_config, dump_yaml, load_config, to_dict
from .optim import amp_dtype
from .tasks import Task, get_task
from .trainer import Trainer

log = logging.getLogger(__name__)


def resolve_config(task_cls: type[Task], config: str | Path | None, state: dict[str, Any] | None,
                   overrides: Sequence[str]) -> Any:
    """The run's config: the YAML file when given, else the resumed checkpoint's, plus the overrides.

    Raises:
        ConfigError: neither a config nor a checkpoint, or any bad key or value.
    """
    if config is not None:
        return load_config(task_cls.config_class, config, overrides)
    if state is None:
        raise ConfigError("give --config (or --resume a checkpoint, whose config is then used)")
    return build_config(task_cls.config_class, state["config"], None, overrides)


def read_resume(task_name: str, resume: str | Path | None) -> dict[str, Any] | None:
    """The checkpoint to resume from (``None`` without one).

    Raises:
        ConfigError: missing or unreadable file, or a checkpoint of another task.
    """
    if resume is None:
        return None
    try:
        state = load_checkpoint(resume)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if state.get("task") != task_name:
        raise ConfigError(f"{Path(resume).name} is a checkpoint of task {state.get('task')!r}, not {task_name!r}")
    return state


def run_folder(task_name: str, config: str | Path | None, out: str | Path | None, resume: str | Path | None) -> Path:
    """Where the run writes: ``--out``, else the resumed run's folder, else ``runs/<task>/<config name>``.

    Raises:
        ConfigError: a fresh run (no ``--resume``) aimed at a folder that already holds a run.
    """
    if out is not None:
        folder = Path(out)
    elif resume is not None:
        ckpt = Path(resume).resolve()
        folder = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    else:
        folder = Path("runs") / task_name / (Path(config).stem if config else "run")
    folder = folder.resolve()
    if resume is None and (folder / "checkpoints" / "last.pt").exists():
        raise ConfigError(f"{folder} already holds a run: pass --resume {folder / 'checkpoints' / 'last.pt'} "
                          f"to continue it, or choose another --out")
    return folder


def _check_steps(state: dict[str, Any] | None, steps: int, stop_at: int | None) -> None:
    done = 0 if state is None else int(state["step"])
    if done >= steps:
        raise ConfigError(f"the checkpoint has already done all {steps} steps; pass trainer.steps=N with N > {done} "
                          f"to train longer")
    if stop_at is not None and stop_at <= done:
        raise ConfigError(f"--stop-at {stop_at} must be after the checkpoint's step {done}")


def _start_outputs(run_dir: Path, cfg: Any) -> logging.Handler:
    """Rank 0: the run folder, ``config.yaml`` (resolved) and a ``train.log`` beside the console."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(run_dir / "config.yaml") as tmp:
        tmp.write_text(dump_yaml(cfg))
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def run(task_name: str, config: str | Path | None = None, out: str | Path | None = None,
        resume: str | Path | None = None, overrides: Sequence[str] = (), stop_at: int | None = None) -> dict[str, Any]:
    """Train a task as one process or as one rank of a ``torchrun`` job.

    Args:
        task_name: registered task (``"sr"``).
        config: YAML config; optional when resuming (the checkpoint's config is used).
        out: run folder (default: the resumed run's folder, or ``runs/<task>/<config name>``).
        resume: checkpoint to continue from (``.../checkpoints/last.pt``).
        overrides: ``key=value`` config overrides.
        stop_at: stop after this step with a checkpoint (e.g. to fit a job's time limit).

    Returns:
        The run summary (the content of ``summary.json``).

    Raises:
        ConfigError, InputError: bad input, raised before any process group starts.
    """
    info = dist.detect()
    task_cls = get_task(task_name)
    state = read_resume(task_name, resume)
    cfg = resolve_config(task_cls, config, state, overrides)
    run_dir = run_folder(task_name, config, out, resume)
    _check_steps(state, cfg.trainer.steps, stop_at)
    task = task_cls(cfg)
    task.check()
    task.prepare()
    device = dist.pick_device(cfg.trainer.device, info)
    amp_dtype(cfg.trainer.amp, device)
    dist.init(info, device)
    handler, trainer = None, None
    try:
        if info.is_main:
            handler = _start_outputs(run_dir, cfg)
        log.info("run folder %s; %d process(es) on %s", run_dir, info.world_size, device)
        trainer = Trainer(task, run_dir, info, device, to_dict(cfg))
        trainer.setup(state)
        summary = trainer.fit(stop_at)
        dist.barrier()  # every rank is done with the group before it goes
        return summary
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        # DDP's reducer holds the process group: free it first, or its destructor can wait forever
        # on gloo threads after the group (and the other ranks) are gone.
        del trainer
        gc.collect()
        dist.destroy()
