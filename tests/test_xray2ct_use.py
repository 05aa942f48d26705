"""X-ray → CT in use: ``ctsr-drr`` makes a pair from a real CT, ``ctsr-xray2ct`` and the real MONAI Label
server (task ``xray_to_ct``) reconstruct it with the same voxels, place the volume where the CT was,
report how well it re-projects onto the inputs (before/after refinement), run on a real chest
radiograph (no truth, and they say so), and refuse bad input with one line / a 4xx JSON.

A small untrained network stands in for the shipped model (``$CTSR_WEIGHTS_DIR``), so these tests
check the pipeline and its geometry, not the model's quality (that is ``benchmarks/xray2ct_benchmark.py``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
import torch

from conftest import shared
from ctsr_models.io import read_volume
from ctsr_models.io.checksum import sha256
from ctsr_models.nets import build_net
from ctsr_models.physics import ProjectionGeometry, save_geometries
from server_fixture import Server, leftovers, running_server

BIN = Path(sys.executable).parent
TASK = "xray_to_ct"
SETUP = {"size": 32, "fov_mm": 320.0, "detector_px": 32}
TIMEOUT = 300


def _tiny_xray_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    kwargs = {"size": 32, "detector_px": 32, "features_2d": [4, 8], "features_3d": [4, 8]}
    torch.save(build_net("xray2ct", **kwargs).state_dict(), folder / "tiny_xray.pt")
    manifest = {"default": None, "defaults": {"xray2ct": "tiny_xray"}, "models": [{
        "name": "tiny_xray", "net": "xray2ct", "net_kwargs": kwargs, "weights": "tiny_xray.pt",
        "sha256": sha256(folder / "tiny_xray.pt"), "task": "xray2ct", "extra": {"setup": SETUP}}]}
    (folder / "models.json").write_text(json.dumps(manifest))
    return folder


def cli(name: str, *args: str | Path, models: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "CTSR_WEIGHTS_DIR": str(models)}
    return subprocess.run([str(BIN / name), *map(str, args), "--quiet"], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT, check=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A DRR pair of a real abdomen CT (ctsr-drr), a tiny model and a real chest CR."""
    root = tmp_path_factory.mktemp("xray_use")
    ct_path = shared("ct/totalseg/example_ct_sm.nii.gz")
    models = _tiny_xray_model(root / "models")
    proc = cli("ctsr-drr", ct_path, root / "drr", "--views", "pa,lateral", "--detector-px", "96", models=models)
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "ct": ct_path, "models": models, "pa": root / "drr" / "pa.dcm",
            "lateral": root / "drr" / "lateral.dcm", "geometry": root / "drr" / "geometry.json",
            "cr": shared("dicom_edge/pydicom_data/RG1_UNCI.dcm")}


def reconstruct_cli(data, out: Path, *extra: str) -> dict:
    proc = cli("ctsr-xray2ct", data["pa"], data["lateral"], out, *extra, models=data["models"])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_cli_places_the_volume_on_the_ct_and_refinement_improves_reprojection(data):
    report = reconstruct_cli(data, data["root"] / "cli.nrrd", "--refine-steps", "30")
    out = sitk.ReadImage(str(data["root"] / "cli.nrrd"))
    assert out.GetSize() == (32, 32, 32) and sitk.GetArrayViewFromImage(out).dtype == np.int16
    np.testing.assert_allclose(out.GetSpacing(), (10.0, 10.0, 10.0))
    # ctsr-drr centres both views on the CT's box: the output cube is centred there too (within 1 mm)
    ct = read_volume(data["ct"])
    box_centre = ct.index_to_physical((np.asarray(ct.shape[::-1]) - 1) / 2)
    out_centre = np.asarray(out.TransformContinuousIndexToPhysicalPoint([15.5] * 3))
    assert np.linalg.norm(out_centre - box_centre) < 1.0
    consistency = report["projection_consistency_db"]
    # an untrained network starts far off; 30 small steps of the smooth correction must still help
    assert consistency["after"]["mean"] > consistency["before"]["mean"] + 1.0, consistency
    assert any("not a CT scan" in f for f in report["findings"])


def test_geometry_file_gives_the_same_result_as_the_dicom_tags(data):
    base = reconstruct_cli(data, data["root"] / "tags.nrrd", "--refine-steps", "0")
    given = reconstruct_cli(data, data["root"] / "file.nrrd", "--refine-steps", "0", "--geometry", data["geometry"])
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(data["root"] / n))) for n in ("tags.nrrd", "file.nrrd"))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert base["projection_consistency_db"]["before"] == pytest.approx(given["projection_consistency_db"]["before"],
                                                                        abs=0.05)


def test_a_real_chest_radiograph_runs_and_the_result_says_what_was_assumed(data):
    # no real frontal + lateral pair of one person is available offline: a real chest CR (PA, MONOCHROME1,
    # no usable PixelSpacing) with the simulated lateral; there is no truth, only the report
    # (two different bodies: the pair check would refuse it, so it is switched off as for research use)
    proc = cli("ctsr-xray2ct", data["cr"], data["lateral"], data["root"] / "real.nii.gz", "--refine-steps", "5",
               "--no-pair-check",
               models=data["models"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert any("estimate" in f for f in report["findings"])
    assert any("MONOCHROME1 inverted" in f for f in report["findings"])
    assert any(f.startswith("geometry assumed") for f in report["findings"])
    assert "after" in report["projection_consistency_db"]  # consistency is reported; there is no truth to score


@pytest.mark.parametrize("case, words", [
    ("ct_as_frontal", "slices of a volume"),
    ("same_view_twice", "both images are frontal views"),
    ("bad_steps", "refine steps"),
])
def test_bad_input_is_one_line_and_nothing_is_written(data, case, words):
    out = data["root"] / f"bad_{case}.nrrd"
    if case == "ct_as_frontal":
        args = [data["ct"], data["lateral"], out]
    elif case == "same_view_twice":
        both = data["root"] / "same.json"
        pa = ProjectionGeometry.standard("pa", shape=(96, 96), pixel_mm=4.0)
        save_geometries({"frontal": pa, "lateral": pa}, both)
        args = [data["pa"], data["lateral"], out, "--geometry", both]
    else:
        args = [data["pa"], data["lateral"], out, "--refine-steps", "-1"]
    proc = cli("ctsr-xray2ct", *args, models=data["models"])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert not out.exists()


def _lung1_pair_through(model: str) -> tuple[object, np.ndarray]:
    """The default reconstruction by the shipped ``model`` (SHA-256 checked) of a Lung1 pair simulated on the
    model's own grid, and the truth on that grid (HU)."""
    from ctsr_models.data.xray_pairs import ct_net_to_hu, simulate_pair
    from ctsr_models.inference.models import resolve_model
    from ctsr_models.inference.xray2ct import XrayOptions, model_setup, reconstruct
    from ctsr_models.io.radiograph import Radiograph

    setup = model_setup(resolve_model(model, task="xray2ct"))
    pair = simulate_pair(read_volume(shared("ct/pyradiomics_lung1/lung1_image.nrrd")), setup, np.random.default_rng(0))
    frontal, lateral = (Radiograph(pair["line_integrals"][i], pair["geometries"][i], "line_integral") for i in range(2))
    return reconstruct(frontal, lateral, XrayOptions(model=model, device="cpu")), ct_net_to_hu(pair["ct_net"])


def test_v1_reprojects_the_chest_it_never_saw():
    """``xray2ct_v1`` on its held-out chest (Lung1): consistency after refinement within reach of the 35 dB
    target, and the volume closer to the truth than back-projection would be (benchmark: 19.65 dB; v1 21.98)."""
    from ctsr_models.metrics import psnr

    result, truth = _lung1_pair_through("xray2ct_v1")
    assert result.consistency["after"]["mean"] > 33.0, result.consistency
    assert psnr(result.volume.array, truth, -1000.0, 1500.0) > 20.5


def test_default_model_outputs_128_cubed_and_refines_in_the_coarse_grid():
    """The default ``xray2ct_v2`` (implicit decoder) gives 128³ at 2.5 mm by default, and refinement (projected
    on the 64³ box average) lifts the consistency of the full grid. Lung1 is one of its four training patients,
    so this checks the shipped weights and pipeline; how it does on unseen patients is the cross-validation
    in docs/benchmarks.md (measured here: 26.7 -> 34.8 dB, PSNR 24.64 dB)."""
    from ctsr_models.metrics import psnr

    result, truth = _lung1_pair_through("default")
    assert result.volume.array.shape == (128, 128, 128) and result.volume.spacing == (2.5, 2.5, 2.5)
    assert "xray2ct_v2" in " ".join(result.volume.findings)
    assert result.consistency["after"]["mean"] > result.consistency["before"]["mean"] + 5.0, result.consistency
    assert result.consistency["after"]["mean"] > 33.0, result.consistency
    assert psnr(result.volume.array, truth, -1000.0, 1500.0) > 23.0


@pytest.fixture(scope="module")
def server(data, tmp_path_factory) -> Server:
    studies = tmp_path_factory.mktemp("xray_studies")
    with running_server(studies, env={"CTSR_WEIGHTS_DIR": str(data["models"])}) as srv:
        yield srv


def post(server: Server, frontal: Path | None, lateral: Path | None, params: dict) -> requests.Response:
    files = {}
    if frontal:
        files["file"] = (frontal.name, frontal.open("rb"))
    if lateral:
        files["label"] = (lateral.name, lateral.open("rb"))
    try:
        return requests.post(f"{server.url}/infer/{TASK}", params={"output": "all"},
                             data={"params": json.dumps(params)}, files=files, timeout=TIMEOUT)
    finally:
        for _, handle in files.values():
            handle.close()


def test_server_gives_the_cli_voxels_and_reports_consistency(server, data):
    from test_server import save_result

    info = requests.get(f"{server.url}/info/", timeout=10).json()["models"][TASK]
    assert info["type"] == "others" and info["takes"] == "xray_pair" and info["models"] == ["default", "tiny_xray"]
    assert set(info["inputs"]) == {"image", "label"} and info["params"]["refine_steps"]["default"] >= 0
    path, result = save_result(post(server, data["pa"], data["lateral"], {"refine_steps": 5}), data["root"] / "srv")
    reconstruct_cli(data, data["root"] / "cli5.nrrd", "--refine-steps", "5")
    a, b = sitk.ReadImage(str(path)), sitk.ReadImage(str(data["root"] / "cli5.nrrd"))
    assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    assert set(result["projection_consistency_db"]) >= {"before", "after"}
    assert result["input"]["label"]["geometry"]["view"] == "ll"


@pytest.mark.parametrize("frontal, lateral, params, status, words", [
    ("pa", None, {}, 404, "no label"),
    ("pa", "lateral", {"refine_steps": 5000}, 422, "refine_steps"),
    ("pa", "lateral", {"model": "nope"}, 404, "unknown model"),
    ("ct", "lateral", {}, 400, "slices of a volume"),
])
def test_server_refuses_bad_requests_with_json_and_keeps_serving(server, data, frontal, lateral, params, status,
                                                                 words):
    response = post(server, data[frontal], data[lateral] if lateral else None, params)
    assert response.status_code == status, response.text[:300]
    assert words in response.json()["detail"]
    assert requests.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"
    assert leftovers(server) == []
