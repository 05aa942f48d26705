"""PACS round trip with a real Orthanc (DICOMweb plugin) and the real MONAI Label server.

A real chest CT series (8 slices of 2 mm, 512x512) is pushed to Orthanc through its REST API; the
server serves Orthanc (``--studies http://127.0.0.1:PORT/dicom-web``) and enhances the series by its
SeriesInstanceUID with ``store: true``. Checked: a new series appears in the same study; read back
over WADO-RS with the project's reader, its voxels equal ``ctsr-enhance``'s output for the same
input exactly (int16 HU) and its geometry within 0.01 mm; its tags (pydicom) are a derived CT series
of the same study, patient and frame of reference, with new UIDs, AI/derivation wording, references
to every source instance and rescale 1/0. Also: ``store`` on a folder server or for a NIfTI upload
is a 422; an unreachable PACS is a 503 and a refusing one a 502, each with one line; an X-ray → CT
estimate is stored in the radiographs' study, marked as an estimate, in a new frame of reference. Orthanc is
started by the suite (``.ci/orthanc``) and always stopped; the tests skip only where it cannot be
installed.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
import torch
from conftest import BIN, REPO, shared
from orthanc_fixture import Orthanc, running_orthanc
from server_fixture import Server, free_port, running_server

from ctsr_models.io import Volume, read_volume, write_volume
from ctsr_models.io.checksum import sha256
from ctsr_models.nets import build_net

if str(REPO) not in sys.path:  # ``python -m pytest`` from the repository root has it already
    sys.path.insert(0, str(REPO))

from monailabel_app.lib import pacs  # noqa: E402

TASK = "ct_super_resolution"
SLICES = slice(60, 68)
TIMEOUT = 300
GEOMETRY_MM = 0.01
PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")


@pytest.fixture(scope="module")
def orthanc() -> Orthanc:
    with running_orthanc() as server:
        yield server


@pytest.fixture(scope="module")
def source(orthanc, tmp_path_factory) -> dict:
    """8 slices of a real CT series, copied to a folder (for ``ctsr-enhance``) and pushed to Orthanc."""
    paths = sorted(shared("ct/chest_4dct_phase00_dicom").glob("*.dcm"))[SLICES]
    folder = tmp_path_factory.mktemp("pacs_source")
    for path in paths:
        (folder / path.name).write_bytes(path.read_bytes())
    assert orthanc.upload(paths) == len(paths)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    return {"folder": folder, "headers": headers, "study": headers[0].StudyInstanceUID,
            "series": headers[0].SeriesInstanceUID, "sops": {h.SOPInstanceUID for h in headers}}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A tiny untrained network (random, non-zero weights) as the ``default`` model: fast, and not an interpolation."""
    folder = tmp_path_factory.mktemp("pacs_models")
    torch.manual_seed(0)
    net = build_net("sr_resnet", features=4, num_blocks=1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(net.state_dict(), folder / "tiny.pt")
    manifest = {"default": "tiny", "models": [{
        "name": "tiny", "net": "sr_resnet", "net_kwargs": {"features": 4, "num_blocks": 1},
        "weights": "tiny.pt", "sha256": sha256(folder / "tiny.pt"), "roi_size": [32, 256, 256]}]}
    (folder / "models.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def server(orthanc, source, models, tmp_path_factory) -> Server:
    cache = tmp_path_factory.mktemp("dicomweb_cache")
    env = {"CTSR_WEIGHTS_DIR": str(models), "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(cache)}
    with running_server(orthanc.dicomweb, env=env, conf={"models": TASK}) as srv:
        yield srv


def enhance(server: Server, series: str, params: dict) -> requests.Response:
    """``POST /infer/ct_super_resolution?image=<SeriesInstanceUID>&output=json``."""
    return requests.post(f"{server.url}/infer/{TASK}", params={"image": series, "output": "json"},
                         data={"params": json.dumps(params)}, timeout=TIMEOUT)


def cli_enhance(source: Path, out: Path, model: str, models: Path) -> Volume:
    """``ctsr-enhance`` as a user runs it, on the same slices; its NRRD output read back."""
    import subprocess

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "CTSR_WEIGHTS_DIR": str(models)}
    proc = subprocess.run([str(BIN / "ctsr-enhance"), str(source), str(out), "--model", model, "--target-spacing",
                           "1", "--quiet"], capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr
    return read_volume(out)


def stored_series(orthanc: Orthanc, study: str, series: str, folder: Path) -> list[pydicom.Dataset]:
    """The instances of ``series`` retrieved over WADO-RS, also written to ``folder`` for the reader."""
    datasets = orthanc.client.retrieve_series(study, series)
    folder.mkdir(parents=True)
    for k, ds in enumerate(datasets):
        ds.save_as(folder / f"{k:04d}.dcm", write_like_original=False)
    return datasets


@pytest.mark.parametrize(("model", "method"), [("linear", "Interpolated 1 mm linear"),
                                               ("default", "AI-enhanced 1 mm tiny")])
def test_enhanced_series_is_stored_in_the_same_study(orthanc, source, server, models, model, method, tmp_path):
    response = enhance(server, source["series"], {"model": model, "target_spacing": 1.0, "store": True})
    assert response.status_code == 200, response.text[:500]
    stored = response.json()["pacs"]
    new_series = stored["series_instance_uid"]
    assert stored["stored"] is True and stored["pacs"] == orthanc.dicomweb
    assert stored["study_instance_uid"] == source["study"] and new_series != source["series"]
    assert stored["series_url"] == f"{orthanc.dicomweb}/studies/{source['study']}/series/{new_series}"
    in_study = {ds["0020000E"]["Value"][0] for ds in orthanc.client.search_for_series(
        search_filters={"StudyInstanceUID": source["study"]})}
    assert {source["series"], new_series} <= in_study

    datasets = stored_series(orthanc, source["study"], new_series, tmp_path / "stored")
    back = read_volume(tmp_path / "stored")
    reference = cli_enhance(source["folder"], tmp_path / "cli.nrrd", model, models)
    assert stored["instances"] == len(datasets) == reference.shape[0] == 2 * len(source["headers"])
    np.testing.assert_array_equal(back.array, reference.array)
    np.testing.assert_allclose(back.origin, reference.origin, atol=GEOMETRY_MM)
    np.testing.assert_allclose(back.spacing, reference.spacing, atol=GEOMETRY_MM)
    np.testing.assert_allclose(back.direction, reference.direction, atol=1e-6)
    assert_derived_tags(datasets, source, new_series, method)


def assert_derived_tags(datasets: list[pydicom.Dataset], source: dict, new_series: str, method: str) -> None:
    """A derived CT series of the source's study, patient and frame of reference (see the module docstring)."""
    first = source["headers"][0]
    sops = {ds.SOPInstanceUID for ds in datasets}
    assert len(sops) == len(datasets) and not sops & source["sops"]
    for ds in datasets:
        assert ds.SeriesInstanceUID == new_series and ds.StudyInstanceUID == first.StudyInstanceUID
        assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID
        for keyword in PATIENT_KEYWORDS:
            assert str(ds.get(keyword, "")) == str(first.get(keyword, "")), keyword
        assert ds.Modality == "CT" and ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert ds.SeriesDescription == f"{method} [CT Enhance]"
        assert ds.DerivationDescription.startswith(f"{method.split(' ')[0]} by CT Enhance")
        assert ("AI-generated" in ds.DerivationDescription) == method.startswith("AI")
        reference = ds.ReferencedSeriesSequence[0]
        assert reference.SeriesInstanceUID == source["series"]
        assert {item.ReferencedSOPInstanceUID for item in reference.ReferencedInstanceSequence} == source["sops"]
        assert ds.PixelRepresentation == 1 and ds.BitsStored == 16
        assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == 0.0 and ds.RescaleType == "HU"
        assert ds.BurnedInAnnotation == "NO" and ds.Manufacturer == "ctsr_models"


def test_store_refusals_are_one_line_4xx(server, source, tmp_path):
    upload = tmp_path / "upload.nii.gz"
    write_volume(read_volume(source["folder"]), upload)
    with upload.open("rb") as f:
        response = requests.post(f"{server.url}/infer/{TASK}", params={"output": "json"}, timeout=TIMEOUT,
                                 data={"params": json.dumps({"model": "linear", "store": True})},
                                 files={"file": (upload.name, f)})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("store needs a DICOM input")
    bad = enhance(server, source["series"], {"model": "linear", "store": "yes"})
    assert bad.status_code == 422 and "store must be true or false" in bad.json()["detail"]
    unknown = enhance(server, "1.2.3.4.5.6.7", {"model": "linear", "store": True})
    assert unknown.status_code == 404 and unknown.json()["detail"].startswith("the PACS holds no series")


def test_store_on_a_folder_server_is_refused(tmp_path):
    assert pacs.pacs_target(str(tmp_path), {}) is None
    with pytest.raises(pacs.ParamError, match="store needs a server that serves a PACS"):
        pacs.wants_store(None, True, {"StudyInstanceUID": "1.2.3"})
    assert pacs.wants_store(None, False, {"StudyInstanceUID": "1.2.3"}) is False
    with pytest.raises(ValueError, match="store_results true needs a PACS"):
        pacs.pacs_target(str(tmp_path), {"store_results": "true"})
    always = pacs.pacs_target("http://user:secret@127.0.0.1:1/dicom-web/", {"store_results": "true"})
    assert always.public_url == "http://127.0.0.1:1/dicom-web" and always.always
    assert pacs.wants_store(always, False, {"StudyInstanceUID": "1.2.3"}) is True
    assert pacs.wants_store(always, False, {}) is False


def small_volume(source: dict) -> Volume:
    vol = read_volume(source["folder"])
    return vol.replace(array=vol.array[:2, :16, :16])


def test_unreachable_pacs_is_503_and_refusing_pacs_502(orthanc, source):
    derivation = pacs.enhanced_derivation("linear", 1.0)
    closed = pacs.pacs_target(f"http://127.0.0.1:{free_port()}/dicom-web", {})
    with pytest.raises(pacs.HTTPException) as unreachable:
        pacs.store_volume(closed, small_volume(source), derivation)
    assert unreachable.value.status_code == 503 and "cannot be reached" in unreachable.value.detail
    assert "\n" not in unreachable.value.detail
    refusing = pacs.pacs_target(orthanc.rest + "/no-such-root", {})
    with pytest.raises(pacs.HTTPException) as refused:
        pacs.store_volume(refusing, small_volume(source), derivation)
    assert refused.value.status_code == 502 and "refused the result (HTTP 404" in refused.value.detail


def test_xray_estimate_is_stored_in_the_radiographs_study_as_an_estimate(orthanc):
    from monailabel_app.lib.infers.xray_to_ct import XrayToCT

    from ctsr_models.io.radiograph import read_radiograph

    path = shared("dicom_edge/pydicom_data/RG1_UNCI.dcm")
    radiograph = read_radiograph(path)
    assert orthanc.upload([path]) == 1
    estimate = Volume(np.full((3, 8, 8), 40.0, np.float32), spacing=(2.0, 2.0, 2.5), origin=(-8.0, -8.0, 0.0),
                      meta=dict(radiograph.meta))
    derivation, same_frame = XrayToCT().derivation({"image": radiograph, "label": radiograph}, {"model": "default"},
                                                   estimate)
    target = pacs.pacs_target(orthanc.dicomweb, {})
    stored = pacs.store_volume(target, estimate, derivation, same_frame)
    study, source_series = radiograph.meta["StudyInstanceUID"], radiograph.meta["SeriesInstanceUID"]
    assert stored["study_instance_uid"] == study and stored["instances"] == 3
    datasets = orthanc.client.retrieve_series(study, stored["series_instance_uid"])
    assert len(datasets) == 3
    for ds in datasets:
        assert ds.SeriesDescription.startswith("AI estimate from X-rays 2.5 mm ") and ds.Modality == "CT"
        assert "ESTIMATE" in ds.DerivationDescription and "not an acquired CT" in ds.DerivationDescription
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series
        assert ds.FrameOfReferenceUID and ds.FrameOfReferenceUID != radiograph.meta.get("FrameOfReferenceUID")
        assert str(ds.PatientID) == str(radiograph.meta["PatientID"])
        assert ds.pixel_array.tolist() == np.full((8, 8), 40).tolist()
