"""The MONAI Label server over HTTP: one real server (``monailabel start_server``) per module, real CT.

Checked: ``/info/`` and ``/health``; results equal ``ctsr-enhance`` voxel for voxel with the same
geometry (datastore NIfTI through a network model, uploaded DICOM ZIP through a baseline); int16 HU
whatever ``result_dtype`` a client asks; every error case answers 4xx with a JSON message and
leaves no upload behind; ``/info/`` answers within a second while inferences run, and two
simultaneous inferences both succeed; the datastore image is never modified; the log names no file.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
import torch
from conftest import BIN, shared
from server_fixture import Server, leftovers, running_server

from ctsr_models.io import read_volume, write_volume
from ctsr_models.io.checksum import sha256
from ctsr_models.nets import build_net
from ctsr_models.physics import simulate_thick_slices

TASK = "ct_super_resolution"
STUDY_ID = "DOE_JOHN_thick"  # a patient-like name: it must never reach the log
UPLOAD_NAME = "SMITH_JANE_chest.zip"
TIMEOUT = 300


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Inputs: a 6 mm abdomen CT in the studies folder, a zipped 8-slice chest DICOM series, a tiny
    untrained network (random, non-zero head) as the shipped ``default`` model, and bad uploads."""
    root = tmp_path_factory.mktemp("server_data")
    studies = root / "studies"
    studies.mkdir()
    thin = read_volume(shared("ct/totalseg/example_ct_sm.nii.gz"))
    write_volume(simulate_thick_slices(thin, 6.0), studies / f"{STUDY_ID}.nii.gz")
    dicom = sorted(shared("ct/chest_4dct_phase00_dicom").glob("*.dcm"))[:8]
    with zipfile.ZipFile(root / UPLOAD_NAME, "w") as zf:
        for path in dicom:
            zf.write(path, path.name)
    image_2d = sitk.Image(64, 64, sitk.sitkInt16) - 1000
    sitk.WriteImage(image_2d, str(root / "slice_2d.nii.gz"))
    (root / "notes.txt").write_text("not an image\n")
    (root / "corrupt.nii.gz").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "truncated.nii.gz").write_bytes((studies / f"{STUDY_ID}.nii.gz").read_bytes()[:3000])
    study = studies / f"{STUDY_ID}.nii.gz"
    return {"studies": studies, "study": study, "study_sha": sha256(study), "zip": root / UPLOAD_NAME, "dicom": dicom,
            "2d": root / "slice_2d.nii.gz", "text": root / "notes.txt", "corrupt": root / "corrupt.nii.gz",
            "truncated": root / "truncated.nii.gz",
            "models": _tiny_model(root / "models"), "out": root / "out"}


def _tiny_model(folder: Path) -> Path:
    folder.mkdir()
    torch.manual_seed(0)
    net = build_net("sr_resnet", features=4, num_blocks=1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a network whose output differs from its linear input
    torch.save(net.state_dict(), folder / "tiny.pt")
    manifest = {"default": "tiny", "models": [{
        "name": "tiny", "net": "sr_resnet", "net_kwargs": {"features": 4, "num_blocks": 1},
        "weights": "tiny.pt", "sha256": sha256(folder / "tiny.pt"), "roi_size": [32, 64, 64]}]}
    (folder / "models.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def server(data) -> Server:
    with running_server(data["studies"], env={"CTSR_WEIGHTS_DIR": str(data["models"])}) as srv:
        yield srv


def infer(server: Server, params: dict | str | None = None, image: str | None = None, upload: Path | None = None,
          output: str = "all", task: str = TASK) -> requests.Response:
    """``POST /infer/<task>`` as a client does it."""
    query = {"output": output, **({"image": image} if image else {})}
    form = {"params": params if isinstance(params, str) else json.dumps(params or {})}
    files = {"file": (upload.name, upload.open("rb"))} if upload else None
    try:
        return requests.post(f"{server.url}/infer/{task}", params=query, data=form, files=files, timeout=TIMEOUT)
    finally:
        if files:
            files["file"][1].close()


def cli_enhance(*args: str | Path, models: Path | None = None) -> None:
    """Run the installed ``ctsr-enhance`` as a user would (optionally with a models folder)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **({"CTSR_WEIGHTS_DIR": str(models)} if models else {})}
    script = BIN / "ctsr-enhance"  # the same entry point when the package was installed before it had the script
    cmd = [str(script)] if script.exists() else [
        sys.executable, "-c", "import sys; from ctsr_models.cli.enhance import main; sys.exit(main())"]
    proc = subprocess.run([*cmd, *map(str, args), "--quiet"], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr


def save_result(response: requests.Response, folder: Path) -> tuple[Path, dict]:
    """The result file and JSON of an ``output=all`` multipart answer."""
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    assert response.status_code == 200, response.text[:500]
    folder.mkdir(parents=True, exist_ok=True)
    result_json, path = None, None
    for part in MultipartDecoder.from_response(response).parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        if 'name="params"' in disposition:
            result_json = json.loads(part.content)
        else:
            name = disposition.split('filename="')[1].rstrip('"')
            path = folder / name
            path.write_bytes(part.content)
    assert result_json is not None and path is not None
    return path, result_json


def assert_same_volume(ours: Path, reference: Path, dtype: str) -> None:
    """Equal voxels and geometry within 1e-4 mm, read back with SimpleITK."""
    a, b = sitk.ReadImage(str(ours)), sitk.ReadImage(str(reference))
    assert sitk.GetArrayViewFromImage(a).dtype == np.dtype(dtype)
    assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(a, getter)(), getattr(b, getter)(), atol=1e-4)


def test_info_and_health_describe_the_task(server):
    info = requests.get(f"{server.url}/info/", timeout=10).json()
    task = info["models"][TASK]
    assert task["type"] == "others" and task["dimension"] == 3
    assert task["default_model"] == "default" and task["models"] == ["default", "tiny", "linear", "cubic", "lanczos"]
    assert task["params"]["target_spacing"] == {"type": "number", "default": 1.0, "exclusive_minimum": 0.0,
                                                "description": task["params"]["target_spacing"]["description"]}
    assert task["params"]["model"]["default"] == "default"
    assert task["model_descriptions"]["default"] == "tiny" and "B-spline" in task["model_descriptions"]["cubic"]
    assert task["params"]["device"]["choices"] == ["auto", "cpu", "cuda"]
    assert task["config"]["model"] == "default" and task["output"]["default_extension"] == ".nrrd"
    health = requests.get(f"{server.url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["tasks"] == ["ct_denoise", TASK, "xray_to_ct"] and health["infer_off_event_loop"] is True


def test_datastore_image_through_the_network_equals_the_cli(server, data):
    path, result = save_result(infer(server, {"target_spacing": 1.5}, image=STUDY_ID), data["out"] / "net")
    assert path.suffix == ".nrrd" and result["model"] == "default" and result["output"]["dtype"] == "int16"
    cli_enhance(data["study"], data["out"] / "cli_net.nrrd", "--target-spacing", "1.5", "--model", "default",
                models=data["models"])
    assert_same_volume(path, data["out"] / "cli_net.nrrd", "int16")
    # the output grid rule: slab 0 spans c_0 - 3 mm .. c_0 + 3 mm, the first 1.5 mm slice is centred 0.75 mm in
    thick = read_volume(data["study"])
    out = sitk.ReadImage(str(path))
    assert out.GetSize() == (122, 101, 60) and out.GetSpacing() == (3.0, 3.0, 1.5)
    np.testing.assert_allclose(out.GetOrigin(), np.asarray(thick.origin) - 2.25 * thick.slice_normal, atol=1e-4)
    assert result["output"]["geometry"]["size_xyz"] == [122, 101, 60]
    assert result["timings_s"]["inference"] > 0 and result["timings_s"]["total"] >= result["timings_s"]["inference"]


def test_uploaded_dicom_zip_as_float32_nifti_equals_the_cli(server, data):
    params = {"target_spacing": 1.0, "model": "cubic", "result_extension": ".nii", "result_dtype": "float32"}
    path, result = save_result(infer(server, params, upload=data["zip"]), data["out"] / "zip")
    assert path.name.endswith(".nii") and result["output"]["dtype"] == "float32"
    cli_enhance(data["zip"], data["out"] / "cli_zip.nii", "--target-spacing", "1.0", "--model", "cubic",
                "--dtype", "float32")
    assert_same_volume(path, data["out"] / "cli_zip.nii", "float32")
    assert sitk.ReadImage(str(path)).GetSize() == (512, 512, 16)
    assert leftovers(server) == []


def test_a_client_asking_for_uint8_gets_int16_hu_streamed_with_the_json_in_a_header(server, data):
    params = {"model": "linear", "target_spacing": 2.0, "result_dtype": "uint8", "result_extension": ".nii.gz"}
    response = infer(server, params, image=STUDY_ID, output="image")
    assert response.status_code == 200, response.text[:300]
    result = json.loads(response.headers["X-CTSR-Result"])
    path = data["out"] / "u8.nii.gz"
    path.write_bytes(response.content)
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    assert array.dtype == np.int16 and array.min() < -500 and any("uint8" in n for n in result["notes"])
    assert list(image.GetSize()) == result["output"]["geometry"]["size_xyz"] == [122, 101, 45]


def test_a_session_of_dicom_files_is_a_folder_input_with_the_default_format(server, data):
    """MONAI Label's own writer fails with a bare 500 on a folder input without result_extension."""
    files = [("files", (p.name, p.read_bytes())) for p in data["dicom"]]
    created = requests.put(f"{server.url}/session/", files=files, timeout=TIMEOUT)
    assert created.status_code == 200, created.text
    response = requests.post(f"{server.url}/infer/{TASK}", params={"session_id": created.json()["session_id"],
                             "output": "json"}, data={"params": json.dumps({"model": "linear"})}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["output"]["geometry"]["size_xyz"] == [512, 512, 16] and result["output"]["extension"] == ".nrrd"


@pytest.mark.parametrize(("case", "status", "words"), [
    ("unknown model", 404, "unknown model 'nope'"),
    ("unknown task", 404, "no infer task"),
    ("unknown image id", 404, "not in the datastore"),
    ("unknown session", 404, "unknown or has expired"),
    ("server path as image", 400, "not a path"),
    ("no image", 400, "no image"),
    ("text upload", 400, "not a supported input"),
    ("corrupt upload", 400, "corrupt"),
    ("truncated upload", 400, "truncated"),
    ("2D upload", 400, "not a 3D volume"),
    ("zero spacing", 422, "greater than 0"),
    ("text spacing", 422, "must be a number"),
    ("target not finer", 422, "choose a smaller target_spacing"),
    ("billions of voxels", 413, "choose a larger target_spacing"),
    ("bad params JSON", 400, "not valid JSON"),
    ("unknown device", 422, "unknown device"),
])
def test_errors_answer_4xx_json_and_the_server_keeps_serving(server, data, case, status, words):
    calls = {
        "unknown model": lambda: infer(server, {"model": "nope"}, image=STUDY_ID),
        "unknown task": lambda: infer(server, {}, image=STUDY_ID, task="segmentation"),
        "unknown image id": lambda: infer(server, {}, image="nobody"),
        "unknown session": lambda: requests.post(f"{server.url}/infer/{TASK}", params={"session_id": "nope"},
                                                 timeout=TIMEOUT),
        "server path as image": lambda: infer(server, {}, image=str(data["study"])),
        "no image": lambda: infer(server, {}),
        "text upload": lambda: infer(server, {}, upload=data["text"]),
        "corrupt upload": lambda: infer(server, {}, upload=data["corrupt"]),
        "truncated upload": lambda: infer(server, {"model": "linear"}, upload=data["truncated"], output="json"),
        "2D upload": lambda: infer(server, {}, upload=data["2d"]),
        "zero spacing": lambda: infer(server, {"target_spacing": 0}, image=STUDY_ID),
        "text spacing": lambda: infer(server, {"target_spacing": "thin"}, image=STUDY_ID),
        "target not finer": lambda: infer(server, {"target_spacing": 8.0}, image=STUDY_ID),
        "billions of voxels": lambda: infer(server, {"target_spacing": 1e-6}, upload=data["zip"]),
        "bad params JSON": lambda: infer(server, "{target_spacing: 1}", image=STUDY_ID),
        "unknown device": lambda: infer(server, {"device": "tpu"}, image=STUDY_ID),
    }
    response = calls[case]()
    assert response.status_code == status, response.text[:300]
    detail = response.json()["detail"]
    assert isinstance(detail, str) and words in detail and "\n" not in detail
    assert str(server.tmp) not in detail and not re.search(r"tmp\w{8}", detail), "a server path in the message"
    assert leftovers(server, wait_s=0.5) == []
    assert requests.get(f"{server.url}/info/", timeout=5).status_code == 200


def test_info_answers_while_two_inferences_run_and_both_succeed(server, data):
    results: dict[str, requests.Response] = {}
    jobs = {"slow": lambda: infer(server, {"target_spacing": 0.5, "model": "default"}, image=STUDY_ID, output="json"),
            "fast": lambda: infer(server, {"target_spacing": 1.5, "model": "cubic"}, image=STUDY_ID, output="json")}
    threads = [threading.Thread(target=lambda k=k, f=f: results.__setitem__(k, f())) for k, f in jobs.items()]
    for t in threads:
        t.start()
    info_times = []
    while threads[0].is_alive():
        if requests.get(f"{server.url}/health", timeout=5).json()["inferences_running"] > 0:
            start = time.perf_counter()
            assert requests.get(f"{server.url}/info/", timeout=5).status_code == 200
            info_times.append(time.perf_counter() - start)
        time.sleep(0.05)
    for t in threads:
        t.join(TIMEOUT)
    assert info_times, "the slow inference ended before /info/ could be timed"
    assert max(info_times) < 1.0, info_times
    assert results["slow"].status_code == 200 and results["fast"].status_code == 200
    assert results["slow"].json()["output"]["geometry"]["size_xyz"] == [122, 101, 180]


def test_adapt_runs_through_the_server_and_reports_progress(server, data):
    params = {"target_spacing": 1.5, "adapt": True, "adapt_seconds": 20, "adapt_steps": 4}
    response = infer(server, params, image=STUDY_ID, output="json")
    assert response.status_code == 200, response.text[:300]
    result = response.json()
    adaptation = result["adaptation"]
    assert adaptation["steps"] <= 4 and adaptation["seconds"] < 20 + 10
    assert adaptation["heldout_psnr_pretrained"] is not None and isinstance(adaptation["adapted"], bool)
    assert any(("adapted to this scan" in f) or ("kept the pretrained model" in f) for f in result["findings"])
    assert result["params"]["adapt"] is True and result["params"]["adapt_seconds"] == 20
    log = server.log_text()
    shown = [int(v) for v in re.findall(r"ct_super_resolution: adapting (\d+) %", log)]
    # adapting is reported (throttled to one line per 2 s and per stage), then the inference stage
    assert shown and max(shown) <= 50 and "ct_super_resolution: inference" in log
    info = requests.get(f"{server.url}/info/", timeout=10).json()["models"][TASK]["params"]
    assert info["adapt"]["default"] is False and info["adapt_profile"]["choices"] == ["rect", "gaussian", "auto"]


@pytest.mark.parametrize("params, words", [
    ({"adapt": "yes"}, "adapt must be true or false"),
    ({"adapt": True, "adapt_seconds": -1}, "adapt_seconds must be greater than 0"),
    ({"adapt": True, "adapt_steps": 2.5}, "adapt_steps must be a whole number"),
    ({"adapt": True, "adapt_profile": "box"}, "unknown adapt_profile"),
    ({"adapt": True, "model": "cubic"}, "adapt needs a network model"),
])
def test_bad_adapt_params_answer_422_json(server, params, words):
    response = infer(server, {"target_spacing": 1.5, **params}, image=STUDY_ID, output="json")
    assert response.status_code == 422, response.text[:300]
    assert words in response.json()["detail"]


def test_the_log_names_no_patient_file(server, data):
    infer(server, {"model": "linear", "target_spacing": 2.0}, image=STUDY_ID, output="json")
    log = server.log_text()
    assert "ct_super_resolution: done" in log
    for name in (STUDY_ID, UPLOAD_NAME.split(".")[0]):
        assert name not in log


def test_no_request_modified_the_datastore(data):
    """Runs last in this module: the studies image is byte-identical and no result became a label."""
    assert sha256(data["study"]) == data["study_sha"]
    assert not any((data["studies"] / "labels").rglob("*.*"))
