"""The Slicer module's uncertainty overlay and Denoise action, without Slicer.

The pure decisions (``CTEnhanceLib.overlay``, ``CTEnhanceLib.tasks``): which address the uncertainty is
fetched from, where it is written, the names, the colour range from the volume's 99th percentile, which
views show it, the AI-generated line, which models take ``samples``/``steps`` and within which bounds.
Then the client process (what the panel runs) against the stub server, for both tasks' diffusion models
(the same path for super-resolution and denoising), and against the real server with its shipped models:
a diffusion super-resolution of a small real crop with samples=2, steps=1 returns the result and its
uncertainty on the result's grid (fetched once, nothing left on the server); ``ct_denoise`` returns a
result on the input's grid; bad sampling parameters end in one line, in the server's words.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared
from test_slicer_module import MODULE_DIR, _sitk_grid, _thick_nrrd

from CTEnhanceLib import layout, overlay, stubserver  # noqa: E402 - MODULE_DIR is on sys.path
from CTEnhanceLib.client import Client, ClientError  # noqa: E402
from CTEnhanceLib.geometry import super_resolution_grid  # noqa: E402
from CTEnhanceLib.process import SubprocessClient, client_environment, enhance_command, info_command  # noqa: E402
from CTEnhanceLib.progress import Stage  # noqa: E402
from CTEnhanceLib.tasks import DENOISE_TASK, DIFFUSION_KIND, SR_TASK, TaskInfo, tasks_from_records  # noqa: E402

PROCESS_TIMEOUT_S = 240.0
AORTA = "ct/totalseg/aorta_report__test_result__models__ct_cropped.nii.gz"  # 1.5 mm, held out by no SR model


# --- pure decisions ---------------------------------------------------------------------------------------------------

def test_the_uncertainty_is_fetched_only_from_a_path_on_the_same_server():
    url = "/ctsr/result/0123456789abcdef0123456789abcdef/uncertainty"
    assert overlay.uncertainty_url({"uncertainty": {"url": url, "unit": "HU"}}) == url
    assert overlay.uncertainty_url({"model": "default"}) is None
    assert overlay.uncertainty_url({"uncertainty": "none"}) is None
    for bad in ("http://elsewhere.example/x", "//elsewhere.example/x", "/ctsr/../../etc/passwd", "ctsr/result",
                "/a?token=1", 7):
        with pytest.raises(ValueError, match="not a path on it"):
            overlay.uncertainty_url({"uncertainty": {"url": bad}})


@pytest.mark.parametrize(("output", "expected"), [("/t/result.nrrd", "/t/result.uncertainty.nrrd"),
                                                  ("/t/a.b.nii.gz", "/t/a.b.uncertainty.nrrd"),
                                                  ("/t/x.MHA", "/t/x.uncertainty.nrrd")])
def test_the_uncertainty_file_sits_beside_the_result(output, expected):
    assert overlay.uncertainty_path(output) == Path(expected)


def test_names_say_what_the_volumes_are():
    assert overlay.uncertainty_name("CT chest") == "CT chest — uncertainty (AI, HU std)"
    assert layout.result_name("low dose") == "low dose enhanced (AI-generated)"
    assert layout.result_name("low dose", denoised=True) == "low dose (AI-denoised)"
    assert layout.result_name("low dose", denoised=True, ai_generated=True) == "low dose (AI-denoised, AI-generated)"


def test_the_colour_range_runs_from_zero_to_the_99th_percentile():
    rng = np.random.default_rng(0)
    std = rng.exponential(20.0, size=(16, 32, 32)).astype(np.float32)
    window = overlay.overlay_window(float(np.percentile(std, overlay.WINDOW_PERCENTILE)))
    assert window.lower == 0.0 and window.upper == pytest.approx(20.0 * np.log(100.0), rel=0.05)  # exp. quantile
    assert np.mean(std > window.upper) == pytest.approx(0.01, abs=0.002)
    assert window.threshold == pytest.approx(0.05 * window.upper)
    assert (window.window, window.level) == pytest.approx((window.upper, window.upper / 2))
    flat = overlay.overlay_window(0.0)  # one sample: no spread anywhere
    assert (flat.lower, flat.upper) == (0.0, overlay.MIN_WINDOW_HU)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite and >= 0"):
            overlay.overlay_window(bad)


def test_the_overlay_goes_on_the_result_views_only():
    plan = overlay.overlay_plan("vtkMRMLScalarVolumeNode2", "vtkMRMLScalarVolumeNode3")
    assert [plan[v.tag] for v in layout.VIEWS] == [None] * 3 + ["vtkMRMLScalarVolumeNode3"] * 3
    assert [v.row for v in layout.VIEWS][3:] == ["enhanced"] * 3
    assert set(overlay.overlay_plan("a", "b", shown=False).values()) == {None}
    assert set(overlay.overlay_plan("a", None).values()) == {None}
    with pytest.raises(ValueError, match="volume of its own"):
        overlay.overlay_plan("a", "a")


def test_the_ai_generated_line_follows_the_result_and_the_toggle():
    assert overlay.banner_text({"ai_generated": True}, True) == "AI-generated detail — uncertainty shown"
    assert overlay.banner_text({"ai_generated": True}, False) == "AI-generated detail — uncertainty hidden"
    assert overlay.banner_text({"ai_generated": True}, None) == "AI-generated detail"
    assert overlay.banner_text({"model": "default"}, True) == ""
    assert overlay.banner_text({"ai_generated": "yes"}, True) == ""


SAMPLING = {"samples": {"type": "integer", "default": None, "exclusive_minimum": 0, "maximum": 16},
            "steps": {"type": "integer", "default": None, "exclusive_minimum": 0, "maximum": 50}}


def _sr_entry(**extra) -> dict:
    return {"type": "others", "output": {"extensions": [".nrrd"]}, "params": {"model": {"type": "string"}, **SAMPLING},
            "models": ["default", "diffusion", "sr_diffusion_x", "cubic"], "default_model": "default", **extra}


def test_model_kinds_decide_the_sampling_options():
    kinds = {"default": "regression", "diffusion": "diffusion", "sr_diffusion_x": "diffusion", "cubic": "interpolation"}
    task = TaskInfo.from_info(SR_TASK, _sr_entry(model_kinds=kinds))
    assert [m for m in task.models if task.samples_model(m)] == ["diffusion", "sr_diffusion_x"]
    assert not task.samples_model(None)  # the default model
    assert task.bounds("samples") == (1, 16) and task.bounds("steps") == (1, 50)
    assert task.sampling_params("diffusion", 2, 1) == {"samples": 2, "steps": 1}
    assert task.sampling_params("diffusion", None, None) == {}  # the model's own defaults
    assert task.sampling_params("default", 2, 1) == {}  # never sent for another kind
    for samples in (0, 17):
        with pytest.raises(ValueError, match="samples must be from 1 to 16"):
            task.sampling_params("diffusion", samples, None)
    again = tasks_from_records([dataclasses.asdict(task)])[0]  # what the client process's info hands the panel
    assert again.model_kinds == kinds and again.samples_model("sr_diffusion_x")
    no_sampling = TaskInfo.from_info(SR_TASK, {**_sr_entry(model_kinds=kinds), "params": {}})
    assert not no_sampling.samples_model("diffusion")


def test_without_model_kinds_the_descriptions_tell_a_diffusion_model():
    descriptions = {"default": "3D residual U-Net", "diffusion": "diffusion",
                    "sr_diffusion_x": "ResShift diffusion SR; calibrated std", "cubic": "cubic B-spline"}
    task = TaskInfo.from_info(SR_TASK, _sr_entry(model_descriptions=descriptions))
    assert [task.model_kind(m) for m in task.models] == ["", DIFFUSION_KIND, DIFFUSION_KIND, ""]


def test_the_run_button_and_task_list_name_the_action():
    sr, denoise = TaskInfo(SR_TASK), TaskInfo(DENOISE_TASK)
    assert (sr.action, denoise.action, TaskInfo("other").action) == ("Enhance", "Denoise (low dose)", "Run")
    assert (denoise.label, TaskInfo("other").label) == ("Denoise (low dose)", "other")


# --- the client process against the stub server: one path for every task ---------------------------------------------

@pytest.fixture
def stub_url() -> Iterator[str]:
    process = subprocess.Popen([sys.executable, "-m", "CTEnhanceLib.stubserver"], stdout=subprocess.PIPE, text=True,
                               env=client_environment())
    try:
        yield json.loads(process.stdout.readline())["url"]
    finally:
        process.kill()
        process.wait(timeout=30)


def run_client(url: str, task: str, image: Path, output: Path, params: dict) -> tuple[dict, set[Stage]]:
    """The panel's request: the client process, polled; its result record and the stages it went through."""
    runner = SubprocessClient(enhance_command(url, {"image": str(image)}, str(output), task, params))
    record = runner.wait(PROCESS_TIMEOUT_S)
    return record, set(runner.run.reader.stage_started_s)


def connect(url: str) -> dict[str, TaskInfo]:
    """The panel's Connect: the tasks the client process's ``info`` lists."""
    return {t.name: t for t in tasks_from_records(SubprocessClient(info_command(url)).wait(PROCESS_TIMEOUT_S)["tasks"])}


def assert_grid(actual, expected) -> None:
    """Same voxel grid: size exactly, spacing, origin and axes to float precision."""
    assert actual.size == expected.size
    np.testing.assert_allclose(actual.spacing, expected.spacing, atol=1e-4)
    np.testing.assert_allclose(actual.origin, expected.origin, atol=1e-3)
    np.testing.assert_allclose(actual.axes, expected.axes, atol=1e-6)


def diffusion_models(task: TaskInfo) -> list[str]:
    return [m for m in task.models if task.samples_model(m)]


@pytest.mark.parametrize("task_name", [SR_TASK, DENOISE_TASK])
def test_a_diffusion_result_comes_with_its_uncertainty_for_every_task(stub_url, tmp_path, task_name):
    thick = _thick_nrrd(tmp_path)
    task = connect(stub_url)[task_name]
    model = diffusion_models(task)[0]
    params = task.request_params(model=model, target_spacing=1.0 if "target_spacing" in task.params else None,
                                 **task.sampling_params(model, 2, 1))
    record, stages = run_client(stub_url, task_name, thick, tmp_path / "result.nrrd", params)
    assert stages == set(Stage) and record["server"]["diffusion"] == {"samples": 2, "steps": 1}
    assert record["uncertainty"] == str(tmp_path / "result.uncertainty.nrrd")
    result, std = (sitk.ReadImage(record[key]) for key in ("output", "uncertainty"))
    assert_grid(_sitk_grid(std), _sitk_grid(result))
    assert std.GetPixelID() == sitk.sitkFloat32
    expected = (super_resolution_grid(_sitk_grid(sitk.ReadImage(str(thick))), 1.0) if task_name == SR_TASK
                else _sitk_grid(sitk.ReadImage(str(thick))))
    assert_grid(_sitk_grid(result), expected)
    values = sitk.GetArrayFromImage(std)[:, 0, 0]
    if task_name == SR_TASK:  # the stub's uncertainty: each thin slice's distance (mm) from its slab's centre
        np.testing.assert_allclose(values[:5], [2.0, 1.0, 0.0, 1.0, 2.0])
    with pytest.raises(urllib.error.HTTPError) as again:  # handed out once: the client took it
        urllib.request.urlopen(stub_url + record["server"]["uncertainty"]["url"], timeout=10)
    assert again.value.code == 404
    plain, _ = run_client(stub_url, task_name, thick, tmp_path / "plain.nrrd", {"target_spacing": 1.0}
                          if task_name == SR_TASK else {})
    assert "uncertainty" not in plain and not (tmp_path / "plain.uncertainty.nrrd").exists()


class _LostUncertaintyHandler(stubserver.StubHandler):
    """A server whose result names an uncertainty it no longer has (expired, or taken by someone else)."""

    def _keep(self, uncertainty: bytes) -> dict:
        return {"uncertainty": {"url": f"/ctsr/result/{'0' * 32}/uncertainty"}}


def test_a_lost_uncertainty_fails_the_request_and_leaves_no_file(tmp_path):
    server = stubserver.start()
    server.RequestHandlerClass = _LostUncertaintyHandler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(ClientError, match=r"^The result came, but its uncertainty could not be fetched \(no unc"):
            Client(url).infer(SR_TASK, {"image": _thick_nrrd(tmp_path)}, tmp_path / "out.nrrd",
                              {"model": "stub_diffusion", "target_spacing": 1.0})
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thick.nrrd"]


# --- the real server, with its shipped models ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    from server_fixture import running_server

    studies = tmp_path_factory.mktemp("overlay_studies")
    with running_server(studies) as server:
        yield server, connect(server.url)


@pytest.fixture(scope="module")
def thick_crop(tmp_path_factory) -> Path:
    """A real CT crop (1.5 mm, 32 x 48 x 48) degraded to 8 slabs of 6 mm, as an int16 NRRD (as Slicer writes it)."""
    from ctsr_models.io import Volume, read_volume, write_volume
    from ctsr_models.physics.thick_slice import simulate_thick_slices

    thin = read_volume(shared(AORTA))
    crop = Volume(thin.array[40:72, 30:78, 28:76].astype(np.float32), thin.spacing, thin.origin, thin.direction)
    return write_volume(simulate_thick_slices(crop, thickness=6.0, profile="rect"),
                        tmp_path_factory.mktemp("thick") / "thick.nrrd")


def test_real_diffusion_enhance_returns_the_result_and_its_uncertainty_once(real_server, thick_crop, tmp_path):
    from server_fixture import leftovers

    server, tasks = real_server
    task = tasks[SR_TASK]
    models = diffusion_models(task)
    assert models, f"the server lists no diffusion model: {task.model_descriptions}"
    params = task.request_params(model=models[0], target_spacing=1.5, device="cpu",
                                 **task.sampling_params(models[0], 2, 1))
    record, stages = run_client(server.url, SR_TASK, thick_crop, tmp_path / "result.nrrd", params)
    details = record["server"]
    assert details["ai_generated"] is True and details["diffusion"]["samples"] == 2 and stages == set(Stage)
    result, std = sitk.ReadImage(record["output"]), sitk.ReadImage(record["uncertainty"])
    expected = super_resolution_grid(_sitk_grid(sitk.ReadImage(str(thick_crop))), 1.5)
    assert expected.size == (48, 48, 32)
    for image in (result, std):
        assert_grid(_sitk_grid(image), expected)
    values = sitk.GetArrayFromImage(std)
    assert std.GetPixelID() == sitk.sitkFloat32 and values.min() >= 0 and values.max() > 0
    window = overlay.overlay_window(float(np.percentile(values, overlay.WINDOW_PERCENTILE)))
    assert 0 < window.upper <= values.max()
    with pytest.raises(urllib.error.HTTPError) as again:
        urllib.request.urlopen(server.url + details["uncertainty"]["url"], timeout=10)
    assert again.value.code == 404
    assert leftovers(server) == []


def test_real_denoise_returns_a_result_on_the_input_grid(real_server, tmp_path):
    server, tasks = real_server
    if DENOISE_TASK not in tasks:
        pytest.skip("the server ships no denoising model (ct_denoise is not offered)")
    task = tasks[DENOISE_TASK]
    low = tmp_path / "low.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(shared(AORTA)))[24:88, 24:88, 60:66], str(low), useCompression=False)
    record, stages = run_client(server.url, DENOISE_TASK, low, tmp_path / "denoised.nrrd",
                                task.request_params(device="cpu"))
    assert stages == set(Stage) and "uncertainty" not in record
    expected = _sitk_grid(sitk.ReadImage(str(low)))
    assert record["server"]["model"]
    assert_grid(_sitk_grid(sitk.ReadImage(record["output"])), expected)
    models = diffusion_models(task)  # the latent diffusion denoiser takes the same path as SR
    assert models, f"the server lists no diffusion denoiser: {task.model_kinds}"
    for model in models:
        params = task.request_params(model=model, device="cpu", **task.sampling_params(model, 2, 1))
        sampled, _ = run_client(server.url, DENOISE_TASK, low, tmp_path / f"{model}.nrrd", params)
        assert sampled["server"]["ai_generated"] is True
        assert_grid(_sitk_grid(sitk.ReadImage(sampled["uncertainty"])), expected)


@pytest.mark.parametrize(("kind", "samples", "words"), [
    (DIFFUSION_KIND, 0, "samples must be greater than 0; got 0"),
    ("regression", 2, "samples applies to diffusion models only, not to "),
])
def test_bad_sampling_parameters_end_in_one_line(real_server, thick_crop, tmp_path, kind, samples, words):
    server, tasks = real_server
    task = tasks[SR_TASK]
    model = diffusion_models(task)[0] if kind == DIFFUSION_KIND else task.default_model
    assert task.samples_model(model) == (kind == DIFFUSION_KIND)
    cli = subprocess.run([sys.executable, "-m", "CTEnhanceLib.client", "--server", server.url, "--quiet", "enhance",
                          str(thick_crop), str(tmp_path / "out.nrrd"), "--target-spacing", "1.5", "--model", model,
                          "--params", json.dumps({"samples": samples})],
                         capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S, env=client_environment(),
                         cwd=MODULE_DIR)
    lines = [line for line in cli.stderr.splitlines() if line.strip()]
    assert cli.returncode == 2 and len(lines) == 1, cli.stderr
    assert lines[0].startswith("python -m CTEnhanceLib.client: error: ") and words in lines[0]
    assert not list(tmp_path.iterdir())
