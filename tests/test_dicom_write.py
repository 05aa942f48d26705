"""Derived DICOM series writing: geometry round trips, identity and UIDs, atomicity, inputs untouched."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import shared
from ctsr_models.io import InputError, Volume, dicom_write, read_dicom, write_dicom_series
from dicom_factory import axes, linear_hu, oblique_iop, phantom_slices, stack_ipps, write_slices


def rotation(iop) -> np.ndarray:
    row, col, normal = axes(iop)
    return np.column_stack([row, col, normal])


def source_volume(tmp_path: Path, iop=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0)) -> tuple[Volume, Path]:
    """A volume read from a small synthetic source series (so its meta is a real reader's meta)."""
    folder = tmp_path / "source"
    ipps = stack_ipps((-31.5, 12.25, 87.0), iop, np.arange(5) * 2.5)
    write_slices(folder, phantom_slices(ipps, iop, (0.7, 0.6), (9, 11), linear_hu), ipps, iop=iop,
                 pixel_spacing=(0.7, 0.6))
    return read_dicom(folder), folder


def folder_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("iop", [(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), oblique_iop((17, -24, 51))], ids=["axial", "oblique"])
def test_round_trip_keeps_geometry_and_rounds_voxels(tmp_path, iop):
    source, _ = source_volume(tmp_path, iop)
    rng = np.random.default_rng(3)
    vol = source.replace(array=(source.array + rng.uniform(-0.49, 0.49, source.shape)).astype(np.float32),
                         spacing=(0.6, 0.7, 1.25), slice_thickness=1.25)
    out = write_dicom_series(vol, tmp_path / "out")
    back = read_dicom(out)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-4)
    np.testing.assert_allclose(back.direction_matrix, rotation(iop), atol=1e-4)
    np.testing.assert_array_equal(back.array, np.rint(vol.array))
    assert back.slice_thickness == 1.25 and back.findings == []


def test_headers_are_a_new_derived_series_of_the_same_study(tmp_path):
    vol, source_folder = source_volume(tmp_path, oblique_iop((5, 10, 15)))
    source_sops = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in source_folder.iterdir()}
    out = write_dicom_series(vol, tmp_path / "out")
    files = sorted(out.iterdir())
    headers = [pydicom.dcmread(p) for p in files]
    assert len(files) == vol.shape[0]
    normal = vol.direction_matrix[:, 2]
    sops = set()
    for k, ds in enumerate(headers):
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert ds.SeriesInstanceUID != vol.meta["SeriesInstanceUID"]
        assert ds.SeriesInstanceUID == headers[0].SeriesInstanceUID
        assert ds.StudyInstanceUID == vol.meta["StudyInstanceUID"]
        assert ds.FrameOfReferenceUID == vol.meta["FrameOfReferenceUID"]
        assert str(ds.PatientName) == "Phantom^Test" and ds.PatientID == "PH001" and ds.AccessionNumber == "ACC1"
        assert ds.StudyDate == "20240102" and ds.PatientBirthDate == "19700101" and ds.PatientPosition == "HFS"
        assert ds.SeriesDescription == "Synthetic 2mm [CT Enhance]" and ds.SeriesNumber == 1003
        assert ds.Modality == "CT" and ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert ds.InstanceNumber == k + 1 and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        expected = np.asarray(vol.origin) + k * vol.spacing[2] * normal
        np.testing.assert_allclose(np.asarray(ds.ImagePositionPatient, float), expected, atol=1e-6)
        sops.add(ds.SOPInstanceUID)
    assert len(sops) == len(files) and not sops & source_sops


def test_description_dtype_and_volumes_without_meta(tmp_path):
    vol = Volume(np.array([[[-3000.0, -1024.4]], [[0.6, 40000.0]]], np.float32), spacing=(1, 1, 2), origin=(0, 0, 0))
    out = write_dicom_series(vol, tmp_path / "u16", series_description="SR x4", dtype="uint16")
    ds = pydicom.dcmread(sorted(out.iterdir())[0])
    assert ds.SeriesDescription == "SR x4" and ds.PixelRepresentation == 0 and float(ds.RescaleIntercept) == -1024
    assert ds.StudyInstanceUID and ds.FrameOfReferenceUID and str(ds.PatientName) == ""
    np.testing.assert_array_equal(read_dicom(out).array.ravel(), [-1024, -1024, 1, 40000])
    signed = read_dicom(write_dicom_series(vol, tmp_path / "i16"))
    np.testing.assert_array_equal(signed.array.ravel(), [-3000, -1024, 1, 32767])
    with pytest.raises(ValueError, match="int16"):
        write_dicom_series(vol, tmp_path / "bad", dtype="float32")


def test_left_handed_direction_reads_back_at_the_same_physical_places(tmp_path):
    direction = np.diag([1.0, 1.0, -1.0])
    array = np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2)
    vol = Volume(array, spacing=(0.5, 0.5, 3.0), origin=(1.0, 2.0, 30.0), direction=direction.ravel())
    back = read_dicom(write_dicom_series(vol, tmp_path / "out"))
    np.testing.assert_array_equal(back.array, array[::-1])
    np.testing.assert_allclose(back.direction_matrix, np.eye(3), atol=1e-6)
    for index in ([0, 0, 0], [1, 1, 2], [1, 0, 1]):
        k_back = 2 - index[2]
        np.testing.assert_allclose(back.index_to_physical(np.array([index[0], index[1], k_back], float)),
                                   vol.index_to_physical(np.array(index, float)), atol=1e-6)


def test_writing_is_atomic_and_refuses_a_non_empty_folder(tmp_path, monkeypatch):
    vol, _ = source_volume(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(InputError, match="not empty.*--overwrite"):
        write_dicom_series(vol, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    write_dicom_series(vol, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [f"IM{k:05d}.dcm" for k in range(1, 6)]

    real_write, calls = pydicom.dcmwrite, []

    def failing_write(path, ds, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real_write(path, ds, **kwargs)

    monkeypatch.setattr(dicom_write.pydicom, "dcmwrite", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_series(vol, tmp_path / "failed")
    assert not (tmp_path / "failed").exists()
    assert all(Path(c).parent.name.endswith(".partial") for c in calls)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "source"]


def test_real_series_round_trip_leaves_the_source_unchanged(tmp_path):
    source = shared("ct/chest_4dct_phase00_dicom")
    before = folder_hashes(source)
    vol = read_dicom(source)
    crop = vol.replace(array=vol.array[60:66, 100:300, 150:350],
                       origin=tuple(vol.index_to_physical(np.array([150.0, 100.0, 60.0]))))
    back = read_dicom(write_dicom_series(crop, tmp_path / "out"))
    assert folder_hashes(source) == before
    assert back.geometry_dict() == crop.geometry_dict()
    np.testing.assert_array_equal(back.array, crop.array)
    for keyword in ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID", "StudyDate"):
        assert back.meta.get(keyword) == vol.meta.get(keyword)
    assert back.meta["SeriesInstanceUID"] != vol.meta["SeriesInstanceUID"]
    assert back.meta["SeriesDescription"].endswith("[CT Enhance]")


def test_reading_and_writing_leave_a_synthetic_source_unchanged(tmp_path):
    vol, folder = source_volume(tmp_path)
    before = folder_hashes(folder)
    write_dicom_series(read_dicom(folder, resample_irregular=True), tmp_path / "out")
    assert folder_hashes(folder) == before


def test_derivation_describes_the_series_and_references_its_source(tmp_path):
    vol, source_folder = source_volume(tmp_path)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(source_folder.iterdir())]
    instances = tuple((str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in sources)
    derivation = dicom_write.Derivation(method="AI-enhanced", model="sr_unet_small_v3", spacing_mm=1.25,
                                        details="AI-generated detail.", source_instances=instances)
    out = write_dicom_series(vol, tmp_path / "out", derivation=derivation)
    headers = [pydicom.dcmread(p) for p in sorted(out.iterdir())]
    for ds in headers:
        assert ds.SeriesDescription == "AI-enhanced 1.25 mm sr_unet_small_v3 [CT Enhance]"
        assert ds.DerivationDescription == ("AI-enhanced by CT Enhance (ctsr_models 0.1.0), model sr_unet_small_v3, "
                                            "slice spacing 1.25 mm. AI-generated detail.")
        assert len(ds.ReferencedSeriesSequence) == 1
        item = ds.ReferencedSeriesSequence[0]
        assert item.SeriesInstanceUID == vol.meta["SeriesInstanceUID"]
        assert [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in item.ReferencedInstanceSequence] == \
            list(instances)
        assert ds.BurnedInAnnotation == "NO" and ds.ManufacturerModelName == "CT Enhance"
    np.testing.assert_array_equal(read_dicom(out).array, np.rint(vol.array))
    explicit = write_dicom_series(vol, tmp_path / "explicit", series_description="mine", derivation=derivation)
    assert pydicom.dcmread(sorted(explicit.iterdir())[0]).SeriesDescription == "mine"


def test_long_descriptions_keep_the_tag_and_datasets_equal_the_files(tmp_path):
    vol, _ = source_volume(tmp_path)
    long = dicom_write.Derivation(method="AI estimate from X-rays", model="m" * 80, spacing_mm=2.0,
                                  source_series=("1.2.3", "1.2.4"))
    text = long.series_description()
    assert len(text) == 64 and text.endswith(" [CT Enhance]") and text.startswith("AI estimate from X-rays 2 mm mmm")
    datasets = list(dicom_write.derived_series_datasets(vol, derivation=long))
    assert [d.InstanceNumber for d in datasets] == list(range(1, vol.shape[0] + 1))
    assert len({d.SeriesInstanceUID for d in datasets}) == 1
    assert [i.SeriesInstanceUID for i in datasets[0].ReferencedSeriesSequence] == ["1.2.3", "1.2.4"]
    assert "ReferencedInstanceSequence" not in datasets[0].ReferencedSeriesSequence[0]
    stacked = np.stack([d.pixel_array for d in datasets])
    np.testing.assert_array_equal(stacked, np.rint(vol.array).astype(np.int16))
    with pytest.raises(ValueError, match="int16"):
        dicom_write.derived_series_datasets(vol, dtype="float32")
    plain = next(iter(dicom_write.derived_series_datasets(vol)))
    assert "DerivationDescription" in plain and "ReferencedSeriesSequence" not in plain
