"""Where a client call is, and how another thread stops it.

A call reports :class:`Progress` (stage, bytes done and total) to a callback; a :class:`Cancel`
shared with another thread (a GUI button) stops it: the call checks it between chunks, and
:meth:`Cancel.cancel` shuts the call's socket down, which also ends a blocked wait for the server.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum

from .errors import CANCELLED_MESSAGE, Cancelled


class Stage(str, Enum):
    """Where a call is."""

    CONNECT = "connect"
    UPLOAD = "upload"
    INFERENCE = "inference"
    DOWNLOAD = "download"
    DONE = "done"


@dataclass(frozen=True)
class Progress:
    """A progress report.

    Attributes:
        stage: the current stage.
        done: bytes sent (upload) or received (download) so far.
        total: bytes expected in this stage (0: unknown or not applicable).
        since: ``time.monotonic()`` when the stage began.
    """

    stage: Stage
    done: int = 0
    total: int = 0
    since: float = field(default_factory=time.monotonic)

    @property
    def fraction(self) -> float | None:
        """``done / total`` in [0, 1], or ``None`` when the total is unknown (e.g. while the server works)."""
        return min(1.0, self.done / self.total) if self.total > 0 else None

    def describe(self, now: float | None = None) -> str:
        """One line for a status bar, e.g. ``Uploading: 12.0 of 70.1 MB``."""
        elapsed = max(0.0, (time.monotonic() if now is None else now) - self.since)
        amount = f"{_mb(self.done)} of {_mb(self.total)} MB" if self.total else f"{_mb(self.done)} MB"
        return {
            Stage.CONNECT: "Connecting to the server",
            Stage.UPLOAD: f"Uploading: {amount}",
            Stage.INFERENCE: f"Inference on the server (queued or running): {elapsed:.0f} s",
            Stage.DOWNLOAD: f"Downloading the result: {amount}",
            Stage.DONE: "Done",
        }[self.stage]


ProgressCallback = Callable[[Progress], None]


class Reporter:
    """Sends :class:`Progress` to a callback (if any), keeping each stage's start time."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._stage: Stage | None = None
        self._since = time.monotonic()

    def __call__(self, stage: Stage, done: int = 0, total: int = 0) -> None:
        if stage is not self._stage:
            self._stage, self._since = stage, time.monotonic()
        if self._callback is not None:
            self._callback(Progress(stage, done, total, self._since))


class Heartbeat:
    """Passes each report on to ``sink``, and repeats the latest one every ``interval_s`` seconds while no
    new report comes (the server's inference sends none), so a person or a GUI sees the time go by.

    ``sink(progress, repeat)`` is called from the reporting thread (``repeat=False``) and from the
    heartbeat's own thread (``repeat=True``), never both at once. Use it as a context manager: the
    heartbeat thread runs inside the ``with`` block.
    """

    def __init__(self, sink: Callable[[Progress, bool], None], interval_s: float = 5.0) -> None:
        if not interval_s > 0:
            raise ValueError(f"the heartbeat interval must be positive, got {interval_s}")
        self._sink = sink
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._latest: Progress | None = None
        self._last_sent = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="CTEnhance heartbeat", daemon=True)

    def __call__(self, progress: Progress) -> None:
        with self._lock:
            self._latest, self._last_sent = progress, time.monotonic()
            self._sink(progress, False)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(min(0.5, self._interval_s / 4)):
            with self._lock:
                if self._latest is not None and time.monotonic() - self._last_sent >= self._interval_s:
                    self._last_sent = time.monotonic()
                    self._sink(self._latest, True)


class Cancel:
    """Cancels a running call from any thread."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None

    def cancel(self) -> None:
        """Stop the call now; safe to call at any time, more than once, from any thread."""
        self._event.set()
        with self._lock:
            if self._socket is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(self._socket, socket.SHUT_RDWR)  # wakes a blocked recv/send

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`~CTEnhanceLib.errors.Cancelled` if :meth:`cancel` was called."""
        if self._event.is_set():
            raise Cancelled(CANCELLED_MESSAGE)

    @contextlib.contextmanager
    def watching(self, sock: socket.socket) -> Iterator[None]:
        """Let :meth:`cancel` shut ``sock`` down while the block runs (and never after it)."""
        with self._lock:
            self._socket = sock
        try:
            if self._event.is_set():
                self.cancel()
            yield
        finally:
            with self._lock:
                self._socket = None


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f}"
