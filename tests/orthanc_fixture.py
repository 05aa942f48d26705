"""A real Orthanc PACS with its DICOMweb plugin for tests, started and always stopped by ``.ci/orthanc``.

Usage::

    from orthanc_fixture import running_orthanc
    with running_orthanc() as pacs:       # skips the test when Orthanc cannot be installed
        pacs.upload(paths)                # Orthanc's REST API, independent of the code under test
        pacs.client.search_for_series(...)  # DICOMweb (QIDO-RS/WADO-RS) through dicomweb-client
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from server_fixture import free_port

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "orthanc"
INSTALL_TIMEOUT_S = 600
START_TIMEOUT_S = 120
CANNOT_INSTALL = 3
"""Exit status of ``.ci/orthanc install`` when Orthanc is missing and cannot be installed here."""


@dataclass
class Orthanc:
    """A running Orthanc.

    Attributes:
        dicomweb: DICOMweb root, e.g. ``http://127.0.0.1:PORT/dicom-web`` (what ``--studies`` takes).
        rest: Orthanc's own REST root, ``http://127.0.0.1:PORT``.
        folder: its configuration, storage and log.
        client: a DICOMweb client of ``dicomweb``.
    """

    dicomweb: str
    rest: str
    folder: Path
    client: DICOMwebClient

    def upload(self, paths: Iterable[Path]) -> int:
        """Store DICOM files through Orthanc's REST ``POST /instances``; the number stored."""
        count = 0
        for path in paths:
            response = requests.post(f"{self.rest}/instances", data=path.read_bytes(), timeout=60)
            response.raise_for_status()
            count += 1
        return count

    def log_text(self) -> str:
        return (self.folder / "orthanc.log").read_text(errors="replace")


def _script(*args: str, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


@contextlib.contextmanager
def running_orthanc() -> Iterator[Orthanc]:
    """Install Orthanc if needed, start it on a free loopback port in a new temporary folder, stop it on exit.

    Skips the calling test (with the script's reason) only when Orthanc cannot be installed.

    Raises:
        RuntimeError: Orthanc is installed but did not start (the message ends with its log).
    """
    installed = _script("install", timeout=INSTALL_TIMEOUT_S)
    if installed.returncode == CANNOT_INSTALL:
        pytest.skip(f"Orthanc cannot be installed here: {installed.stderr.strip().splitlines()[-1]}")
    if installed.returncode != 0:
        raise RuntimeError(f".ci/orthanc install failed ({installed.returncode}): {installed.stderr[-2000:]}")
    folder = Path(tempfile.mkdtemp(prefix="ctsr_orthanc_"))
    try:
        port = free_port()
        started = _script("start", str(folder), timeout=START_TIMEOUT_S, env={"CTSR_ORTHANC_PORT": str(port)})
        if started.returncode != 0:
            raise RuntimeError(f"Orthanc did not start ({started.returncode}): {started.stderr[-2000:]}")
        url = started.stdout.strip().splitlines()[-1]
        yield Orthanc(dicomweb=url, rest=f"http://127.0.0.1:{port}", folder=folder, client=DICOMwebClient(url))
    finally:
        _script("stop", str(folder), timeout=START_TIMEOUT_S)
        shutil.rmtree(folder, ignore_errors=True)
