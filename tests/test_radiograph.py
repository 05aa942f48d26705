"""Radiograph reading and writing on the real X-rays in ../shared/data: values, geometry, refusals."""
from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import shared
from PIL import Image

from ctsr_models.io import InputError, Radiograph, read_radiograph, write_radiograph
from ctsr_models.io.radiograph import sidecar_path
from ctsr_models.io.radiograph_dicom import PRIVATE_CREATOR, PRIVATE_GROUP
from ctsr_models.physics import ProjectionGeometry, load_geometries

RSNA = "xray/torchxrayvision/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
FAKE_MONO1 = "xray/torchxrayvision/Fake_MONOHR1.dcm"
SCOUT = "xray/dcm_qa_ct_localizer/lateral_scout.dcm"
RG1 = ("dicom_edge/pydicom_data/RG1_UNCI.dcm", "dicom_edge/pydicom_data/RG1_J2KR.dcm",
       "dicom_edge/pydicom_data/RG1_J2KI.dcm")
MONOCHROME1 = {*RG1, FAKE_MONO1, "dicom_edge/pydicom_data/RG3_J2KR.dcm", "xray/fodicom/CR-MONO1-10-chest",
               "xray/highdicom/dx_image.dcm"}
CHEST_FRONTAL = (*RG1, RSNA, "xray/fodicom/CR-MONO1-10-chest", "xray/torchxrayvision/00000001_000.png",
                 "xray/torchxrayvision/00027426_000.png")
REAL = (*RG1, RSNA, FAKE_MONO1, SCOUT, "dicom_edge/pydicom_data/RG3_J2KR.dcm",
        "dicom_edge/pylibjpeg_data/RG2_JLSL.dcm", "dicom_edge/pylibjpeg_data/MAROTECH_CT_JP2Lossy.dcm",
        "xray/fodicom/CR-MONO1-10-chest", "xray/fodicom/GH342.dcm", "xray/highdicom/dx_image.dcm",
        "xray/torchxrayvision/00000001_000.png", "xray/torchxrayvision/00027426_000.png",
        "xray/torchxrayvision/16747_3_1.jpg", "xray/torchxrayvision/covid-19-pneumonia-58-prior.jpg")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", REAL)
def test_every_real_radiograph_reads(name: str) -> None:
    path = shared(name)
    before = sha256(path)
    rad = read_radiograph(path)
    assert sha256(path) == before  # inputs are never modified
    assert rad.image.dtype == np.float32 and rad.image.ndim == 2
    assert rad.image.shape == rad.geometry.shape
    assert np.all(np.isfinite(rad.image)) and rad.image.std() > 0
    assert rad.kind == "display"
    assert ("MONOCHROME1 inverted (larger values = more attenuation)" in rad.findings) == (name in MONOCHROME1)
    assert rad.geometry.sid > 0 and min(rad.geometry.pixel_mm) > 0


@pytest.mark.parametrize("name", CHEST_FRONTAL)
def test_chest_mediastinum_brighter_than_lungs(name: str) -> None:
    """Larger = more attenuation after reading: the mediastinum outshines both lung fields."""
    image = read_radiograph(shared(name)).image
    rows, cols = image.shape

    def band(c0: float, c1: float) -> float:
        return float(image[int(0.3 * rows):int(0.6 * rows), int(c0 * cols):int(c1 * cols)].mean())

    centre = band(0.45, 0.55)
    assert centre > 1.2 * band(0.2, 0.35) and centre > 1.2 * band(0.65, 0.8)


def test_fake_monochrome1_is_the_inverse_of_its_twin() -> None:
    """torchxrayvision's Fake_MONOHR1 holds the RSNA pixels unchanged with the tag set to MONOCHROME1,
    so read correctly it is the exact negative of the twin (and its lungs come out bright)."""
    twin, fake = read_radiograph(shared(RSNA)), read_radiograph(shared(FAKE_MONO1))
    assert np.array_equal(fake.image, 255 - twin.image)
    assert fake.geometry == twin.geometry


def test_rg1_encodings_agree() -> None:
    """The three encodings of the RG1 chest CR (MONOCHROME1) read to the same inverted image: the J2KI
    file decodes exactly like the uncompressed one; the J2KR file differs by a lossy-looking error
    (mean 0.2 % of the range) although its transfer syntax is the lossless one."""
    unci, j2kr, j2ki = (read_radiograph(shared(n)) for n in RG1)
    assert np.array_equal(unci.image, j2ki.image)
    span = float(unci.image.max() - unci.image.min())
    assert np.abs(unci.image - j2kr.image).mean() < 0.005 * span
    assert np.corrcoef(unci.image.ravel(), j2kr.image.ravel())[0, 1] > 0.999
    assert unci.geometry == j2kr.geometry == j2ki.geometry
    assert unci.geometry.view == "pa" and unci.geometry.sid == pytest.approx(1996.0)
    assert "PixelSpacing [0.000, 0.000] is not a usable pixel size" in unci.findings
    assert any(f.startswith("geometry assumed: detector pixel") for f in unci.findings)


def test_lateral_scout_geometry_reproduces_its_header() -> None:
    path = shared(SCOUT)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ipp = np.array(ds.ImagePositionPatient, dtype=float)
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    assert np.allclose(ipp, (0, -124.8, 916.5)) and (ds.Rows, ds.Columns) == (256, 512)
    rad = read_radiograph(path)
    g = rad.geometry
    row, col = iop[3:], iop[:3]
    r, c = np.meshgrid(np.arange(0, 256, 15), np.arange(0, 512, 31), indexing="ij")
    expected = ipp + r[..., None] * dr * row + c[..., None] * dc * col
    # back-project each detector pixel centre onto the isocentre plane (through IPP, normal row x col)
    normal = np.cross(row, col)
    source = np.asarray(g.source)
    pixels = g.pixel_centres()[r, c]
    t = ((ipp - source) @ normal) / ((pixels - source) @ normal)
    assert np.allclose(source + t[..., None] * (pixels - source), expected, atol=1e-6)
    assert np.allclose(g.to_detector(expected), np.stack([r, c], -1), atol=1e-9)
    assert g.sid == pytest.approx(1040.0)
    assert np.linalg.norm(np.asarray(rad.isocentre) - source) == pytest.approx(570.0)
    assert g.magnification_at(rad.isocentre) == pytest.approx(1040.0 / 570.0)
    assert g.pixel_mm == pytest.approx((dr * 1040 / 570, dc * 1040 / 570))
    assert g.view == "ll" and np.allclose(g.col_dir, (0, 1, 0)) and np.allclose(g.row_dir, (0, 0, -1))
    assert any("fan beam across the table" in f for f in rad.findings)


@pytest.mark.parametrize("name", ["xray/fodicom/GH342.dcm", "dicom_edge/pylibjpeg_data/MAROTECH_CT_JP2Lossy.dcm"])
def test_frontal_ct_localizers_without_distances(name: str) -> None:
    rad = read_radiograph(shared(name))
    ds = pydicom.dcmread(shared(name), stop_before_pixels=True)
    g = rad.geometry
    assert g.view == "pa" and g.sid == pytest.approx(1040.0)
    assert "geometry assumed: DistanceSourceToPatient 570 mm (missing)" in rad.findings
    ipp = np.array(ds.ImagePositionPatient, dtype=float)
    assert np.allclose(g.to_detector(ipp), (0, 0), atol=1e-9)
    last = ipp + (ds.Rows - 1) * float(ds.PixelSpacing[0]) * np.array(ds.ImageOrientationPatient[3:], dtype=float)
    assert np.allclose(g.to_detector(last), (ds.Rows - 1, 0), atol=1e-9)


def test_dx_uses_imager_pixel_spacing_and_distances() -> None:
    rad = read_radiograph(shared("xray/highdicom/dx_image.dcm"))
    assert rad.geometry.pixel_mm == pytest.approx((1.2, 1.2012))
    assert rad.geometry.sid == pytest.approx(1000.0)
    assert "pixel spacing from ImagerPixelSpacing" in rad.findings
    assert any(f.startswith("geometry assumed: view pa (no ViewPosition") for f in rad.findings)


def test_patient_orientation_mirrors_the_detector() -> None:
    """RG3 is an AP whose columns run towards the patient's right (PatientOrientation R\\F)."""
    rad = read_radiograph(shared("dicom_edge/pydicom_data/RG3_J2KR.dcm"))
    assert rad.geometry.view == "ap"
    assert np.allclose(rad.geometry.col_dir, (-1, 0, 0)) and np.allclose(rad.geometry.row_dir, (0, 0, -1))
    assert np.allclose(rad.geometry.to_detector((0.0, 0.0, 0.0)), (879.5, 879.5))


def test_caller_geometry_for_pictures() -> None:
    path = shared("xray/torchxrayvision/16747_3_1.jpg")
    rad = read_radiograph(path, view="lateral", sid=1000.0, sod=800.0, pixel_mm=0.5)
    assert rad.geometry == ProjectionGeometry.standard("ll", 1000.0, 800.0, rad.image.shape, 0.5)
    assert not any(f.startswith("geometry assumed") for f in rad.findings)
    given = ProjectionGeometry.standard("ap", shape=rad.image.shape, pixel_mm=0.3, isocentre=(1.0, 2.0, 3.0))
    assert read_radiograph(path, geometry=given).geometry == given
    default = read_radiograph(path)
    assert default.geometry.view == "pa" and "geometry assumed: view pa (none given)" in default.findings
    with pytest.raises(InputError, match="does not match the image"):
        read_radiograph(path, geometry=ProjectionGeometry.standard("pa", shape=(10, 10)))
    with pytest.raises(InputError, match="unknown X-ray view"):
        read_radiograph(path, view="oblique")
    with pytest.raises(InputError, match="source-to-isocentre"):
        read_radiograph(path, sid=1000.0, sod=1200.0)


def test_png_is_grey(tmp_path: Path) -> None:
    """An RGB PNG whose channels agree reads as those grey values; a coloured one is converted with a note."""
    grey = np.asarray(Image.open(shared("xray/torchxrayvision/00000001_000.png")).convert("L"))
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    assert np.array_equal(read_radiograph(tmp_path / "rgb.png").image, grey)
    colour = np.stack([grey, grey // 2, grey], -1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    assert any("converted to grey" in f for f in read_radiograph(tmp_path / "colour.png").findings)


def _truncated(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[:int(len(data) * fraction)])
    return dst


def _edited(src: Path, dst: Path, edit) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(src)
        edit(ds)
        ds.save_as(dst)
    return dst


@pytest.mark.parametrize("make, match", [
    (lambda t: _truncated(shared(RG1[0]), t / "half.dcm", 0.5), "may be corrupt"),
    (lambda t: _truncated(shared(RG1[0]), t / "head.dcm", 0.0002), "corrupt"),
    (lambda t: _truncated(shared("xray/torchxrayvision/00000001_000.png"), t / "cut.png", 0.5), "truncated"),
    (lambda t: (t / "noise.dcm").write_bytes(bytes(range(256)) * 8) and t / "noise.dcm", "not a radiograph file"),
    (lambda t: shared("xray/highdicom/ct_image.dcm"), "CT cross-section"),
    (lambda t: shared("dicom_edge/pydicom_data/693_UNCI.dcm"), "CT cross-section"),
    (lambda t: t / "absent.dcm", "not found"),
    (lambda t: _edited(shared("xray/highdicom/dx_image.dcm"), t / "nopix.dcm", lambda ds: delattr(ds, "PixelData")),
     "no pixel data"),
    (lambda t: _edited(shared("xray/highdicom/dx_image.dcm"), t / "mf.dcm",
                       lambda ds: setattr(ds, "NumberOfFrames", 3)), "3 frames"),
    (lambda t: _edited(shared("xray/highdicom/dx_image.dcm"), t / "rgb.dcm",
                       lambda ds: setattr(ds, "PhotometricInterpretation", "RGB")), "colour"),
    (lambda t: _edited(shared("xray/highdicom/dx_image.dcm"), t / "mr.dcm", lambda ds: setattr(ds, "Modality", "MR")),
     "modality MR"),
    (lambda t: _edited(shared("xray/highdicom/dx_image.dcm"), t / "rlo.dcm",
                       lambda ds: setattr(ds, "ViewPosition", "RLO")), "ViewPosition RLO"),
])
def test_unusable_inputs_are_refused_in_one_line(tmp_path: Path, make, match: str) -> None:
    path = make(tmp_path)
    with pytest.raises(InputError, match=match) as info:
        read_radiograph(path)
    assert "\n" not in str(info.value)


def _drr_like(shape: tuple[int, int] = (40, 56)) -> np.ndarray:
    rows, cols = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    return (3.0 * np.exp(-(rows**2 + cols**2)) + 0.2 * np.sin(7 * cols)).clip(0).astype(np.float32)


def test_dicom_round_trip_keeps_image_geometry_and_identity(tmp_path: Path) -> None:
    geometry = ProjectionGeometry.standard("ll", sid=1700.0, sod=1350.0, shape=(40, 56), pixel_mm=(1.3, 1.1),
                                           isocentre=(4.0, -60.0, 120.0))
    meta = {"PatientID": "PHANTOM-1", "StudyInstanceUID": "1.2.3.4.5", "PatientName": "Phantom^One"}
    rad = Radiograph(_drr_like(), geometry, "line_integral", meta, [], (4.0, -60.0, 120.0))
    write_radiograph(rad, tmp_path / "ll.dcm")
    back = read_radiograph(tmp_path / "ll.dcm")
    assert np.abs(back.image - rad.image).max() <= 1e-3 * np.abs(rad.image).max()
    assert back.geometry == geometry and back.kind == "line_integral" and back.isocentre == rad.isocentre
    assert back.meta["PatientID"] == "PHANTOM-1" and back.meta["StudyInstanceUID"] == "1.2.3.4.5"
    ds = pydicom.dcmread(tmp_path / "ll.dcm")  # a standard file: preamble, no force needed
    assert ds.SOPClassUID.name == "Digital X-Ray Image Storage - For Presentation"
    assert (ds.ViewPosition, list(ds.PatientOrientation), ds.PhotometricInterpretation) == ("LL", ["P", "F"],
                                                                                            "MONOCHROME2")
    assert (float(ds.DistanceSourceToDetector), float(ds.DistanceSourceToPatient)) == pytest.approx((1700, 1350))
    assert [float(v) for v in ds.ImagerPixelSpacing] == pytest.approx([1.3, 1.1])
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([1.3 * 1350 / 1700, 1.1 * 1350 / 1700])
    assert ds.pixel_array.dtype == np.uint16 and ds.SeriesInstanceUID != ds.StudyInstanceUID


def test_dicom_standard_tags_alone_give_the_same_view(tmp_path: Path) -> None:
    """Without the private element the standard tags rebuild the geometry (the isocentre position in
    the patient is the only thing DX tags cannot say)."""
    iso = (4.0, -60.0, 120.0)
    geometry = ProjectionGeometry.standard("pa", sid=1800.0, sod=1500.0, shape=(40, 56), pixel_mm=1.6, isocentre=iso)
    write_radiograph(Radiograph(_drr_like(), geometry, "line_integral", isocentre=iso), tmp_path / "pa.dcm")
    _edited(tmp_path / "pa.dcm", tmp_path / "plain.dcm",
            lambda ds: ds.__delitem__(ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR).get_tag(0x10)))
    back = read_radiograph(tmp_path / "plain.dcm")
    assert back.kind == "display"
    moved = back.geometry.moved(translation=iso)
    assert np.allclose(moved.source, geometry.source) and np.allclose(moved.origin, geometry.origin)
    assert moved.pixel_mm == pytest.approx(geometry.pixel_mm)
    assert any("from the PixelSpacing calibration" in f for f in back.findings)


def test_png_round_trip_and_sidecar(tmp_path: Path) -> None:
    rad = read_radiograph(shared("xray/highdicom/dx_image.dcm"))
    write_radiograph(rad, tmp_path / "dog.png")
    assert sidecar_path(tmp_path / "dog.png") == tmp_path / "dog.geometry.json"
    assert load_geometries(tmp_path / "dog.geometry.json") == {"dog": rad.geometry}
    back = read_radiograph(tmp_path / "dog.png")
    span = float(rad.image.max() - rad.image.min())
    assert np.abs(back.image - rad.image).max() <= span / 65535 * 0.5 + 1e-4
    assert back.geometry == rad.geometry and back.kind == "display"
    assert Image.open(tmp_path / "dog.png").mode == "I;16"


def test_write_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    rad = Radiograph(_drr_like(), ProjectionGeometry.standard("pa", shape=(40, 56)), "line_integral")
    with pytest.raises(InputError, match="use .dcm or .png"):
        write_radiograph(rad, tmp_path / "x.tif")
    bad = Radiograph(np.full((40, 56), np.nan), rad.geometry)
    with pytest.raises(ValueError, match="non-finite"):
        write_radiograph(bad, tmp_path / "x.dcm")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="differ in size"):
        Radiograph(np.zeros((3, 3)), rad.geometry)
    with pytest.raises(ValueError, match="kind must be"):
        Radiograph(_drr_like(), rad.geometry, "log")


def test_file_without_preamble_reads_and_is_not_changed(tmp_path: Path) -> None:
    src = shared("xray/fodicom/CR-MONO1-10-chest")
    assert src.read_bytes()[128:132] != b"DICM"
    copy = shutil.copy(src, tmp_path / "chest")
    rad = read_radiograph(copy)
    assert rad.image.shape == (440, 440) and rad.geometry.view == "pa"
    assert sha256(Path(copy)) == sha256(src)
