"""Upload and download speed of the Slicer module's transfer path while the GUI thread starves Python threads.

The condition (inside Slicer): PythonQt keeps the Python lock (GIL) on the GUI thread while Qt's
event loop is idle, so a Python worker thread runs only when the GUI thread runs Python, e.g. the
module's 200 ms progress timer. The simulation here, in a plain Python process:

* the main thread plays the GUI thread: it sleeps 200 ms inside a C call that keeps the GIL
  (``usleep`` called through ``ctypes.PyDLL``, which does not release the lock: like Qt's event
  loop waiting in a system call under PythonQt), then runs the "poll" (:data:`POLL_WINDOW_S` in a
  call that releases the GIL, the moment a waiting thread can take it), and again;
* the network peer is a small standard-library HTTP server in a separate process (it stands for
  the server, not the product): it reads the upload and discards it, then sends ``N`` bytes back;
* **in-thread**: the previous client path: :class:`~CTEnhanceLib.jobs.BackgroundJob` running
  :meth:`Client.infer` on a Python thread of the starved process;
* **subprocess**: the module's path now: the terminal client in a child process
  (:class:`~CTEnhanceLib.process.SubprocessClient`), whose progress lines the main thread reads at
  each poll (as ``qt.QProcess`` delivers them in Slicer).

Rates are bytes / seconds between the stage changes the client itself timed (upload: upload start
to inference start; download: download start to done). Input and result files live in memory
(``/dev/shm`` where it exists), so the numbers are the transfer path's, not the disk's. Run:
``.venv/bin/python benchmarks/slicer_transfer.py [--mb 200] [--thread-mb 32] [--out docs/benchmarks.md]``.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "slicer_extension" / "CTEnhance"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from CTEnhanceLib.client import Client, Progress, Stage, Timeouts  # noqa: E402
from CTEnhanceLib.jobs import BackgroundJob  # noqa: E402
from CTEnhanceLib.process import SubprocessClient, enhance_command  # noqa: E402

from report import write_section  # noqa: E402

log = logging.getLogger("slicer_transfer")
POLL_INTERVAL_S = 0.2
"""The module's progress timer (``POLL_INTERVAL_MS`` in ``CTEnhance.py``)."""
POLL_WINDOW_S = 0.005
"""How long the GIL is free at each poll: one switch interval (``sys.getswitchinterval()``)."""
CHUNK = 1 << 20
TASK = "transfer_peer"


class _PeerHandler(BaseHTTPRequestHandler):
    """Reads a POST body and discards it, then answers ``server.answer_bytes`` zero bytes."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            remaining -= len(self.rfile.read(min(CHUNK, remaining)) or b"\0" * remaining)
        total = self.server.answer_bytes  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(total))
        self.send_header("Connection", "close")
        self.end_headers()
        block = memoryview(bytes(CHUNK))  # slices of a memoryview are not copies
        for start in range(0, total, CHUNK):
            self.wfile.write(block[:min(CHUNK, total - start)])
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return


def serve_peer(answer_bytes: int) -> None:
    """Run the peer on a free loopback port, print ``{"url": ...}`` and serve until killed."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PeerHandler)
    server.answer_bytes = answer_bytes  # type: ignore[attr-defined]
    print(json.dumps({"url": f"http://127.0.0.1:{server.server_address[1]}"}), flush=True)
    server.serve_forever()


@contextlib.contextmanager
def running_peer(answer_bytes: int) -> Iterator[str]:
    """The peer in a separate process; yields its URL and ends it afterwards."""
    process = subprocess.Popen([sys.executable, __file__, "--peer", str(answer_bytes)], stdout=subprocess.PIPE,
                               text=True)
    try:
        yield json.loads(process.stdout.readline())["url"]
    finally:
        process.kill()
        process.wait(timeout=30)


class StarvedGuiThread:
    """Makes the calling (main) thread hold the GIL like Slicer's idle GUI thread, with a poll every 200 ms."""

    def __init__(self, interval_s: float = POLL_INTERVAL_S, window_s: float = POLL_WINDOW_S) -> None:
        self._usleep = ctypes.PyDLL(None).usleep  # PyDLL: the GIL stays held during the call
        self._usleep.argtypes = [ctypes.c_uint]
        self.interval_s, self.window_s = interval_s, window_s

    def run_until(self, done: Callable[[], bool], poll: Callable[[], None] = lambda: None,
                  timeout_s: float = 600.0) -> None:
        """Hold the GIL for ``interval_s``, then poll (GIL free for ``window_s``), until ``done()``."""
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the transfer did not end within {timeout_s:g} s")
            self._usleep(int((self.interval_s - self.window_s) * 1e6))
            time.sleep(self.window_s)
            poll()


@dataclass(frozen=True)
class Rates:
    """One measured transfer."""

    path: str
    upload_mb: float
    download_mb: float
    upload_mb_s: float
    download_mb_s: float
    wall_s: float


def _rates(label: str, started: dict[Stage, float], up: int, down: int, wall_s: float) -> Rates:
    upload_s = started[Stage.INFERENCE] - started[Stage.UPLOAD]
    download_s = started[Stage.DONE] - started[Stage.DOWNLOAD]
    return Rates(label, up / 1e6, down / 1e6, round(up / 1e6 / max(upload_s, 1e-6), 1),
                 round(down / 1e6 / max(download_s, 1e-6), 1), round(wall_s, 2))


def make_input(folder: Path, n_bytes: int) -> Path:
    """A file of ``n_bytes`` to upload (``.nrrd`` by name only: the peer does not read it)."""
    path = folder / "input.nrrd"
    with path.open("wb") as out:
        for start in range(0, n_bytes, CHUNK):
            out.write(os.urandom(min(CHUNK, n_bytes - start)) if start == 0 else bytes(min(CHUNK, n_bytes - start)))
    return path


def measure_in_thread(url: str, source: Path, folder: Path, gui: StarvedGuiThread, label: str) -> Rates:
    """The previous path: the client on a Python thread of the starved process."""
    started: dict[Stage, float] = {}

    def note(progress: Progress) -> None:
        started.setdefault(progress.stage, time.monotonic())

    client = Client(url, Timeouts(read=600.0))
    output = folder / "thread_result.nrrd"
    begin = time.monotonic()
    job = BackgroundJob(lambda progress, cancel: client.infer(
        TASK, {"image": source}, output, {}, lambda p: (note(p), progress(p)), cancel)).start()
    gui.run_until(lambda: job.done)
    result = job.result()
    return _rates(label, started, source.stat().st_size, result.size_bytes, time.monotonic() - begin)


def measure_subprocess(url: str, source: Path, folder: Path, gui: StarvedGuiThread, label: str) -> Rates:
    """The module's path: the terminal client in a child process, its progress read at each poll."""
    output = folder / "process_result.nrrd"
    begin = time.monotonic()
    runner = SubprocessClient(enhance_command(url, {"image": str(source)}, str(output), TASK, read_timeout_s=600.0))
    finished = threading.Event()
    gui.run_until(finished.is_set, lambda: finished.set() if runner.poll() else None)
    result = runner.run.finish(runner.exit_code if runner.exit_code is not None else -1)
    started = {stage: runner.run.reader.stage_started_s[stage] for stage in runner.run.reader.stage_started_s}
    return _rates(label, started, source.stat().st_size, int(result["size_bytes"]),
                  time.monotonic() - begin)


def measure(path: str, n_bytes: int, gui: StarvedGuiThread | None = None, label: str = "") -> Rates:
    """Upload ``n_bytes`` and download ``n_bytes`` through ``path`` (``thread`` or ``subprocess``)."""
    gui = gui or StarvedGuiThread()
    label = label or ("in-thread (previous)" if path == "thread" else "subprocess (now)")
    memory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="slicer_transfer_", dir=memory) as scratch, running_peer(n_bytes) as url:
        source = make_input(Path(scratch), n_bytes)
        run = measure_in_thread if path == "thread" else measure_subprocess
        return run(url, source, Path(scratch), gui, label)


def report(rows: list[Rates], command: str) -> str:
    lines = ["## Slicer module: transfers while the GUI thread holds the Python lock", "",
             f"Command: `{command}`  ", f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), "
             f"Python {platform.python_version()}; loopback; the GUI thread holds the GIL except "
             f"{POLL_WINDOW_S * 1e3:g} ms every {POLL_INTERVAL_S * 1e3:g} ms (see the script's docstring); 1-minute "
             f"load average at the end {os.getloadavg()[0]:.1f} (other jobs share the machine).", "",
             "| path | upload MB | upload MB/s | download MB | download MB/s | wall s |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.path} | {r.upload_mb:.0f} | {r.upload_mb_s:.1f} | {r.download_mb:.0f} | {r.download_mb_s:.1f} | "
              f"{r.wall_s:.1f} |" for r in rows]
    lines += ["", "Target: ≥ 100 MB/s each way through the module's path (the subprocess row). The in-thread row is "
              "the path the module used before, in the same condition; the last row is the same client process "
              "with no starved thread at all: the module's path now runs at this machine's own loopback speed "
              "(on this shared 2-core machine under load, the download is bound by the CPU: the peer, the "
              "client and the file writes share two cores with other jobs)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="MB up and down through the subprocess path")
    parser.add_argument("--thread-mb", type=int, default=32, help="MB up and down through the in-thread path")
    parser.add_argument("--out", type=Path, help="write the section into this benchmarks page")
    parser.add_argument("--peer", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer is not None:
        serve_peer(args.peer)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    free = StarvedGuiThread(window_s=POLL_INTERVAL_S)  # the GIL always free: this machine's loopback ceiling
    rows = [measure("thread", args.thread_mb * 1_000_000), measure("subprocess", args.mb * 1_000_000),
            measure("subprocess", args.mb * 1_000_000, free, "subprocess, GIL never held (ceiling)")]
    for row in rows:
        print(json.dumps(asdict(row)))
    if args.out:
        command = f"python benchmarks/slicer_transfer.py --mb {args.mb} --thread-mb {args.thread_mb} --out {args.out}"
        write_section("slicer_transfer", report(rows, command), args.out)


if __name__ == "__main__":
    main()
