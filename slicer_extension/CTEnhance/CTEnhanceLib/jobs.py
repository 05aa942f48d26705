"""Run a client call on a worker thread and let a GUI poll it.

In Slicer the GUI thread owns the MRML scene and the widgets, so a network call must run elsewhere
and must not touch either. :class:`BackgroundJob` runs ``work(progress, cancel)`` on a daemon thread;
the GUI polls :attr:`~BackgroundJob.progress` and :attr:`~BackgroundJob.done` from a timer, calls
:meth:`~BackgroundJob.cancel` from a button, and takes :meth:`~BackgroundJob.result` (or the error)
on its own thread once the job is done.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from .progress import Cancel, Progress, ProgressCallback, Stage

log = logging.getLogger(__name__)

T = TypeVar("T")


class BackgroundJob(Generic[T]):
    """One call of ``work(progress, cancel)`` on a daemon thread.

    Args:
        work: the call; it reports through ``progress`` and stops when ``cancel`` is cancelled.
        name: the thread's name (for logs).
    """

    def __init__(self, work: Callable[[ProgressCallback, Cancel], T], name: str = "CTEnhance") -> None:
        self._work = work
        self._cancel = Cancel()
        self._lock = threading.Lock()
        self._progress = Progress(Stage.CONNECT)
        self._result: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> BackgroundJob[T]:
        """Start the thread; returns ``self``."""
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the call to stop (it ends with :class:`~CTEnhanceLib.errors.Cancelled`)."""
        self._cancel.cancel()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.cancelled

    @property
    def done(self) -> bool:
        """Whether the call has returned or raised."""
        return self._thread.ident is not None and not self._thread.is_alive()

    @property
    def progress(self) -> Progress:
        """The latest progress report."""
        with self._lock:
            return self._progress

    @property
    def error(self) -> BaseException | None:
        """What the call raised (``None`` while running or after success)."""
        return self._error if self.done else None

    def result(self) -> T:
        """The call's return value.

        Raises:
            RuntimeError: the job is still running.
            BaseException: whatever the call raised.
        """
        if not self.done:
            raise RuntimeError("the job is still running")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is done or ``timeout`` seconds passed; whether it is done."""
        self._thread.join(timeout)
        return self.done

    def _report(self, progress: Progress) -> None:
        with self._lock:
            self._progress = progress

    def _run(self) -> None:
        try:
            self._result = self._work(self._report, self._cancel)
        except BaseException as exc:  # noqa: BLE001 - handed to the GUI thread by result()
            log.debug("%s ended with %s: %s", self._thread.name, type(exc).__name__, exc)
            self._error = exc
