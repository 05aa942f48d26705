"""What every console script shares: logging set-up, input options, and one-line errors."""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ctsr_models.io.errors import InputError

log = logging.getLogger("ctsr_models.cli")

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--debug`` (tracebacks and debug logs) and ``--quiet``."""
    parser.add_argument("--debug", action="store_true", help="show debug logs and full tracebacks")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")


def add_read_args(parser: argparse.ArgumentParser) -> None:
    """Options that control how an input volume is read."""
    group = parser.add_argument_group("reading the input")
    group.add_argument("--series-uid", help="SeriesInstanceUID to read when a folder or ZIP holds several series")
    group.add_argument("--resample-irregular", action="store_true",
                       help="resample a tilted or irregularly spaced DICOM series onto a regular grid "
                            "from its true slice positions (otherwise such a series is refused)")
    group.add_argument("--resample-spacing", type=positive_float, metavar="MM",
                       help="slice spacing of that regular grid (default: the median gap)")
    group.add_argument("--allow-non-ct", action="store_true", help="accept images that do not look like CT in HU")


def add_write_args(parser: argparse.ArgumentParser) -> None:
    """Options that control how the output volume is written."""
    parser.add_argument("--dtype", choices=("int16", "float32"), default="int16",
                        help="output voxel type of NIfTI/NRRD/MHA (default int16 HU; DICOM is always int16)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DICOM output folder")


def read_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword options of :func:`ctsr_models.io.read_volume` from parsed arguments."""
    return {
        "series_uid": args.series_uid,
        "resample_irregular": args.resample_irregular,
        "resample_spacing": args.resample_spacing,
        "allow_non_ct": args.allow_non_ct,
    }


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


def refuse_same_path(inp: str | Path, out: str | Path) -> None:
    """Inputs are never modified: refuse an output that is the input itself."""
    if Path(out).resolve() == Path(inp).resolve():
        raise InputError(f"output {Path(out).name} is the input; choose another output")


def print_json(data: dict[str, Any]) -> None:
    """The result of a command on stdout, as strict indented JSON (an infinite or undefined number,
    e.g. the PSNR of identical volumes, is written as the string ``"inf"`` or ``"nan"``)."""
    sys.stdout.write(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def run_cli(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
            argv: list[str] | None = None) -> int:
    """Parse ``argv``, run, and turn every failure into one line on stderr and an exit code.

    Exit codes: 0 done, 1 failed (disk, internal error), 2 bad input or arguments, 130 interrupted.
    """
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    try:
        return run(args)
    except KeyboardInterrupt:
        _fail(args, "interrupted; nothing was written")
        return EXIT_INTERRUPTED
    except (InputError, ValueError) as exc:
        _fail(args, str(exc))
        return EXIT_BAD_INPUT
    except MemoryError:
        _fail(args, "out of memory; try a smaller input or a machine with more RAM")
        return EXIT_FAILED
    except OSError as exc:
        _fail(args, f"{exc.strerror or exc}: {Path(exc.filename).name if exc.filename else ''}".rstrip(": "))
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - the last line of defence for a user-facing command
        _fail(args, f"internal error ({type(exc).__name__}: {exc}); run again with --debug for details")
        return EXIT_FAILED


def _fail(args: argparse.Namespace, message: str) -> None:
    if args.debug:
        log.exception("failed")
    sys.stderr.write(f"{parser_prog()}: error: {message.splitlines()[0] if message else 'failed'}\n")


def parser_prog() -> str:
    """The program name as the user typed it."""
    return Path(sys.argv[0]).name or "ctsr"
