"""Train a model: ``python -m train TASK --config YAML [--out DIR] [--resume CKPT] [key=value ...]``.

The same command runs under ``torchrun --nproc_per_node=N -m train ...`` (one process per GPU, or N CPU
processes with gloo). Bad input stops every process with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ctsr_models.io import InputError
from ctsr_models.training import TASKS, ConfigError, dump_yaml, get_task, run
from ctsr_models.training.reporting import json_safe
from ctsr_models.training.runner import read_resume, resolve_config

EXIT_BAD_INPUT = 2

EPILOG = """examples:
  python -m train sr --config train/configs/sr_smoke.yaml --out runs/smoke
  python -m train sr --config train/configs/sr.yaml trainer.lr=3e-4 data.patch_size=[32,96,96]
  torchrun --standalone --nproc_per_node=8 -m train sr --config train/configs/sr.yaml --out runs/sr8
  python -m train sr --resume runs/sr8/checkpoints/last.pt
Relative paths in a YAML file are resolved against the repository holding it; see docs/training.md."""


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=sorted(TASKS), help="what to train")
    p.add_argument("--config", help="YAML config (optional with --resume: the checkpoint's config is used)")
    p.add_argument("--out", help="run folder (default: the resumed run's, or runs/TASK/CONFIG_NAME)")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint (e.g. RUN/checkpoints/last.pt)")
    p.add_argument("--stop-at", type=int, metavar="STEP",
                   help="stop after this step with a checkpoint (e.g. a job time limit); --resume continues")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--debug", action="store_true", help="debug logs and full tracebacks")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. trainer.lr=3e-4")
    return p


def _rank() -> int:
    text = os.environ.get("RANK", "0")
    return int(text) if text.isdigit() else 0


def _setup_logging(debug: bool) -> None:
    rank = _rank()
    level = logging.DEBUG if debug else (logging.INFO if rank == 0 else logging.WARNING)
    fmt = "%(asctime)s %(levelname)s %(message)s" if rank == 0 else f"[rank {rank}] %(levelname)s %(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("PIL").setLevel(logging.WARNING)


def _error_line(line: str) -> None:
    """Write one short line with a single ``write()`` (atomic on a pipe, so torchrun ranks sharing stderr
    never interleave their lines); through ``sys.stderr`` when it has no file descriptor (captured)."""
    sys.stderr.flush()
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        sys.stderr.write(line)
        return
    os.write(fd, line.encode())


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = parser().parse_intermixed_args(argv)
    _setup_logging(args.debug)
    try:
        if args.print_config:
            state = read_resume(args.task, args.resume)
            print(dump_yaml(resolve_config(get_task(args.task), args.config, state, args.overrides)), end="")
            return 0
        summary = run(args.task, args.config, args.out, args.resume, args.overrides, args.stop_at)
    except (ConfigError, InputError) as exc:
        if args.debug:
            raise
        _error_line(f"error: {exc}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if _rank() == 0:
        keys = ("step", "samples_per_s", "mfu", "val", "checkpoint")
        print(json.dumps(json_safe({k: summary.get(k) for k in keys}), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
