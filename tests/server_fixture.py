"""Start the real MONAI Label server on a free loopback port, for tests of the server and its clients.

Usage::

    from server_fixture import running_server

    with running_server(studies_dir, env={"CTSR_WEIGHTS_DIR": str(models)}) as server:
        requests.get(server.url + "/info/", timeout=5)

The server runs ``.venv/bin/monailabel start_server --app monailabel_app`` (the command users run)
in its own process group; leaving the block stops that group (the server and every child it
started), whatever happened inside. Its log, its temporary files and its sessions stay inside a
folder of their own (``server.tmp``), so tests can check that nothing is left behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "monailabel_app"
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Server:
    """A running server.

    Attributes:
        url: base URL, e.g. ``http://127.0.0.1:40123`` (no trailing slash).
        process: the ``monailabel`` process (leader of its process group).
        log: the file receiving the server's stdout and stderr.
        tmp: the server's ``TMPDIR``: uploads and results live here while a request runs.
    """

    url: str
    process: subprocess.Popen
    log: Path
    tmp: Path

    def log_text(self) -> str:
        """Everything the server has logged so far."""
        return self.log.read_text(errors="replace")


TORCH_CACHE_PREFIX = "torchinductor_"
"""torch (2.13) creates its compiler cache folder ``$TMPDIR/torchinductor_<user>`` on the first optimizer
step (per-scan adaptation, X-ray refinement): torch's own, empty of request data, so not a leftover."""


def leftovers(server: Server, wait_s: float = 5.0) -> list[str]:
    """Request files left in the server's temporary folder, after its clean-up tasks had time to run."""
    deadline = time.monotonic() + wait_s
    while True:
        names = sorted(p.name for p in server.tmp.iterdir() if not p.name.startswith(TORCH_CACHE_PREFIX))
        if not names or time.monotonic() > deadline:
            return names
        time.sleep(0.2)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_config(folder: Path) -> Path:
    """A logging config that writes to the console only (MONAI Label's default also writes into
    ``monailabel_app/logs``)."""
    fmt = "[%(asctime)s] [%(process)s] [%(threadName)s] [%(levelname)s] (%(name)s:%(lineno)d) - %(message)s"
    config = {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"simple": {"format": fmt}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "simple"}},
        "root": {"level": "INFO", "handlers": ["console"]},
        "loggers": {name: {"level": level, "propagate": False, "handlers": ["console"]}
                    for name, level in (("uvicorn", "INFO"), ("uvicorn.access", "WARNING"))},
    }
    path = folder / "logging.json"
    path.write_text(json.dumps(config))
    return path


@contextlib.contextmanager
def running_server(studies: Path, env: Mapping[str, str] | None = None, conf: Mapping[str, str] | None = None,
                   extra_args: tuple[str, ...] = (), workdir: Path | None = None) -> Iterator[Server]:
    """Start ``monailabel start_server`` on 127.0.0.1 and a free port; stop it and its children on exit.

    Args:
        studies: the studies folder (MONAI Label's local datastore).
        env: extra environment variables (e.g. ``CTSR_WEIGHTS_DIR``, ``MONAI_LABEL_INFER_CONCURRENCY``).
        conf: ``--conf KEY VALUE`` pairs for the app.
        extra_args: more ``start_server`` arguments (e.g. ``("--workers", "2")``).
        workdir: where the log, temporary files and sessions go (default: a new temporary folder).

    Raises:
        RuntimeError: the server did not answer ``/health`` in time (the message ends with its log).
    """
    with contextlib.ExitStack() as stack:
        folder = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ctsr_server_")))
        tmp = folder / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        log = folder / "server.log"
        port = free_port()
        cmd = [str(BIN / "monailabel"), "start_server", "--app", str(APP_DIR), "--studies", str(studies),
               "--host", "127.0.0.1", "--port", str(port), "--log_config", str(_log_config(folder)), *extra_args]
        for key, value in (conf or {}).items():
            cmd += ["--conf", key, value]
        full_env = {**os.environ, "MONAILABEL_PYEXE": sys.executable, "TMPDIR": str(tmp),
                    "MONAI_LABEL_SESSION_PATH": str(folder / "sessions"), "PYTHONWARNINGS": "ignore", **(env or {})}
        with open(log, "wb") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=folder,
                                       start_new_session=True)
        try:
            server = Server(f"http://127.0.0.1:{port}", process, log, tmp)
            _wait_until_ready(server)
            yield server
        finally:
            stop(process)


def _wait_until_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        with contextlib.suppress(requests.RequestException):
            if requests.get(server.url + "/health", timeout=5).status_code == 200:  # open even with a token
                return
        time.sleep(0.5)
    raise RuntimeError(f"the server did not start (exit code {server.process.poll()}); its log:\n"
                       + server.log_text()[-4000:])


def stop(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    """Stop ``process`` and every process of its group: SIGTERM, up to ``grace_s`` to exit, then SIGKILL
    for whatever of the group is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=grace_s)
