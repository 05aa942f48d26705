"""The real MONAI Label server's ``ct_denoise`` task: listed in ``/info/`` with its models and parameters
when a denoising model is shipped, the same voxels and geometry as ``ctsr-denoise``, and 4xx JSON for bad
requests while the server keeps serving. A tiny network with a perturbed head stands in for the shipped
model (``$CTSR_WEIGHTS_DIR``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
import torch

from conftest import shared
from ctsr_models.io.checksum import sha256
from ctsr_models.nets import build_net
from server_fixture import Server, leftovers, running_server
from test_denoise import CROP, cli
from test_server import infer, save_result

TASK = "ct_denoise"
KWARGS = {"in_slices": 3, "features": [4, 8], "num_res_units": 1}


def _tiny_denoise_model(folder: Path) -> Path:
    folder.mkdir()
    torch.manual_seed(0)
    net = build_net("denoise_unet", **KWARGS)
    with torch.no_grad():
        net.head.weight.normal_(0.0, 0.05)  # a network whose output differs from its input
    torch.save(net.state_dict(), folder / "tiny_dn.pt")
    manifest = {"default": None, "defaults": {"denoise": "tiny_dn"}, "models": [{
        "name": "tiny_dn", "net": "denoise_unet", "net_kwargs": KWARGS, "weights": "tiny_dn.pt",
        "sha256": sha256(folder / "tiny_dn.pt"), "roi_size": [1, 48, 48], "task": "denoise",
        "description": "tiny test model"}]}
    (folder / "models.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("denoise_server")
    image = sitk.ReadImage(str(shared(CROP)))[:, :, 60:68]
    sitk.WriteImage(image, str(root / "low.nii.gz"))
    (root / "notes.txt").write_text("not an image")
    return {"root": root, "low": root / "low.nii.gz", "text": root / "notes.txt",
            "models": _tiny_denoise_model(root / "models")}


@pytest.fixture(scope="module")
def server(data, tmp_path_factory) -> Server:
    studies = tmp_path_factory.mktemp("denoise_studies")
    with running_server(studies, env={"CTSR_WEIGHTS_DIR": str(data["models"])}) as srv:
        yield srv


def test_server_round_trip_gives_the_cli_voxels(server, data):
    info = requests.get(f"{server.url}/info/", timeout=10).json()["models"][TASK]
    assert info["type"] == "others" and info["models"] == ["default", "tiny_dn"]
    assert info["params"]["model"]["default"] == "default"
    assert info["params"]["device"]["choices"] == ["auto", "cpu", "cuda"]
    path, result = save_result(infer(server, {"device": "cpu"}, upload=data["low"], task=TASK), data["root"] / "srv")
    assert result["model"] == "tiny_dn" and "denoised by AI model tiny_dn" in result["findings"][-1]
    proc = cli(data["low"], data["root"] / "cli.nrrd", "--device", "cpu", models=data["models"])
    assert proc.returncode == 0, proc.stderr
    a, b = sitk.ReadImage(str(path)), sitk.ReadImage(str(data["root"] / "cli.nrrd"))
    src = sitk.ReadImage(str(data["low"]))
    assert sitk.GetArrayViewFromImage(a).dtype == np.int16
    assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
    assert not np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(src))
    for getter in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(a, getter)(), getattr(src, getter)(), atol=1e-4)


@pytest.mark.parametrize("case, status, words", [
    ("unknown model", 404, "unknown model 'nope'"),
    ("unknown device", 422, "device"),
    ("text upload", 400, "not a supported input"),
])
def test_bad_requests_answer_4xx_json_and_the_server_keeps_serving(server, data, case, status, words):
    params, upload = {"unknown model": ({"model": "nope"}, data["low"]), "unknown device": ({"device": "tpu"},
                                                                                           data["low"]),
                      "text upload": ({}, data["text"])}[case]
    response = infer(server, params, upload=upload, task=TASK)
    assert response.status_code == status, response.text[:300]
    detail = response.json()["detail"]
    assert isinstance(detail, str) and words in detail and "\n" not in detail
    assert leftovers(server, wait_s=0.5) == []
    assert requests.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"
