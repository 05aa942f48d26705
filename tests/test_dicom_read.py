"""DICOM series reading: exact geometry, refusals of irregular geometry, resampling, containers,
codecs, and every real series in ../shared/data."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from conftest import SHARED_DATA, shared
from ctsr_models.io import GeometryError, InputError, dicom_files, is_dicom_file, list_dicom_series, read_dicom
from dicom_factory import (AXIAL, axes, in_field_of_view, linear_hu, oblique_iop, phantom_slices, slice_coordinates,
                           stack_ipps, write_enhanced, write_slices)

SHAPE, PS = (12, 10), (0.7, 0.6)


def make_series(folder: Path, positions, *, iop=AXIAL, shear=(0.0, 0.0), origin=(-40.0, 25.0, 110.0), **kwargs):
    ipps = stack_ipps(origin, iop, positions, shear_mm_per_mm=shear)
    slices = phantom_slices(ipps, iop, PS, SHAPE, linear_hu)
    write_slices(folder, slices, ipps, iop=iop, pixel_spacing=PS, **kwargs)
    return ipps, slices


def sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def assert_same_as_sitk(volume, folder: Path) -> None:
    img = sitk_series(folder)
    np.testing.assert_allclose(volume.origin, img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(volume.spacing, img.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(volume.direction, img.GetDirection(), atol=1e-4)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(img).astype(np.float32))


# ---------------------------------------------------------------- synthetic: regular series


@pytest.mark.parametrize("iop", [AXIAL, oblique_iop((20, -15, 35))], ids=["axial", "oblique"])
def test_regular_series_geometry_voxels_and_sitk_agree(tmp_path, iop):
    ipps, slices = make_series(tmp_path, np.arange(6) * 1.5, iop=iop, order=[3, 5, 0, 2, 4, 1])
    vol = read_dicom(tmp_path)
    row, col, normal = axes(iop)
    assert vol.shape == (6, *SHAPE) and vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.spacing, (PS[1], PS[0], 1.5), atol=1e-6)
    np.testing.assert_allclose(vol.origin, ipps[0], atol=1e-6)
    np.testing.assert_allclose(vol.direction_matrix, np.column_stack([row, col, normal]), atol=1e-7)
    np.testing.assert_allclose(vol.array, np.rint(slices + 1024) - 1024, atol=1e-4)
    assert vol.findings == [] and vol.slice_thickness == 2.0
    assert_same_as_sitk(vol, tmp_path)
    centre = vol.index_to_physical(np.array([3, 5, 4]))
    assert vol.array[4, 5, 3] == pytest.approx(linear_hu(centre), abs=0.5)


def test_slices_stored_in_decreasing_position_are_sorted_along_the_normal(tmp_path):
    ipps, slices = make_series(tmp_path, [0.0, -2.0, -4.0, -6.0])
    vol = read_dicom(tmp_path)
    np.testing.assert_allclose(vol.origin, ipps[-1], atol=1e-6)
    np.testing.assert_allclose(vol.array[0], np.rint(slices[-1]), atol=1e-4)


def test_identity_meta_holds_plain_values(tmp_path):
    make_series(tmp_path, [0, 1, 2])
    meta = read_dicom(tmp_path).meta
    assert meta["PatientName"] == "Phantom^Test" and meta["PatientID"] == "PH001"
    assert meta["SeriesNumber"] == 3 and meta["KVP"] == 120.0 and meta["Modality"] == "CT"
    assert all(isinstance(v, (str, int, float)) for v in meta.values())
    assert {"StudyInstanceUID", "FrameOfReferenceUID", "SeriesInstanceUID", "PatientPosition"} <= set(meta)


def test_per_slice_rescale_is_applied_to_each_slice(tmp_path):
    slopes, intercepts = [1.0, 0.5, 2.0, 1.0], [-1024.0, -1000.0, -2048.0, 0.0]
    ipps, slices = make_series(tmp_path, [0, 1, 2, 3], slope=slopes, intercept=intercepts)
    vol = read_dicom(tmp_path)
    for k in range(4):
        expected = np.rint((slices[k] - intercepts[k]) / slopes[k]) * slopes[k] + intercepts[k]
        np.testing.assert_allclose(vol.array[k], expected, atol=1e-3)


def test_monochrome1_keeps_hu_for_ct_and_inverts_radiographs_without_rescale(tmp_path):
    ipps, slices = make_series(tmp_path / "ct", [0, 1, 2], photometric="MONOCHROME1")
    vol = read_dicom(tmp_path / "ct")
    np.testing.assert_allclose(vol.array, np.rint(slices + 1024) - 1024, atol=1e-4)
    assert any(f.startswith("monochrome1: kept") for f in vol.findings)
    _, cr_slices = make_series(tmp_path / "cr", [0, 1], photometric="MONOCHROME1", modality="CR", intercept=0.0)
    for path in (tmp_path / "cr").iterdir():
        ds = pydicom.dcmread(path)
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.save_as(path)
    stored = np.rint(cr_slices[0]).astype(np.int16)
    inverted = read_dicom(tmp_path / "cr", allow_non_ct=True)
    np.testing.assert_array_equal(inverted.array[0], (-1 - stored.astype(np.int64)).astype(np.float32))
    assert any(f.startswith("monochrome1: inverted") for f in inverted.findings)


# ---------------------------------------------------------------- synthetic: refusals


def assert_refused(folder: Path, code: str, *words: str, resample: bool = False) -> GeometryError:
    with pytest.raises(GeometryError) as info:
        read_dicom(folder, resample_irregular=resample)
    message = str(info.value)
    assert code in info.value.findings and "\n" not in message
    for word in words:
        assert word in message
    return info.value


def test_gantry_tilt_is_refused_with_angle_and_option(tmp_path):
    make_series(tmp_path, np.arange(5) * 3.0, shear=(0.0, np.tan(np.radians(12.0))))
    assert_refused(tmp_path, "gantry_tilt", "gantry tilt of 12.0°", "sheared 0.64 mm per slice",
                   "--resample-irregular")


def test_missing_slice_and_nonuniform_spacing_are_refused_with_numbers(tmp_path):
    make_series(tmp_path / "missing", [0, 2, 4, 8, 10])
    assert_refused(tmp_path / "missing", "missing_slices", "gap of 4.00 mm", "typical gap is 2.00 mm",
                   "--resample-irregular")
    make_series(tmp_path / "uneven", [0, 2, 4, 7.5, 11])
    assert_refused(tmp_path / "uneven", "nonuniform_spacing", "gaps 2.00 to 3.50 mm", "--resample-irregular")


def test_duplicates_mixed_orientation_and_sizes_are_refused_even_when_resampling(tmp_path):
    make_series(tmp_path / "dup", [0, 2, 2, 4])
    error = assert_refused(tmp_path / "dup", "duplicate_positions", "split the phases", resample=True)
    assert "--resample-irregular" not in str(error)
    ipps = stack_ipps((0, 0, 0), AXIAL, [0, 1, 2])
    write_slices(tmp_path / "orient", [np.zeros(SHAPE)] * 3, ipps, iop=[AXIAL, AXIAL, (1, 0, 0, 0, 0, -1)])
    assert_refused(tmp_path / "orient", "mixed_orientation", "choose one series", resample=True)
    write_slices(tmp_path / "size", [np.zeros(SHAPE), np.zeros(SHAPE), np.zeros((8, 8))], ipps)
    assert_refused(tmp_path / "size", "mixed_size", "12x10, 8x8", resample=True)
    write_slices(tmp_path / "ps", [np.zeros(SHAPE)] * 3, ipps, pixel_spacing=[(0.5, 0.5), (0.5, 0.5), (0.9, 0.9)])
    assert_refused(tmp_path / "ps", "mixed_pixel_spacing", "0.5 to 0.9 mm", resample=True)
    write_slices(tmp_path / "noipp", [np.zeros(SHAPE)] * 3, [ipps[0], None, ipps[2]])
    assert_refused(tmp_path / "noipp", "missing_geometry", "ImagePositionPatient missing on 1 of 3", resample=True)


def test_single_slice_non_ct_and_only_localizers_are_input_errors(tmp_path):
    make_series(tmp_path / "one", [0])
    with pytest.raises(InputError, match=r"2D image \(1 slice\) in IM0001.dcm: .*needs a volume"):
        read_dicom(tmp_path / "one" / "IM0001.dcm")
    make_series(tmp_path / "cr", [0, 1], modality="CR")
    with pytest.raises(InputError, match="not a CT: Modality is CR"):
        read_dicom(tmp_path / "cr")
    assert read_dicom(tmp_path / "cr", allow_non_ct=True).shape[0] == 2
    make_series(tmp_path / "scout", [0, 1], extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    with pytest.raises(InputError, match="only localizer"):
        read_dicom(tmp_path / "scout")


def test_localizers_mixed_into_an_axial_series_are_left_out(tmp_path):
    make_series(tmp_path, [0, 1, 2, 3], series_uid="1.2.3.4")
    write_slices(tmp_path, [np.zeros((6, 6))], [(0, 0, 0)], iop=(1, 0, 0, 0, 0, -1), series_uid="1.2.3.4",
                 names=["scout.dcm"], extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    vol = read_dicom(tmp_path)
    assert vol.shape[0] == 4 and "excluded_localizer: 1 localizer/scout image(s) left out" in vol.findings


# ---------------------------------------------------------------- synthetic: resampling


def test_resampled_tilted_uneven_series_matches_the_analytic_phantom(tmp_path):
    ipps, slices = make_series(tmp_path, [0, 2, 4, 5, 9, 11], shear=(0.1, np.tan(np.radians(15.0))))
    vol = read_dicom(tmp_path, resample_irregular=True)
    assert vol.shape == (6, *SHAPE) and vol.spacing[2] == pytest.approx(2.0)  # the median gap
    # the tilt is atan(hypot(0.1, tan 15°)) = 16.0°
    assert vol.findings[-1].startswith(
        "resampled_irregular: gantry tilt 16.0°, non-uniform spacing (gaps 1.00 to 4.00 mm) -> regular 2.00 mm grid")
    np.testing.assert_allclose(vol.origin, ipps[0], atol=1e-6)
    np.testing.assert_allclose(vol.array[0], np.rint(slices[0] + 1024) - 1024, atol=1e-4)
    positions = (ipps - ipps[0]) @ vol.slice_normal
    checked = 0
    for k in range(vol.shape[0]):
        j, i = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
        centres = vol.index_to_physical(np.stack([i, j, np.full_like(i, k)], axis=-1).astype(float))
        a = min(int(np.searchsorted(positions, k * 2.0 + 1e-9)) - 1, len(positions) - 2)
        inside = in_field_of_view(centres, ipps[a], AXIAL, PS, SHAPE) & \
            in_field_of_view(centres, ipps[a + 1], AXIAL, PS, SHAPE)
        # stored values are rounded to whole HU, so the interpolated phantom is exact to 0.5 HU
        np.testing.assert_allclose(vol.array[k][inside], linear_hu(centres)[inside], atol=0.5 + 1e-3)
        checked += inside.sum()
    assert checked > 0.5 * vol.array.size


def test_resample_spacing_sets_the_grid_and_regular_series_are_left_alone(tmp_path):
    make_series(tmp_path / "gap", [0, 2, 4, 8])
    vol = read_dicom(tmp_path / "gap", resample_irregular=True, resample_spacing=0.5)
    assert vol.shape[0] == 17 and vol.spacing[2] == 0.5
    make_series(tmp_path / "regular", [0, 2, 4])
    regular = read_dicom(tmp_path / "regular", resample_irregular=True, resample_spacing=0.5)
    assert regular.shape[0] == 3 and regular.spacing[2] == pytest.approx(2.0)
    with pytest.raises(InputError, match="positive"):
        read_dicom(tmp_path / "gap", resample_irregular=True, resample_spacing=-1.0)


# ---------------------------------------------------------------- containers and series choice


def test_several_series_are_listed_and_chosen_by_uid(tmp_path):
    make_series(tmp_path / "a", [0, 1, 2], series_uid="1.2.826.1")
    make_series(tmp_path / "b", [0, 1], series_uid="1.2.826.2", modality="CR")
    (tmp_path / "README.txt").write_text("not dicom\n")
    (tmp_path / "LICENSE").write_bytes(b"\x08\x00 looks like a tag but is not DICOM")
    infos = list_dicom_series(tmp_path)
    assert [(s.series_uid, s.n_files, s.modality) for s in infos] == [("1.2.826.1", 3, "CT"), ("1.2.826.2", 2, "CR")]
    assert infos[0].description == "Synthetic 2mm"
    with pytest.raises(InputError) as info:
        read_dicom(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "--series-uid" in message
    assert "1.2.826.1 (3 files, CT, 'Synthetic 2mm')" in message and "1.2.826.2 (2 files, CR" in message
    assert read_dicom(tmp_path, series_uid="1.2.826.1").shape[0] == 3
    with pytest.raises(InputError, match="series 9.9 not found"):
        read_dicom(tmp_path, series_uid="9.9")


def test_missing_series_uid_falls_back_to_a_stable_key(tmp_path):
    make_series(tmp_path / "a", [0, 1], series_uid=None, extra={"SeriesNumber": 4})
    make_series(tmp_path / "b", [0, 1, 2], series_uid=None, extra={"SeriesNumber": 5})
    infos = list_dicom_series(tmp_path)
    assert len(infos) == 2 and all(s.series_uid.startswith("nouid-") for s in infos)
    assert infos == list_dicom_series(tmp_path)
    chosen = [s for s in infos if s.n_files == 3][0]
    assert read_dicom(tmp_path, series_uid=chosen.series_uid).shape[0] == 3


def test_zip_of_a_study_reads_like_the_folder_and_guards_against_bombs(tmp_path, monkeypatch):
    make_series(tmp_path / "study" / "series1", [0, 1.5, 3, 4.5])
    (tmp_path / "study" / "DICOMDIR.txt").write_text("index")
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((tmp_path / "study").rglob("*")):
            zf.write(path, path.relative_to(tmp_path))
    from_zip, from_folder = read_dicom(archive), read_dicom(tmp_path / "study")
    np.testing.assert_array_equal(from_zip.array, from_folder.array)
    assert from_zip.geometry_dict() == from_folder.geometry_dict()
    assert [s.n_files for s in list_dicom_series(archive)] == [4]
    monkeypatch.setattr(dicom_files, "MAX_ZIP_UNCOMPRESSED_BYTES", 1000)
    with pytest.raises(InputError, match="zip-bomb guard"):
        read_dicom(archive)


def test_non_image_dicom_is_ignored_and_files_without_preamble_are_read(tmp_path):
    make_series(tmp_path, [0, 1, 2], preamble=False)
    sr = Dataset()
    sr.SOPClassUID, sr.SOPInstanceUID, sr.Modality = "1.2.840.10008.5.1.4.1.1.88.11", generate_uid(), "SR"
    sr.SeriesInstanceUID = generate_uid()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.is_little_endian, sr.is_implicit_VR = True, False
    pydicom.dcmwrite(tmp_path / "report.dcm", sr, write_like_original=False)
    assert is_dicom_file(tmp_path / "IM0001.dcm") and is_dicom_file(tmp_path / "report.dcm")
    assert [s.n_files for s in list_dicom_series(tmp_path)] == [3]
    assert read_dicom(tmp_path).shape == (3, *SHAPE)


def test_corrupt_files_are_named(tmp_path):
    make_series(tmp_path, [0, 1, 2])
    (tmp_path / "IM0002.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7f")
    with pytest.raises(InputError, match=r"IM0002.dcm .*corrupt"):
        read_dicom(tmp_path)
    make_series(tmp_path / "short", [0, 1, 2])
    path = tmp_path / "short" / "IM0003.dcm"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match="IM0003.dcm"):
        read_dicom(tmp_path / "short")
    with pytest.raises(InputError, match="not found"):
        read_dicom(tmp_path / "nothing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a DICOM file"):
        read_dicom(tmp_path / "notes.txt")


def test_enhanced_multiframe_uses_per_frame_positions(tmp_path):
    iop = oblique_iop((0, 0, 30))
    ipps = stack_ipps((10, 20, 30), iop, [0, 2.5, 5, 7.5])
    slices = phantom_slices(ipps, iop, (0.5, 0.5), SHAPE, linear_hu)
    vol = read_dicom(write_enhanced(tmp_path / "enh.dcm", slices, ipps, iop=iop, order=[2, 0, 3, 1]))
    np.testing.assert_allclose(vol.origin, ipps[0], atol=1e-6)
    np.testing.assert_allclose(vol.spacing, (0.5, 0.5, 2.5), atol=1e-6)
    np.testing.assert_allclose(vol.array, np.rint(slices + 1024) - 1024, atol=1e-4)
    assert vol.slice_thickness == 3.0


# ---------------------------------------------------------------- codecs (real compressed files)


def copies_as_series(source: Path, folder: Path, n: int = 3, gap: float = 5.0) -> Path:
    """Several copies of one real compressed slice, moved along the normal: a small compressed series."""
    folder.mkdir()
    for k in range(n):
        ds = pydicom.dcmread(source)
        _, _, normal = axes([float(v) for v in ds.ImageOrientationPatient])
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(ds.ImagePositionPatient, float) + k * gap * normal]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / f"{k}.dcm")
    return folder


@pytest.mark.filterwarnings("ignore:.*Bits Stored:UserWarning")  # 693_J2KR: Bits Stored 16, J2K precision 14
@pytest.mark.parametrize("name", ["dicom_edge/pylibjpeg_data/CT1_JLSN.dcm", "dicom_edge/pydicom_data/693_J2KR.dcm"])
def test_jpeg_ls_and_jpeg2000_series_decode_to_hu(tmp_path, name):
    source = shared(name)
    ds = pydicom.dcmread(source)
    vol = read_dicom(copies_as_series(source, tmp_path / "s"))
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert vol.shape[0] == 3 and vol.spacing[2] == pytest.approx(5.0)
    np.testing.assert_array_equal(vol.array[1], expected.astype(np.float32))


def test_real_series_without_series_uid_gets_the_fallback_key():
    infos = list_dicom_series(shared("ct/totalseg/example_ct_dicom"))
    assert len(infos) == 1 and infos[0].series_uid.startswith("nouid-")
    assert (infos[0].n_files, infos[0].modality, infos[0].description) == (20, "CT", "CT Body 3.0")


def test_missing_codec_names_the_pip_package(monkeypatch):
    folder = shared("ct/totalseg/example_ct_dicom")
    from pydicom.pixel_data_handlers import numpy_handler
    monkeypatch.setattr(pydicom.config, "pixel_data_handlers", [numpy_handler])
    with pytest.raises(InputError, match="JPEG 2000.*pip install pylibjpeg pylibjpeg-openjpeg"):
        read_dicom(folder)


# ---------------------------------------------------------------- every real series


def independent_geometry(files: list[Path]) -> dict:
    """Geometry computed here from the tags, without the reader's code."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    iop = np.asarray(headers[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    ipps = np.array([np.asarray(h.ImagePositionPatient, float) for h in headers])
    order = np.argsort(ipps @ normal)
    pos = (ipps @ normal)[order]
    ps = [float(v) for v in headers[0].PixelSpacing]
    return {"ipps": ipps[order], "positions": pos, "iop": iop, "normal": normal, "gaps": np.diff(pos),
            "spacing": (ps[1], ps[0], (pos[-1] - pos[0]) / (len(pos) - 1)), "first": files[order[0]],
            "files": [files[i] for i in order],
            "direction": np.column_stack([iop[:3], iop[3:], normal])}


def hu_of(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return (ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))).astype(np.float32)


def series_folders() -> list[str]:
    if not SHARED_DATA.exists():
        return []
    folders = {p.parent for root in ("ct", "dicom_edge") for p in (SHARED_DATA / root).rglob("*")
               if p.is_file() and p.parent.name not in ("pydicom_data", "pylibjpeg_data") and is_dicom_file(p)}
    return sorted(str(f.relative_to(SHARED_DATA)) for f in folders)


def single_files() -> list[str]:
    if not SHARED_DATA.exists():
        return []
    return sorted(str(p.relative_to(SHARED_DATA)) for folder in ("pydicom_data", "pylibjpeg_data")
                  for p in (SHARED_DATA / "dicom_edge" / folder).glob("*.dcm"))


REFUSED = {  # folder: (finding codes, words the one-line message must hold)
    "dicom_edge/dcm_qa_ct/GE_head_tilt18.5_varspacing": (
        ["gantry_tilt", "nonuniform_spacing"],
        ["gantry tilt of 18.5°", "GantryDetectorTilt 18.5°", "gaps 1.08 to 7.00 mm", "--resample-irregular"]),
    "dicom_edge/dicom2nifti_ct_odd/gantrytilting_001": (
        ["gantry_tilt"], ["gantry tilt of 14.0°", "--resample-irregular"]),
    "dicom_edge/dicom2nifti_ct_odd/notavolume_001": (["duplicate_positions"], ["4 slices at 1 distinct positions"]),
    "dicom_edge/dicom2nifti_ct_odd/sliceincrement_001": (
        ["missing_slices"], ["gap of 10.00 mm", "typical gap is 5.00"]),
    "dicom_edge/dicom2nifti_ct_odd/sliceincrement_002": (
        ["gantry_tilt", "missing_slices"], ["gantry tilt of 15.5°", "gap of 1.50 mm", "typical gap is 0.75"]),
}


@pytest.mark.parametrize("relative", series_folders() or ["(no shared data)"])
def test_every_real_series_loads_exactly_or_is_refused_for_its_reason(relative):
    folder = shared(relative)
    files = sorted(p for p in folder.iterdir() if is_dicom_file(p))
    truth = independent_geometry(files)
    if relative in REFUSED:
        codes, words = REFUSED[relative]
        error = assert_refused(folder, codes[0], *words)
        assert error.findings == codes
        # the numbers in the message, recomputed here from the tags
        stacking = truth["ipps"][-1] - truth["ipps"][0]
        normal = truth["normal"] / np.linalg.norm(truth["normal"])
        if "gantry_tilt" in codes:
            tilt = np.degrees(np.arccos(abs(stacking @ normal) / np.linalg.norm(stacking)))
            assert f"gantry tilt of {tilt:.1f}°" in str(error)
        if "nonuniform_spacing" in codes:
            assert f"gaps {truth['gaps'].min():.2f} to {truth['gaps'].max():.2f} mm" in str(error)
        return
    vol = read_dicom(folder)
    np.testing.assert_allclose(vol.origin, truth["ipps"][0], atol=1e-4)
    np.testing.assert_allclose(vol.spacing, truth["spacing"], atol=1e-4)
    np.testing.assert_allclose(vol.direction_matrix, truth["direction"], atol=1e-4)
    np.testing.assert_allclose(truth["gaps"], truth["spacing"][2], atol=0.01)
    np.testing.assert_array_equal(vol.array[0], hu_of(truth["first"]))
    assert_same_as_sitk(vol, folder)


@pytest.mark.parametrize("relative", [r for r in REFUSED if "notavolume" not in r])
def test_real_irregular_series_resample_from_their_true_positions(relative):
    folder = shared(relative)
    truth = independent_geometry(sorted(p for p in folder.iterdir() if is_dicom_file(p)))
    vol = read_dicom(folder, resample_irregular=True)
    median = float(np.median(truth["gaps"]))
    np.testing.assert_allclose(vol.origin, truth["ipps"][0], atol=1e-4)
    np.testing.assert_allclose(vol.spacing, (*truth["spacing"][:2], median), atol=1e-4)
    np.testing.assert_allclose(vol.direction_matrix, truth["direction"], atol=1e-4)
    assert vol.shape[0] == int(np.floor((truth["positions"][-1] - truth["positions"][0]) / median + 1e-6)) + 1
    np.testing.assert_array_equal(vol.array[0], hu_of(truth["first"]))
    assert vol.findings[-1].startswith("resampled_irregular:")
    # Target slice 1 lies on true slice 1 (its gap is the median): its voxels must be that slice
    # sampled at the same LPS points, mapped here through the slice's own IPP/IOP.
    assert truth["positions"][1] - truth["positions"][0] == pytest.approx(median, abs=1e-4)
    source = hu_of(truth["files"][1])
    j, i = np.mgrid[0:source.shape[0], 0:source.shape[1]]
    centres = vol.index_to_physical(np.stack([i, j, np.ones_like(i)], axis=-1).astype(float))
    pixel_spacing = truth["spacing"][1::-1]
    u, v = slice_coordinates(centres, truth["ipps"][1], truth["iop"], pixel_spacing)
    inside = in_field_of_view(centres, truth["ipps"][1], truth["iop"], pixel_spacing, source.shape) & \
        in_field_of_view(centres, truth["ipps"][0], truth["iop"], pixel_spacing, source.shape)
    expected = ndimage.map_coordinates(source, [v[inside], u[inside]], order=1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(vol.array[1][inside], expected, atol=0.02)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")  # bad_sequence.dcm's SeriesInstanceUID
@pytest.mark.parametrize("relative", single_files() or ["(no shared data)"])
def test_every_real_single_file_loads_or_is_refused_for_its_reason(relative):
    path = shared(relative)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if ds.Modality != "CT":
        with pytest.raises(InputError, match=f"not a CT: Modality is {ds.Modality}"):
            read_dicom(path)
        return
    if int(ds.get("NumberOfFrames", 1) or 1) == 1:
        with pytest.raises(InputError, match=r"2D image \(1 slice.*needs a volume"):
            read_dicom(path)
        return
    vol = read_dicom(path)
    frames = ds.PerFrameFunctionalGroupsSequence
    iop = np.asarray(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    ipps = np.array([np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float) for f in frames])
    first = int(np.argmin(ipps @ normal))
    np.testing.assert_allclose(vol.origin, ipps[first], atol=1e-4)
    np.testing.assert_allclose(vol.direction_matrix[:, 2], normal, atol=1e-6)
    assert vol.spacing[2] == pytest.approx(float(np.ptp(ipps @ normal)) / (len(ipps) - 1), abs=1e-4)
    pvt = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    pixels = pydicom.dcmread(path).pixel_array[first]
    np.testing.assert_array_equal(vol.array[0], (pixels * float(pvt.RescaleSlope) + float(pvt.RescaleIntercept)))
