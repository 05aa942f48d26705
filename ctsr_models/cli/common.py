"""What every console script shares: logging set-up, input options, and one-line errors."""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ctsr_models.io.errors import InputError
from ctsr_models.io.output_check import OutputKind, check_output

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


def check_output_path(out: str | Path, kind: OutputKind = "volume", overwrite: bool = False) -> None:
    """Refuse an unwritable output or unknown format before any work (see :mod:`ctsr_models.io.output_check`)."""
    check_output(out, kind, overwrite)


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
    if not isinstance(sys.stderr, _LineTracker):
        sys.stderr = _LineTracker(sys.stderr)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    logging.captureWarnings(True)  # library warnings (pydicom's UserWarning...) as one log line each
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
    """Write the error as the last line of stderr: after a half-drawn progress bar's line, and with
    nothing (warnings, log lines) after it."""
    if args.debug:
        log.exception("failed")
    line = f"{parser_prog()}: error: {message.splitlines()[0] if message else 'failed'}\n"
    for bar in list(getattr(tqdm, "_instances", ())):  # bars left open would redraw after the error at exit
        bar.close()
    stream = sys.stderr
    if isinstance(stream, _LineTracker) and not stream.at_line_start:
        line = "\n" + line
    stream.write(line)
    stream.flush()
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")


class _LineTracker:
    """A text stream wrapper that remembers whether the last character written ended a line.

    Progress bars redraw their line with ``\\r`` and no newline; an error written after one would
    share its line. :func:`_fail` starts a new line when needed.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.at_line_start = True

    def write(self, text: str) -> int:
        if text:
            self.at_line_start = text.endswith("\n")
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def parser_prog() -> str:
    """The program name as the user typed it."""
    return Path(sys.argv[0]).name or "ctsr"
