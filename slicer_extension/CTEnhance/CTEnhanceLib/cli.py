"""The client from a terminal: ``python -m CTEnhanceLib.client [options] {info,enhance} ...``.

Run it from ``slicer_extension/CTEnhance`` (or with that folder on ``PYTHONPATH``); it needs only the
standard library. ``info`` prints the server's image-output tasks as JSON; ``enhance IN OUT`` uploads
``IN`` (a NIfTI/NRRD/MHA file, a ZIP of a DICOM series, or a DICOM folder), runs the task and writes
``OUT``, then prints one JSON line. Progress goes to stderr with the elapsed time, at least every 5 s
while the server works (``--progress-interval``; ``--quiet`` silences it); ``--progress-json`` sends it
as JSON lines on stdout instead, for programs (the Slicer module; :mod:`CTEnhanceLib.process`). On any
failure it prints one line, ``<prog>: error: <what to do>``, on stderr and exits with status 2;
Ctrl-C cancels and exits with 130. A server that needs an API token gets it from ``--token-file PATH``
(a file holding the token), else from the environment variable ``CTENHANCE_API_TOKEN``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from CTEnhanceLib.client import TOKEN_ENV, Client, ClientError, Progress, Timeouts, server_url_warnings
from CTEnhanceLib.process import progress_line
from CTEnhanceLib.progress import Heartbeat
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
    parser.add_argument("--token-file", metavar="PATH",
                        help=f"file holding the server's API token (default: ${TOKEN_ENV}, else no token)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--progress-json", action="store_true",
                        help="progress as JSON lines on stdout, for programs (see CTEnhanceLib.process)")
    parser.add_argument("--progress-interval", type=_seconds, default=5.0, metavar="S",
                        help="repeat the progress (elapsed time) at least every S seconds while the server works "
                             "(default %(default)g)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="list the server's image-output tasks")
    enhance = commands.add_parser("enhance", help="enhance a CT: upload IN, write the result to OUT")
    enhance.add_argument("input", metavar="IN", help="CT file (NIfTI, NRRD, MHA, DICOM ZIP) or DICOM folder")
    enhance.add_argument("output", metavar="OUT", help="result file: .nrrd, .nii, .nii.gz or .mha")
    enhance.add_argument("--target-spacing", type=_millimetres, metavar="MM", help="output slice spacing in mm")
    enhance.add_argument("--model", help="model name (default: the server's)")
    enhance.add_argument("--device", help="auto, cpu or cuda (default: the server's)")
    enhance.add_argument("--task", default=SR_TASK, help="infer task (default %(default)s)")
    enhance.add_argument("--label", metavar="PATH", help="a second input image, for tasks that take two (xray_to_ct)")
    enhance.add_argument("--params", type=_json_object, default={}, metavar="JSON",
                         help="more task parameters as a JSON object, e.g. '{\"adapt\": true}'")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status (0, 2 on error, 130 on Ctrl-C)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        for warning in server_url_warnings(args.server):
            _say(f"{PROG}: warning: {warning}")
        client = Client(args.server, Timeouts(args.connect_timeout, args.read_timeout),
                        verify=False if args.insecure else args.ca_bundle or True, token=_token(args.token_file))
        if args.command == "info":
            tasks = [dataclasses.asdict(task) for task in client.tasks()]
            print(json.dumps(tasks, indent=None if args.progress_json else 2))
            return 0
        params = {**args.params, **{k: v for k, v in (("target_spacing", args.target_spacing), ("model", args.model),
                                                        ("device", args.device)) if v is not None}}
        inputs = {"image": args.input, **({"label": args.label} if args.label else {})}
        if args.quiet and not args.progress_json:
            result = client.infer(args.task, inputs, args.output, params)
        else:
            with Heartbeat(_ProgressPrinter(args.progress_json), args.progress_interval) as heartbeat:
                result = client.infer(args.task, inputs, args.output, params, progress=heartbeat)
        print(json.dumps(result.as_dict()), flush=True)
        return 0
    except ClientError as exc:
        _say(f"{PROG}: error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _say(f"{PROG}: error: interrupted; nothing was written")
        return EXIT_INTERRUPTED


class _ProgressPrinter:
    """Prints progress at each stage change, every 10 % of an upload or download (1 % as JSON), and at each
    heartbeat: one line on stderr (with the total elapsed time), or one JSON line on stdout."""

    def __init__(self, json_lines: bool = False) -> None:
        self._json = json_lines
        self._steps = 100 if json_lines else 10
        self._last: tuple[str, int] = ("", -1)
        self._started = time.monotonic()

    def __call__(self, progress: Progress, repeat: bool = False) -> None:
        fraction = progress.fraction
        key = (progress.stage.value, int(fraction * self._steps) if fraction is not None else 0)
        if key == self._last and not repeat:
            return
        self._last = key
        if self._json:
            sys.stdout.write(progress_line(progress, self._started) + "\n")
            sys.stdout.flush()
        else:
            _say(f"[{time.monotonic() - self._started:5.0f} s] {progress.describe()}")


def _token(path: str | None) -> str | None:
    """The API token from ``path``, else from ``$CTENHANCE_API_TOKEN``, else None."""
    if not path:
        return os.environ.get(TOKEN_ENV, "").strip() or None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"The token file {path} cannot be read ({getattr(exc, 'strerror', None) or exc}).") from None
    if not token:
        raise ClientError(f"The token file {path} is empty.")
    return token


def _say(line: str) -> None:
    sys.stderr.write(line.splitlines()[0] + "\n")
    sys.stderr.flush()


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object ({{...}}): {text!r}")
    return value


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
