"""The terminal client as a child process: its command line, its progress lines, and how a run ends.

Why a process: inside Slicer, PythonQt keeps the Python lock (GIL) on the GUI thread while Qt's
event loop sits idle, so a Python worker thread runs only in the moments the GUI thread executes
Python (e.g. a 200 ms progress timer). A network transfer on such a thread crawls (a few MB/s). The
client in a separate process has its own interpreter and lock and moves data at network speed; the
GUI only reads short progress lines from its stdout (``qt.QProcess`` does the reading in C++).

The line protocol (``python -m CTEnhanceLib.client --progress-json ...``): one JSON object per line
on stdout.

* progress: ``{"stage": "upload", "done": 1048576, "total": 73400320, "stage_s": 0.4, "elapsed_s": 1.2}``
  (``stage`` is a :class:`~CTEnhanceLib.progress.Stage` value; bytes; seconds since the stage and
  since the call began). Sent at each stage change, every 1 % of a transfer, and at least every
  ``--progress-interval`` seconds (default 5) while the server works.
* result (last line, exit status 0): :meth:`~CTEnhanceLib.client.InferResult.as_dict`, which has
  ``output`` (and ``uncertainty``, the file fetched beside it, for a diffusion model's result); for
  ``info``, the list of tasks (``dataclasses.asdict`` of each
  :class:`~CTEnhanceLib.tasks.TaskInfo`), read as ``{"tasks": [...]}``.
* failure: exit status 2 and one line ``<prog>: error: <sentence>`` on stderr; 130 when interrupted.

The access token travels in the environment variable :data:`TOKEN_ENV`, never on the command line.

:class:`ClientRun` is the part of a run that needs no process API (output parsing, outcome);
:class:`SubprocessClient` drives it with :mod:`subprocess` (POSIX: non-blocking pipes, polled like a
GUI timer would); the Slicer module drives the same :class:`ClientRun` with ``qt.QProcess``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import CANCELLED_MESSAGE, Cancelled, ClientError
from .progress import Progress, Stage

log = logging.getLogger(__name__)

CLI_MODULE = "CTEnhanceLib.client"
TOKEN_ENV = "CTENHANCE_API_TOKEN"
"""Environment variable that hands the server's access token to the client process."""
MODULE_DIR = Path(__file__).resolve().parents[1]
"""The folder that holds ``CTEnhanceLib`` (put on the child's ``PYTHONPATH``)."""
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 2, 130
ERROR_MARK = ": error: "
MAX_STDERR_CHARS = 64 * 1024


def python_executable() -> str:
    """The Python to run the client with: Slicer's ``PythonSlicer`` when present, else this interpreter.

    (Inside Slicer ``sys.executable`` is the Slicer application, which cannot run ``-m``.)
    """
    return shutil.which("PythonSlicer") or sys.executable


@dataclass(frozen=True)
class ClientCommand:
    """A client process to start.

    Attributes:
        program: the Python interpreter.
        arguments: its arguments (``-m CTEnhanceLib.client ...``).
        environment: the child's complete environment (token and ``PYTHONPATH`` included).
    """

    program: str
    arguments: tuple[str, ...]
    environment: dict[str, str] = field(repr=False)


def enhance_command(server_url: str, inputs: Mapping[str, str], output: str, task: str,
                    params: Mapping[str, Any] | None = None, read_timeout_s: float = 3600.0,
                    connect_timeout_s: float = 10.0, token: str = "", python: str | None = None,
                    base_environment: Mapping[str, str] | None = None) -> ClientCommand:
    """The command that runs ``task`` on ``inputs`` (``image``, optional ``label``) into ``output``.

    Args:
        server_url: the server.
        inputs: input key -> file path.
        output: the result file (``.nrrd``, ``.nii``, ``.nii.gz``, ``.mha``).
        task: the server task.
        params: task parameters, sent as the ``params`` JSON.
        read_timeout_s, connect_timeout_s: the client's timeouts in seconds.
        token: the server's access token ("" for none); passed in the environment only.
        python: the interpreter (default :func:`python_executable`).
        base_environment: the environment to extend (default ``os.environ``).

    Raises:
        ValueError: no ``image`` input, or an input key other than ``image``/``label``.
    """
    if "image" not in inputs or set(inputs) - {"image", "label"}:
        raise ValueError(f"the inputs must be 'image' and optionally 'label', not {sorted(inputs)}")
    arguments = ["-m", CLI_MODULE, "--server", server_url, "--read-timeout", f"{read_timeout_s:g}",
                 "--connect-timeout", f"{connect_timeout_s:g}", "--progress-json",
                 "enhance", str(inputs["image"]), str(output), "--task", task,
                 "--params", json.dumps(dict(params or {}))]
    if "label" in inputs:
        arguments += ["--label", str(inputs["label"])]
    return ClientCommand(python or python_executable(), tuple(arguments),
                         client_environment(token, base_environment))


def client_environment(token: str = "", base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ``base`` with ``CTEnhanceLib`` importable, unbuffered output, and the token."""
    environment = dict(os.environ if base is None else base)
    paths = [str(MODULE_DIR)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    environment["PYTHONUNBUFFERED"] = "1"
    environment["PYTHONIOENCODING"] = "utf-8"
    environment.pop(TOKEN_ENV, None)
    if token:
        environment[TOKEN_ENV] = token
    return environment


def info_command(server_url: str, token: str = "", timeout_s: float = 30.0, python: str | None = None,
                 base_environment: Mapping[str, str] | None = None) -> ClientCommand:
    """The command that reads the server's image-output tasks (``info``); token in the environment only."""
    arguments = ("-m", CLI_MODULE, "--server", server_url, "--connect-timeout", f"{timeout_s:g}", "--read-timeout",
                 f"{timeout_s:g}", "--progress-json", "info")
    return ClientCommand(python or python_executable(), arguments, client_environment(token, base_environment))


def progress_line(progress: Progress, started: float, now: float | None = None) -> str:
    """One protocol line (no newline) for ``progress``; ``started``: ``time.monotonic()`` at the call's start."""
    now = time.monotonic() if now is None else now
    return json.dumps({"stage": progress.stage.value, "done": progress.done, "total": progress.total,
                       "stage_s": round(max(0.0, now - progress.since), 2),
                       "elapsed_s": round(max(0.0, now - started), 2)})


def parse_progress(record: Mapping[str, Any], now: float | None = None) -> Progress:
    """The :class:`Progress` a protocol record describes (its stage start back-dated by ``stage_s``).

    Raises:
        ValueError: not a progress record.
    """
    try:
        stage = Stage(record["stage"])
        done, total = int(record.get("done", 0)), int(record.get("total", 0))
        stage_s = float(record.get("stage_s", 0.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a progress record: {record!r}") from exc
    return Progress(stage, done, total, (time.monotonic() if now is None else now) - stage_s)


class OutputReader:
    """Turns the client's stdout, fed in arbitrary pieces, into the latest progress and the result.

    Attributes:
        progress: the latest progress (connect until the first line).
        result: the result record once received, else ``None``.
        elapsed_s: the client's own elapsed time from its latest progress line.
        stage_started_s: stage -> the client's elapsed time at its first line of that stage (the
            client's clock, so transfer rates do not depend on how often the output is read).
    """

    def __init__(self) -> None:
        self.progress = Progress(Stage.CONNECT)
        self.result: dict[str, Any] | None = None
        self.elapsed_s = 0.0
        self.stage_started_s: dict[Stage, float] = {}
        self._partial = ""

    def feed(self, text: str) -> None:
        """Take the next piece of output (complete lines are parsed; the rest waits for more)."""
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._take(line.strip())

    def close(self) -> None:
        """The output ended: parse a last line that had no newline."""
        self._partial, last = "", self._partial.strip()
        self._take(last)

    def _take(self, line: str) -> None:
        if not line:
            return
        try:
            record = json.loads(line)
        except ValueError:
            log.debug("client output: %s", line)
            return
        if isinstance(record, list):  # ``info``: the task list
            self.result = {"tasks": record}
            return
        if not isinstance(record, dict):
            return
        if "stage" in record:
            with contextlib.suppress(ValueError):
                self.progress = parse_progress(record)
                self.elapsed_s = float(record.get("elapsed_s", self.elapsed_s))
                self.stage_started_s.setdefault(self.progress.stage, self.elapsed_s)
        elif "output" in record:
            self.result = record


def error_message(stderr: str, exit_code: int) -> str:
    """The one sentence for a failed client process: its own ``error:`` line, else its last stderr line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if ERROR_MARK in line:
            return line.split(ERROR_MARK, 1)[1]
    last = f": {lines[-1]}" if lines else ""
    return f"The client process ended with status {exit_code}{last}. The Python console has the details."


class ClientRun:
    """One client process's output and outcome, whatever runs the process.

    The runner feeds :meth:`stdout` and :meth:`stderr` as output arrives, calls :meth:`cancel` when
    the user cancels (after ending the process), and :meth:`finish` with the exit code.
    """

    def __init__(self, command: ClientCommand) -> None:
        self.command = command
        self.reader = OutputReader()
        self.cancelled = False
        self._stderr = ""

    @property
    def progress(self) -> Progress:
        return self.reader.progress

    def stdout(self, text: str) -> None:
        self.reader.feed(text)

    def stderr(self, text: str) -> None:
        self._stderr = (self._stderr + text)[-MAX_STDERR_CHARS:]

    def cancel(self) -> None:
        self.cancelled = True

    def finish(self, exit_code: int) -> dict[str, Any]:
        """The result record of a process that ended with ``exit_code``.

        Raises:
            Cancelled: the run was cancelled.
            ClientError: the process failed (its own one-line error) or said nothing.
        """
        self.reader.close()
        if self.cancelled:
            raise Cancelled(CANCELLED_MESSAGE)
        if exit_code != EXIT_OK:
            log.info("client process failed (%d): %s", exit_code, self._stderr[-2000:])
            raise ClientError(error_message(self._stderr, exit_code))
        if self.reader.result is None:
            raise ClientError("The client process ended without a result. The Python console has the details.")
        return self.reader.result


class SubprocessClient:
    """Runs a :class:`ClientRun` with :mod:`subprocess`; :meth:`poll` never blocks (call it from a timer).

    POSIX only (non-blocking pipes); Slicer uses ``qt.QProcess`` instead.
    """

    def __init__(self, command: ClientCommand) -> None:
        self.run = ClientRun(command)
        self._process = subprocess.Popen([command.program, *command.arguments], env=command.environment,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._streams = {self._process.stdout: self.run.stdout, self._process.stderr: self.run.stderr}
        for stream in self._streams:
            os.set_blocking(stream.fileno(), False)
        self.exit_code: int | None = None

    def poll(self) -> bool:
        """Read what the process wrote; whether it has ended (and its output is all read)."""
        for stream, sink in list(self._streams.items()):
            while True:
                try:
                    data = os.read(stream.fileno(), 1 << 16)
                except BlockingIOError:
                    break
                if not data:
                    stream.close()
                    del self._streams[stream]
                    break
                sink(data.decode("utf-8", "replace"))
        if self._streams:
            return False
        self.exit_code = self._process.wait()
        return True

    def cancel(self) -> None:
        """End the process now (the server is not told)."""
        self.run.cancel()
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()

    def wait(self, timeout_s: float, poll_s: float = 0.05) -> dict[str, Any]:
        """Poll until the process ends; its result (see :meth:`ClientRun.finish`).

        Raises:
            TimeoutError: it ran longer than ``timeout_s`` (it is ended).
        """
        deadline = time.monotonic() + timeout_s
        while not self.poll():
            if time.monotonic() > deadline:
                self.cancel()
                self._process.wait()
                raise TimeoutError(f"the client process ran longer than {timeout_s:g} s")
            time.sleep(poll_s)
        return self.run.finish(self.exit_code if self.exit_code is not None else -1)


class Phase(str, Enum):
    """Where the panel's Enhance is: idle, a request running, being cancelled, or its result loading."""

    IDLE = "idle"
    RUNNING = "running"
    CANCELLING = "cancelling"
    LOADING = "loading"


class EnhanceFlow:
    """The Enhance button's state machine: one request at a time, and none until the last result is loaded.

    ``start`` (idle → running) → ``cancel`` (→ cancelling) → ``ended`` (→ idle after a failure or a
    cancel, → loading after success) → ``loaded`` (→ idle).
    """

    def __init__(self) -> None:
        self.phase = Phase.IDLE

    @property
    def busy(self) -> bool:
        return self.phase is not Phase.IDLE

    def can_enhance(self, inputs_ready: bool) -> bool:
        """Whether Enhance may be clicked now."""
        return inputs_ready and self.phase is Phase.IDLE

    def start(self) -> None:
        self._move({Phase.IDLE}, Phase.RUNNING)

    def cancel(self) -> bool:
        """Ask to cancel; whether there was a running request to cancel."""
        if self.phase is not Phase.RUNNING:
            return False
        self.phase = Phase.CANCELLING
        return True

    def ended(self, success: bool) -> None:
        was_cancelled = self.phase is Phase.CANCELLING
        self._move({Phase.RUNNING, Phase.CANCELLING}, Phase.LOADING if success and not was_cancelled else Phase.IDLE)

    def loaded(self) -> None:
        self._move({Phase.LOADING}, Phase.IDLE)

    def _move(self, allowed: set[Phase], target: Phase) -> None:
        if self.phase not in allowed:
            raise RuntimeError(f"cannot go from {self.phase.value} to {target.value}")
        self.phase = target
