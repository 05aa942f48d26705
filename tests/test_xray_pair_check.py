"""Impossible X-ray pairs are refused with their reason, valid pairs pass (issue 16, item 4).

Real radiographs from ``../shared/data/xray``, DRRs of real CTs made with the project's projector,
noise, a ``skimage.data`` photograph and a real CT slice; one CLI exit-2 case and one HTTP 422 case
through the real MONAI Label server (the fixtures of ``test_xray2ct_use``).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import skimage.data
from PIL import Image

from conftest import shared
from ctsr_models.io import read_volume
from ctsr_models.io.radiograph import Radiograph, read_radiograph
from ctsr_models.inference.xray_pair_check import PairError, check_pair
from ctsr_models.physics import ProjectionGeometry, VolumeGrid, drr
from test_xray2ct_use import TASK, cli, data, post, server  # noqa: F401 (fixtures)

PNG_A, PNG_B = "xray/torchxrayvision/00000001_000.png", "xray/torchxrayvision/16747_3_1.jpg"


def drr_pair(ct_path: str, views: tuple[str, str] = ("pa", "ll")) -> tuple[Radiograph, Radiograph]:
    """A DRR pair (96 px, 4 mm pixels) of a real CT, both views centred on the CT's box."""
    ct = read_volume(shared(ct_path))
    centre = ct.index_to_physical((np.asarray(ct.shape[::-1]) - 1) / 2)
    hu = np.asarray(ct.array, dtype=np.float32)
    rads = []
    for view in views:
        g = ProjectionGeometry.standard(view, shape=(96, 96), pixel_mm=4.0, isocentre=tuple(centre))
        rads.append(Radiograph(drr(hu, VolumeGrid.of(ct), g, step_mm=3.0), g, "line_integral"))
    return rads[0], rads[1]


@pytest.fixture(scope="module")
def lung_pair() -> tuple[Radiograph, Radiograph]:
    return drr_pair("ct/pyradiomics_lung1/lung1_image.nrrd")


def refused(frontal: Radiograph, lateral: Radiograph) -> str:
    with pytest.raises(PairError) as info:
        check_pair(frontal, lateral)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_drr_pairs_of_two_real_cts_are_accepted(lung_pair):
    for frontal, lateral in (lung_pair, drr_pair("ct/totalseg/example_ct_sm.nii.gz", ("ap", "rl"))):
        report = check_pair(frontal, lateral).to_dict()
        names = [c["name"] for c in report["checks"]]
        assert names == ["radiograph_frontal", "radiograph_lateral", "same_picture", "same_view", "same_body"]
        body = report["checks"][-1]["values"]
        assert body["unit"] == "mm" and body["profile_correlation"] > 0.9, body
        assert report["checks"][2]["values"]["correlation"] < 0.8


def test_the_same_image_twice_is_refused_also_mirrored_or_with_other_contrast(lung_pair):
    frontal = lung_pair[0]
    assert "same picture (correlation 1.000)" in refused(frontal, frontal)
    gamma = Radiograph(frontal.image ** 0.6 * 7.0 + 3.0, frontal.geometry.moved(), "display")
    mirrored = Radiograph(frontal.image[:, ::-1].copy(), lung_pair[1].geometry, "display")
    assert "same picture" in refused(frontal, gamma)
    assert "mirrored copy" in refused(frontal, mirrored)


def test_two_different_pa_chest_radiographs_are_refused_as_same_view():
    a, b = (read_radiograph(shared(p), fallback_view=v) for p, v in ((PNG_A, "pa"), (PNG_B, "lateral")))
    assert "both images are frontal views (by the image features)" in refused(a, b)
    tagged = read_radiograph(shared("xray/fodicom/CR-MONO1-10-chest"), fallback_view="lateral")
    assert "both images are frontal views" in refused(a, tagged)


def test_noise_a_photograph_and_a_ct_slice_are_not_radiographs(lung_pair, tmp_path):
    frontal, lateral = lung_pair
    noise = Radiograph(np.random.default_rng(0).uniform(0, 255, lateral.image.shape), lateral.geometry)
    assert "lateral image is noise" in refused(frontal, noise)
    Image.fromarray(skimage.data.astronaut()).save(tmp_path / "astronaut.png")
    photo = read_radiograph(tmp_path / "astronaut.png", fallback_view="lateral")
    assert "colour picture" in refused(frontal, photo)
    camera = Radiograph(skimage.data.camera().astype(np.float32), ProjectionGeometry.standard("ll", shape=(512, 512)))
    assert "fine texture of a photograph" in refused(frontal, camera)
    ct = read_volume(shared("ct/totalseg/example_ct_sm.nii.gz"))
    axial = np.asarray(ct.array[ct.shape[0] // 2], dtype=np.float32)
    slice_rad = Radiograph(axial, ProjectionGeometry.standard("ll", shape=axial.shape))
    assert "Hounsfield units of a CT slice" in refused(frontal, slice_rad)


def test_views_of_two_different_bodies_are_refused(lung_pair):
    abdomen = drr_pair("ct/totalseg/example_ct_sm.nii.gz")
    message = refused(lung_pair[0], abdomen[1])
    assert "common height" in message or "body ends" in message, message


def test_cli_exits_2_with_one_line_for_the_same_image_twice(data):
    out = data["root"] / "pair_same.nrrd"
    proc = cli("ctsr-xray2ct", data["pa"], data["pa"], out, "--refine-steps", "0", models=data["models"])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "same picture" in lines[0], proc.stderr
    assert not out.exists()


def test_server_answers_422_for_the_same_image_twice(server, data):
    response = post(server, data["pa"], data["pa"], {"refine_steps": 0})
    assert response.status_code == 422, response.text[:300]
    assert "same picture" in response.json()["detail"]
    assert requests.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"
    assert json.dumps(response.json()).count("\\n") == 0
