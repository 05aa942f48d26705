"""The terminal client in a ``qt.QProcess``: the GUI thread never waits for it and never needs a Python thread.

Qt reads the child's output in C++; the module's timer calls :meth:`QtClientProcess.poll` to hand
it to a :class:`~CTEnhanceLib.process.ClientRun` (progress lines, result, error line). Cancel
kills the child. The access token reaches the child in its environment only.
"""
from __future__ import annotations

import qt

from CTEnhanceLib.errors import ClientError
from CTEnhanceLib.process import ClientCommand, ClientRun
from CTEnhanceLib.progress import Progress


class QtClientProcess:
    """One client process (see the module docstring); started on construction."""

    def __init__(self, command: ClientCommand) -> None:
        self.run = ClientRun(command)
        self.exitCode: int | None = None
        self._failedToStart = False
        self._process = qt.QProcess()
        environment = qt.QProcessEnvironment()
        for key, value in command.environment.items():
            environment.insert(key, value)
        self._process.setProcessEnvironment(environment)
        self._process.start(command.program, list(command.arguments))

    @property
    def progress(self) -> Progress:
        return self.run.progress

    def poll(self) -> bool:
        """Take the output so far; whether the process has ended."""
        self.run.stdout(_text(self._process.readAllStandardOutput()))
        self.run.stderr(_text(self._process.readAllStandardError()))
        if self._process.state() != qt.QProcess.NotRunning:
            return False
        if self.exitCode is None:
            self._failedToStart = self._process.error() == qt.QProcess.FailedToStart
            crashed = self._process.exitStatus() != qt.QProcess.NormalExit
            self.exitCode = -1 if self._failedToStart or crashed else int(self._process.exitCode())
        return True

    def cancel(self) -> None:
        """End the process now (the server is not told; it finishes and discards the result)."""
        self.run.cancel()
        self._process.kill()

    def result(self) -> dict:
        """The client's result record.

        Raises:
            Cancelled: cancelled.
            ClientError: the process failed or could not start.
        """
        if self._failedToStart:
            raise ClientError(f"The client could not be started ({self.run.command.program}: "
                              f"{self._process.errorString()}).")
        return self.run.finish(-1 if self.exitCode is None else self.exitCode)


def _text(data) -> str:
    """The text of a ``QByteArray`` as PythonQt returns it."""
    raw = data.data() if hasattr(data, "data") else data
    if isinstance(raw, str):
        return raw
    return bytes(raw).decode("utf-8", "replace")
