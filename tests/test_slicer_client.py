"""The Slicer module's client library (``slicer_extension/CTEnhance/CTEnhanceLib``) end to end.

Against the real MONAI Label server on loopback (one per module, ``server_fixture``) and a real CT:
upload, inference, streamed download with progress; the result equals ``ctsr-enhance`` voxel for
voxel and the grid ``CTEnhanceLib.geometry`` predicts; nothing stays in the datastore or the
server's temporary folder; a DICOM folder goes up as a ZIP under a neutral name; the terminal command; a server refusal passed through word for word;
cancel while uploading, while the server works and while downloading; a read timeout on a slow
inference. Without a server: connection refused, connect and read timeouts and cancel against raw
sockets that never answer, HTTPS certificate checking, URL advice, error wording, the background job.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from conftest import BIN, REPO, shared
from server_fixture import Server, free_port, leftovers, running_server

MODULE_DIR = REPO / "slicer_extension" / "CTEnhance"
sys.path.insert(0, str(MODULE_DIR))

from CTEnhanceLib.client import (Cancel, Cancelled, Client, ClientError, ConnectionFailed, Progress,  # noqa: E402
                                 ServerError, Stage, TimedOut, Timeouts, error_from_response, parse_server_url,
                                 server_url_warnings)
from CTEnhanceLib.geometry import Grid, super_resolution_grid  # noqa: E402
from CTEnhanceLib.jobs import BackgroundJob  # noqa: E402
from CTEnhanceLib.tasks import SR_TASK  # noqa: E402

CT = "ct/totalseg/example_ct_sm.nii.gz"  # 122x101x30, 3 mm: small enough to upload in a blink
SLOW = {"target_spacing": 0.075, "model": "cubic"}  # 1200 output slices: about 3 s of server work on 2 cores
CLI_TIMEOUT = 120


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slicer_client_studies")


@pytest.fixture(scope="module")
def server(studies) -> Iterator[Server]:
    with running_server(studies) as srv:
        yield srv


@pytest.fixture(scope="module")
def ct() -> Path:
    return shared(CT)


def studies_files(studies: Path) -> list[str]:
    """Every file in the server's datastore folder (uploads must never land there)."""
    return sorted(str(p.relative_to(studies)) for p in studies.rglob("*") if p.is_file())


def run_job(client: Client, ct: Path, out: Path, params: dict) -> BackgroundJob:
    return BackgroundJob(lambda progress, cancel: client.infer(SR_TASK, {"image": ct}, out, params, progress,
                                                               cancel)).start()


def wait_for_stage(job: BackgroundJob, stage: Stage, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while job.progress.stage is not stage and not job.done:
        assert time.monotonic() < deadline, f"never reached {stage}: {job.progress}"
        time.sleep(0.02)
    assert not job.done, f"finished before the test could act: {job.error!r}"


def assert_nothing_written(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == [], "a result or a partial download was left behind"


# --- against the real server -------------------------------------------------------------------

def test_tasks_lists_the_image_output_task(server):
    tasks = {task.name: task for task in Client(server.url).tasks()}
    task = tasks[SR_TASK]
    assert not task.takes_xray_pair and task.inputs.keys() == {"image"}
    assert task.default("target_spacing") == 1.0 and "cubic" in task.choices("model")
    assert task.choices("device") == ("auto", "cpu", "cuda") and ".nrrd" in task.extensions


def test_adapt_to_this_scan_sends_the_checkbox_and_budget_and_gets_the_report(server, ct, tmp_path):
    task = {t.name: t for t in Client(server.url).tasks()}[SR_TASK]
    assert task.can_adapt and task.default("adapt") is False
    assert task.request_params(target_spacing=1.5, **task.adapt_params(False, 60)) == {"target_spacing": 1.5,
                                                                                       "adapt": False}
    params = task.request_params(target_spacing=1.5, **task.adapt_params(True, 10))
    assert params == {"target_spacing": 1.5, "adapt": True, "adapt_seconds": 10.0}
    result = Client(server.url).infer(SR_TASK, {"image": ct}, tmp_path / "adapted.nrrd", params)
    adaptation = result.details["adaptation"]
    assert result.details["params"]["adapt"] is True and adaptation["seconds"] < 10 + 15
    assert isinstance(adaptation["adapted"], bool) and adaptation["heldout_psnr_pretrained"] is not None
    assert result.path.exists()
    with pytest.raises(ValueError, match="positive"):
        task.adapt_params(True, 0)


def test_enhance_equals_ctsr_enhance_and_leaves_nothing_on_the_server(server, studies, ct, tmp_path):
    reports: list[Progress] = []
    before = studies_files(studies)
    result = Client(server.url).enhance(ct, tmp_path / "client.nrrd", target_spacing=1.5, model="cubic",
                                        progress=reports.append)
    cli = subprocess.run([str(BIN / "ctsr-enhance"), str(ct), str(tmp_path / "cli.nrrd"), "--target-spacing", "1.5",
                          "--model", "cubic", "--quiet"], capture_output=True, text=True, timeout=CLI_TIMEOUT,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert cli.returncode == 0, cli.stderr
    ours, reference = sitk.ReadImage(str(result.path)), sitk.ReadImage(str(tmp_path / "cli.nrrd"))
    assert np.array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(reference))
    for getter in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(ours, getter)(), getattr(reference, getter)(), atol=1e-4)
    assert sitk.GetArrayViewFromImage(ours).dtype == np.int16 and ours.GetSize() == (122, 101, 60)
    predicted = super_resolution_grid(_grid(sitk.ReadImage(str(ct))), 1.5)
    assert ours.GetSize() == predicted.size
    np.testing.assert_allclose(ours.GetOrigin(), predicted.origin, atol=1e-4)
    assert result.size_bytes == result.path.stat().st_size and result.details["model"] == "cubic"
    assert result.details["output"]["geometry"]["size_xyz"] == [122, 101, 60]
    stages = [r.stage for r in reports]
    assert [s for i, s in enumerate(stages) if i == 0 or s is not stages[i - 1]] == [
        Stage.CONNECT, Stage.UPLOAD, Stage.INFERENCE, Stage.DOWNLOAD, Stage.DONE]
    upload = [r for r in reports if r.stage is Stage.UPLOAD][-1]
    download = [r for r in reports if r.stage is Stage.DOWNLOAD][-1]
    assert upload.done == upload.total > ct.stat().st_size and upload.fraction == 1.0
    assert download.done == download.total == result.size_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.nrrd", "client.nrrd"]
    assert studies_files(studies) == before, "the upload reached the datastore"
    assert leftovers(server) == []


def test_a_dicom_folder_is_uploaded_as_a_zip(server, tmp_path):
    folder = tmp_path / "SMITH_JANE_series"
    folder.mkdir()
    for path in sorted(shared("ct/chest_4dct_phase00_dicom").glob("*.dcm"))[:8]:
        shutil.copy(path, folder / path.name)
    result = Client(server.url).enhance(folder, tmp_path / "out.mha", target_spacing=1.0, model="cubic")
    image = sitk.ReadImage(str(result.path))
    assert image.GetSize() == (512, 512, 16) and image.GetSpacing()[2] == 1.0
    assert "SMITH" not in server.log_text()
    assert leftovers(server) == []


def test_command_line_enhances_and_reports_errors_in_one_line(server, ct, tmp_path):
    def client_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "CTEnhanceLib.client", "--server", server.url, *args],
                              cwd=MODULE_DIR, capture_output=True, text=True, timeout=CLI_TIMEOUT)

    done = client_cli("--quiet", "enhance", str(ct), str(tmp_path / "out.nii.gz"), "--target-spacing", "2",
                      "--model", "linear")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    summary = json.loads(done.stdout)
    assert summary["output"] == str(tmp_path / "out.nii.gz") and summary["server"]["output"]["extension"] == ".nii.gz"
    assert sitk.ReadImage(summary["output"]).GetSpacing()[2] == 2.0
    refused = client_cli("--quiet", "enhance", str(ct), str(tmp_path / "bad.nrrd"), "--target-spacing", "8")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("python -m CTEnhanceLib.client: error: ") and refused.stderr.count("\n") == 1
    assert "choose a smaller target_spacing" in refused.stderr
    assert not (tmp_path / "bad.nrrd").exists()


@pytest.mark.parametrize(("params", "status", "words"), [
    ({"target_spacing": 8.0}, 422, "choose a smaller target_spacing"),
    ({"model": "nope"}, 404, "unknown model 'nope'"),
])
def test_server_refusal_is_passed_through_word_for_word(server, ct, tmp_path, params, status, words):
    with ct.open("rb") as stream:
        direct = requests.post(f"{server.url}/infer/{SR_TASK}", params={"output": "image"}, timeout=60,
                               data={"params": json.dumps(params)}, files={"file": ("image.nii.gz", stream)})
    with pytest.raises(ServerError) as caught:
        Client(server.url).infer(SR_TASK, {"image": ct}, tmp_path / "out.nrrd", params)
    assert caught.value.status == status == direct.status_code
    assert str(caught.value) == direct.json()["detail"] and words in str(caught.value)
    assert_nothing_written(tmp_path)


def test_cancel_while_the_server_works_returns_at_once(server, ct, tmp_path):
    job = run_job(Client(server.url), ct, tmp_path / "out.nrrd", SLOW)
    wait_for_stage(job, Stage.INFERENCE)
    time.sleep(0.1)
    assert job.progress.stage is Stage.INFERENCE, "the server finished before the test could cancel"
    start = time.monotonic()
    job.cancel()
    assert job.wait(5.0), "cancel did not stop the wait for the server"
    assert time.monotonic() - start < 2.0
    with pytest.raises(Cancelled, match="the server may still finish the job"):
        job.result()
    assert_nothing_written(tmp_path)
    assert SR_TASK in Client(server.url, Timeouts(5, 10)).info()["models"], "the server stopped serving"


@pytest.mark.parametrize("stage", [Stage.UPLOAD, Stage.DOWNLOAD])
def test_cancel_during_transfer_leaves_no_file(server, ct, tmp_path, stage):
    cancel = Cancel()

    def progress(report: Progress) -> None:
        if report.stage is stage and report.done > 0:
            cancel.cancel()

    with pytest.raises(Cancelled):
        Client(server.url).enhance(ct, tmp_path / "out.nrrd", target_spacing=1.5, model="cubic", progress=progress,
                                   cancel=cancel)
    assert_nothing_written(tmp_path)


def test_read_timeout_on_a_slow_inference(server, ct, tmp_path):
    start = time.monotonic()
    with pytest.raises(TimedOut, match=r"did not answer within 0.5 s \(read timeout\)"):
        Client(server.url, Timeouts(connect=5, read=0.5)).infer(SR_TASK, {"image": ct}, tmp_path / "out.nrrd", SLOW)
    assert time.monotonic() - start < 10
    assert_nothing_written(tmp_path)


# --- without a server --------------------------------------------------------------------------

def test_connection_refused_says_nothing_listens(tmp_path):
    port = free_port()
    start = time.monotonic()
    with pytest.raises(ConnectionFailed) as caught:
        Client(f"http://127.0.0.1:{port}").enhance(shared(CT), tmp_path / "out.nrrd")
    assert str(caught.value).startswith(f"Nothing is listening at http://127.0.0.1:{port}: start the server")
    assert time.monotonic() - start < 5 and caught.value.status is None
    assert_nothing_written(tmp_path)


class SilentServer:
    """A loopback TCP server that accepts connections, reads what arrives and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.clients: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.clients.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for conn in self.clients:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    srv = SilentServer()
    yield srv
    srv.close()


def test_read_timeout_when_the_server_never_answers(silent, tmp_path):
    start = time.monotonic()
    with pytest.raises(TimedOut, match=r"did not answer within 0.5 s \(read timeout\); it may still be working"):
        Client(f"http://127.0.0.1:{silent.port}", Timeouts(connect=5, read=0.5)).enhance(shared(CT),
                                                                                          tmp_path / "out.nrrd")
    assert 0.4 < time.monotonic() - start < 5
    assert_nothing_written(tmp_path)


def test_cancel_from_another_thread_ends_a_silent_wait(silent, tmp_path):
    client = Client(f"http://127.0.0.1:{silent.port}", Timeouts(connect=5, read=300))
    job = run_job(client, shared(CT), tmp_path / "out.nrrd", {})
    wait_for_stage(job, Stage.INFERENCE)
    start = time.monotonic()
    job.cancel()
    assert job.wait(3.0) and time.monotonic() - start < 1.0
    assert isinstance(job.error, Cancelled)


def test_connect_timeout_when_the_server_does_not_accept():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepted: once its queue is full, new connections hang
    port = listener.getsockname()[1]
    queued = []
    try:
        for _ in range(8):
            probe = socket.socket()
            probe.settimeout(0.3)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                probe.close()
                break
            queued.append(probe)
        else:
            pytest.skip("this kernel accepts every connection into the listen queue")
        start = time.monotonic()
        with pytest.raises(TimedOut, match=r"did not accept a connection within 0.5 s \(connect timeout\)"):
            Client(f"http://127.0.0.1:{port}", Timeouts(connect=0.5, read=60)).info()
        assert time.monotonic() - start < 3
    finally:
        for probe in queued:
            probe.close()
        listener.close()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[tuple[int, Path]]:
    """An HTTPS server on loopback with a self-signed certificate for 127.0.0.1; it answers ``/info/``."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    body = json.dumps({"models": {}}).encode()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(65536)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            except (ssl.SSLError, OSError):
                conn.close()  # the client refused the certificate

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1], cert
    listener.close()


def test_https_certificates_are_checked_by_default(tls_server):
    port, cert = tls_server
    with pytest.raises(ConnectionFailed, match="HTTPS certificate of https://127.0.0.1:.* could not be verified"):
        Client(f"https://127.0.0.1:{port}", Timeouts(5, 5)).info()
    assert Client(f"https://127.0.0.1:{port}", Timeouts(5, 5), verify=cert).info() == {"models": {}}
    with pytest.raises(ClientError, match="CA bundle .* could not be read"):
        Client(f"https://127.0.0.1:{port}", verify=cert.parent / "missing.pem")


# --- pure parts ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "words"), [
    ("", "Enter the server URL"),
    ("127.0.0.1:8000", "Start the server URL with http:// or https://, e.g. http://127.0.0.1:8000."),
    ("ftp://host", "must start with http:// or https://"),
    ("http://", "names no host"),
    ("http://host:99999", "must be a number from 1 to 65535"),
    ("http://user:pw@host", "no user name"),
])
def test_bad_server_urls_are_refused_with_the_fix(url, words):
    with pytest.raises(ClientError, match=re.escape(words)):
        parse_server_url(url)


def test_server_url_advice():
    assert "not one to connect to: use 127.0.0.1" in server_url_warnings("http://0.0.0.0:8000")[0]
    assert "not encrypted" in server_url_warnings("http://gpu-server.hospital:8000")[0]
    assert server_url_warnings("http://127.0.0.1:8000") == server_url_warnings("https://gpu-server:8443") == []
    address = parse_server_url("https://gpu-server/ctenhance/")
    assert (address.port, address.base_path, str(address)) == (443, "/ctenhance", "https://gpu-server:443/ctenhance")


def test_error_wording():
    detail = "the input's slices are already 3 mm apart; choose a smaller target_spacing"
    assert str(error_from_response(422, "Unprocessable", json.dumps({"detail": detail}).encode())) == detail
    validation = json.dumps({"detail": [{"loc": ["body", "params"], "msg": "field required"}]}).encode()
    assert str(error_from_response(422, "Unprocessable", validation)) == (
        "The server refused the request: body.params: field required.")
    proxy = error_from_response(502, "Bad Gateway", b"<html>nginx</html>")
    assert str(proxy) == "The server answered HTTP 502 Bad Gateway: a proxy could not reach the server." and \
        proxy.status == 502
    with pytest.raises(ValueError, match="read timeout must be a positive number"):
        Timeouts(read=0)


def test_background_job_reports_progress_and_hands_over_result_and_error():
    gate = threading.Event()

    def work(progress, cancel):
        progress(Progress(Stage.UPLOAD, 5, 10))
        gate.wait(5)
        cancel.check()
        return "done"

    job = BackgroundJob(work).start()
    deadline = time.monotonic() + 5
    while job.progress.stage is not Stage.UPLOAD:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not job.done and job.progress.fraction == 0.5 and job.progress.describe() == "Uploading: 0.0 of 0.0 MB"
    with pytest.raises(RuntimeError, match="still running"):
        job.result()
    gate.set()
    assert job.wait(5) and job.result() == "done" and job.error is None
    cancelled = BackgroundJob(work)
    cancelled.cancel()
    assert cancelled.start().wait(5) and isinstance(cancelled.error, Cancelled)


def _grid(image: sitk.Image) -> Grid:
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return Grid(image.GetSize(), image.GetSpacing(), image.GetOrigin(), tuple(map(tuple, direction.T)))


# --- a server that requires an API token -------------------------------------------------------

TOKEN = "client-token-0123456789abcdef"


@pytest.fixture(scope="module")
def token_server(tmp_path_factory) -> Iterator[tuple[Server, Path]]:
    folder = tmp_path_factory.mktemp("token")
    (folder / "studies").mkdir()
    (folder / "token.txt").write_text(TOKEN + "\n")
    with running_server(folder / "studies", conf={"api_token_file": str(folder / "token.txt")}) as srv:
        yield srv, folder / "token.txt"


def test_the_token_is_sent_on_every_request(token_server, ct, tmp_path):
    server, token_file = token_server
    with pytest.raises(ServerError) as refused:
        Client(server.url).tasks()
    assert refused.value.status == 401 and "API token" in str(refused.value)
    with pytest.raises(ServerError) as wrong:
        Client(server.url, token="not-the-token-000000").tasks()
    assert wrong.value.status == 401
    client = Client(server.url, token=TOKEN)
    assert SR_TASK in {task.name for task in client.tasks()}
    result = client.enhance(ct, tmp_path / "out.nrrd", target_spacing=2.0, model="linear")
    assert sitk.ReadImage(str(result.path)).GetSpacing()[2] == 2.0
    with pytest.raises(ClientError):
        Client(server.url, token="two words")

    def client_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "CTEnhanceLib.client", "--server", server.url, *args],
                              cwd=MODULE_DIR, capture_output=True, text=True, timeout=CLI_TIMEOUT,
                              env={**os.environ, **(env or {})})

    assert client_cli("--token-file", str(token_file), "info").returncode == 0
    assert client_cli("info", env={"CTENHANCE_API_TOKEN": TOKEN}).returncode == 0
    without = client_cli("info", env={"CTENHANCE_API_TOKEN": ""})
    assert without.returncode == 2 and "API token" in without.stderr and without.stderr.count("\n") == 1
    missing = client_cli("--token-file", str(tmp_path / "nope.txt"), "info")
    assert missing.returncode == 2 and "token file" in missing.stderr
    assert TOKEN not in server.log_text()
