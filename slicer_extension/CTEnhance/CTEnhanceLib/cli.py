"""The client from a terminal: ``python -m CTEnhanceLib.client [options] {info,enhance} ...``.

Run it from ``slicer_extension/CTEnhance`` (or with that folder on ``PYTHONPATH``); it needs only the
standard library. ``info`` prints the server's image-output tasks as JSON; ``enhance IN OUT`` uploads
``IN`` (a NIfTI/NRRD/MHA file, a ZIP of a DICOM series, or a DICOM folder), runs the task and writes
``OUT``, then prints one JSON line. Progress goes to stderr (``--quiet`` silences it). On any
failure it prints one line, ``<prog>: error: <what to do>``, on stderr and exits with status 2;
Ctrl-C cancels and exits with 130.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence

from CTEnhanceLib.client import Client, ClientError, Progress, Timeouts, server_url_warnings
from CTEnhanceLib.tasks import SR_TASK

PROG = "python -m CTEnhanceLib.client"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line in one line, like every other failure."""

    def error(self, message: str) -> None:  # type: ignore[override]
        _say(f"{PROG}: error: {message}")
        raise SystemExit(EXIT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Client of the CT Enhance MONAI Label server.")
    parser.add_argument("--server", default="http://127.0.0.1:8000", help="server URL (default %(default)s)")
    parser.add_argument("--connect-timeout", type=_seconds, default=10.0, metavar="S",
                        help="seconds to wait for the connection (default %(default)g)")
    parser.add_argument("--read-timeout", type=_seconds, default=3600.0, metavar="S",
                        help="seconds to wait for the server's answer, inference included (default %(default)g)")
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--ca-bundle", metavar="PEM", help="check the server's HTTPS certificate against this CA bundle")
    tls.add_argument("--insecure", action="store_true", help="do not check the HTTPS certificate (not advised)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="list the server's image-output tasks")
    enhance = commands.add_parser("enhance", help="enhance a CT: upload IN, write the result to OUT")
    enhance.add_argument("input", metavar="IN", help="CT file (NIfTI, NRRD, MHA, DICOM ZIP) or DICOM folder")
    enhance.add_argument("output", metavar="OUT", help="result file: .nrrd, .nii, .nii.gz or .mha")
    enhance.add_argument("--target-spacing", type=_millimetres, metavar="MM", help="output slice spacing in mm")
    enhance.add_argument("--model", help="model name (default: the server's)")
    enhance.add_argument("--device", help="auto, cpu or cuda (default: the server's)")
    enhance.add_argument("--task", default=SR_TASK, help="infer task (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status (0, 2 on error, 130 on Ctrl-C)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        for warning in server_url_warnings(args.server):
            _say(f"{PROG}: warning: {warning}")
        client = Client(args.server, Timeouts(args.connect_timeout, args.read_timeout),
                        verify=False if args.insecure else args.ca_bundle or True)
        if args.command == "info":
            print(json.dumps([dataclasses.asdict(task) for task in client.tasks()], indent=2))
            return 0
        printer = None if args.quiet else _ProgressPrinter()
        result = client.enhance(args.input, args.output, args.target_spacing, args.model, args.device, args.task,
                                progress=printer)
        print(json.dumps(result.as_dict()))
        return 0
    except ClientError as exc:
        _say(f"{PROG}: error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _say(f"{PROG}: error: interrupted; nothing was written")
        return EXIT_INTERRUPTED


class _ProgressPrinter:
    """Prints a progress line on stderr at each stage change and every 10 % of an upload or download."""

    def __init__(self) -> None:
        self._last: tuple[str, int] = ("", -1)

    def __call__(self, progress: Progress) -> None:
        fraction = progress.fraction
        key = (progress.stage.value, int(fraction * 10) if fraction is not None else 0)
        if key != self._last:
            self._last = key
            _say(progress.describe())


def _say(line: str) -> None:
    sys.stderr.write(line.splitlines()[0] + "\n")
    sys.stderr.flush()


def _seconds(text: str) -> float:
    return _positive(text, "seconds")


def _millimetres(text: str) -> float:
    return _positive(text, "mm")


def _positive(text: str, unit: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of {unit}: {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number of {unit}: {text!r}")
    return value
