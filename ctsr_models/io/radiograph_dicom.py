"""Radiographs in DICOM: DX, CR and CT localizers in (with their projection geometry), DX out.

Reading (:func:`read_dicom_radiograph`): one 2D grey-scale image of modality DX, CR or RG, or a CT
image whose ``ImageType`` says ``LOCALIZER``. Pixels are decoded (JPEG, JPEG 2000, JPEG-LS through
the pylibjpeg plugins), ``MONOCHROME1`` is inverted within the stored range and the Modality LUT
(``RescaleSlope``/``RescaleIntercept``) applied, so that larger values mean more attenuation.

- CT localizers state ``ImagePositionPatient``/``ImageOrientationPatient``/``PixelSpacing`` in the
  plane through the isocentre: :meth:`ProjectionGeometry.from_isocentre_plane` with
  ``DistanceSourceToDetector`` and ``DistanceSourceToPatient`` (source to isocentre in CT).
- DX/CR get a standard view by the rules of :mod:`~ctsr_models.io.radiograph_geometry`.
- Files written by :func:`write_dicom_radiograph` carry their exact geometry in a private element
  (creator :data:`PRIVATE_CREATOR`), which is used when the caller gives no geometry values.

Writing (:func:`write_dicom_radiograph`): Digital X-Ray (For Presentation), ``MONOCHROME2``, uint16
with ``RescaleSlope``/``RescaleIntercept`` spanning the image's range (round trip within range /
131070), standard geometry tags (``ViewPosition``, ``DistanceSourceToDetector``,
``DistanceSourceToPatient`` = source to isocentre, ``ImagerPixelSpacing``, ``PixelSpacing`` calibrated
to the isocentre plane, ``PatientOrientation``), new UIDs, atomically.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from .xray_geometry import VIEWS, ProjectionGeometry

from .. import __version__
from .atomic import atomic_file
from .dicom_files import DicomSource
from .dicom_read import _decode, _float, _identity, _invert_stored, _multi, _read, _vector
from .dicom_write import _STUDY_KEYWORDS, _TYPE2, _ds, _plain, _series_number
from .errors import InputError
from .radiograph_geometry import (CT_LOCALIZER_SID_MM, CT_LOCALIZER_SOD_MM, HALF_THICKNESS_MM, GeometryRequest,
                                  checked_view, orient_to_patient, orientation_letters, standard_geometry,
                                  view_from_orientation, view_of_beam)

if TYPE_CHECKING:
    from .radiograph import Radiograph

logger = logging.getLogger(__name__)

RADIOGRAPH_MODALITIES = ("DX", "CR", "RG")
"""Modalities read as projection radiographs (CT is read only when it is a localizer)."""
VIEW_POSITIONS = {"PA": "pa", "AP": "ap", "LL": "ll", "LATERAL": "ll", "LAT": "ll", "RL": "rl"}
"""DICOM ``ViewPosition`` values and the standard views they mean."""
PRIVATE_GROUP, PRIVATE_CREATOR, PRIVATE_ELEMENT = 0x0011, "CTSR_MODELS RADIOGRAPH 1", 0x10
"""Where :func:`write_dicom_radiograph` keeps the exact geometry (JSON, VR UT)."""
_DX_KEYWORDS = tuple(k for k in _STUDY_KEYWORDS if k not in ("FrameOfReferenceUID", "ConvolutionKernel", "KVP"))
"""Identity copied from ``Radiograph.meta`` (not the CT-only tags, nor a source CT's kVp)."""


def read_dicom_radiograph(path: Path, request: GeometryRequest) -> dict[str, Any]:
    """The fields of a :class:`~ctsr_models.io.radiograph.Radiograph` from one DICOM file.

    Raises:
        InputError: not a single 2D grey-scale radiograph or CT localizer, or a corrupt file.
    """
    ds = _read(DicomSource(path.name, lambda: path), stop_before_pixels=False)
    localizer = _check_radiograph(ds, path.name)
    findings: list[str] = []
    image = _values(ds, _decode(ds, path.name), findings)
    stored = _private_record(ds)
    if request.geometry is not None:
        geometry, isocentre = request.geometry, None
        findings.append("geometry given by the caller")
    elif stored is not None and not request.partial:
        geometry = ProjectionGeometry.from_dict(stored["geometry"])
        isocentre = tuple(stored["isocentre"]) if stored.get("isocentre") else None
        findings.append("geometry from the ctsr_models private element")
    elif localizer:
        geometry, isocentre = _localizer_geometry(ds, image.shape, request, findings)
    else:
        geometry, isocentre = _projection_geometry(ds, image.shape, request, findings)
    kind = stored["kind"] if stored is not None else "display"
    logger.info("read a %s radiograph %dx%d (%s view)", str(ds.get("Modality", "")), *image.shape, geometry.view)
    return {"image": image, "geometry": geometry, "kind": kind, "meta": _identity(ds), "findings": findings,
            "isocentre": isocentre}


def _check_radiograph(ds: Dataset, name: str) -> bool:
    """Refuse what is not one 2D grey-scale radiograph; True for a CT localizer."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    image_type = {str(v).strip().upper() for v in _multi(ds.get("ImageType"))}
    if "Rows" not in ds or "Columns" not in ds:
        raise InputError(f"cannot read {name} as a radiograph: it has no image (it may be truncated or corrupt)")
    localizer = modality == "CT" and "LOCALIZER" in image_type
    if modality == "CT" and not localizer:
        raise InputError(f"{name} is a CT cross-section, not a radiograph or CT localizer; read CT series as "
                         "volumes (read_volume, ctsr-info)")
    if modality not in RADIOGRAPH_MODALITIES and not localizer:
        raise InputError(f"{name} has modality {modality or 'unknown'}; radiographs are DX, CR, RG or CT localizers")
    frames = int(_float(ds.get("NumberOfFrames")) or 1)
    if frames > 1:
        raise InputError(f"{name} holds {frames} frames (3D or a series); a radiograph is one 2D image")
    samples = int(_float(ds.get("SamplesPerPixel")) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(f"{name} is a colour image ({photometric}); radiographs are grey-scale")
    return localizer


def _values(ds: Dataset, stored: np.ndarray, findings: list[str]) -> np.ndarray:
    """Stored pixels → float32 with larger = more attenuation (MONOCHROME1 inverted, then rescaled)."""
    if stored.ndim != 2:
        raise InputError(f"expected one 2D image, got pixel data of shape {stored.shape}")
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        stored = _invert_stored(stored, ds)
        findings.append("MONOCHROME1 inverted (larger values = more attenuation)")
    slope = _float(ds.get("RescaleSlope"))
    intercept = _float(ds.get("RescaleIntercept"))
    values = stored.astype(np.float64) * (slope if slope else 1.0) + (intercept or 0.0)
    return values.astype(np.float32)


def _private_record(ds: Dataset) -> dict[str, Any] | None:
    """The geometry record written by :func:`write_dicom_radiograph`, ``None`` if absent or unreadable."""
    try:
        value = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[PRIVATE_ELEMENT].value
    except (KeyError, ValueError):
        return None
    try:
        record = json.loads(value.decode() if isinstance(value, bytes) else str(value))
        ProjectionGeometry.from_dict(record["geometry"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        logger.warning("ignored an unreadable ctsr_models geometry element")
        return None
    return record if record.get("kind") in ("line_integral", "display") else None


def _localizer_geometry(ds: Dataset, shape: tuple[int, int], request: GeometryRequest,
                        findings: list[str]) -> tuple[ProjectionGeometry, tuple[float, float, float] | None]:
    """A CT localizer: pixels given in the isocentre plane, magnified onto the detector."""
    ipp, iop = _vector(ds.get("ImagePositionPatient"), 3), _vector(ds.get("ImageOrientationPatient"), 6)
    spacing = _vector(ds.get("PixelSpacing"), 2)
    if ipp is None or iop is None or spacing is None or min(spacing) <= 0:
        findings.append("CT localizer without ImagePositionPatient/ImageOrientationPatient/PixelSpacing: "
                        "read as a plain radiograph")
        return _projection_geometry(ds, shape, request, findings)
    sid = request.sid or _positive(ds, "DistanceSourceToDetector", CT_LOCALIZER_SID_MM, findings)
    sod = request.sod or _positive(ds, "DistanceSourceToPatient", CT_LOCALIZER_SOD_MM, findings)
    row, col = np.asarray(iop[3:]), np.asarray(iop[:3])
    beam = np.cross(row, col)
    if request.view is not None:
        along = float(np.dot(VIEWS[checked_view(request.view)][0], beam / np.linalg.norm(beam)))
        if abs(along) < 0.5:
            raise InputError(f"view {request.view} does not fit this localizer's image plane")
        sign = 1.0 if along > 0 else -1.0
    else:
        sign = 1.0
        findings.append("geometry assumed: beam along row x column (the image seen from the detector side, "
                        "as radiographs are shown)")
    if request.pixel_mm is not None:
        findings.append("pixel size given by the caller ignored: a localizer's PixelSpacing is exact")
    try:
        geometry = ProjectionGeometry.from_isocentre_plane(ipp, tuple(row), tuple(col), (spacing[0], spacing[1]),
                                                           shape, sid, sod, sign, view_of_beam(sign * beam))
    except ValueError as exc:
        raise InputError(f"CT localizer geometry: {exc}") from exc
    isocentre = (np.asarray(ipp) + row * spacing[0] * (shape[0] - 1) / 2 + col * spacing[1] * (shape[1] - 1) / 2)
    findings.append(f"CT localizer: PixelSpacing is in the isocentre plane; detector pixel = PixelSpacing x "
                    f"{sid:g}/{sod:g}")
    findings.append("CT localizer: fan beam across the table and parallel along it, modelled as one point source "
                    "(exact in the isocentre plane)")
    return geometry, tuple(float(v) for v in isocentre)


def _positive(ds: Dataset, keyword: str, default: float, findings: list[str]) -> float:
    """A positive numeric tag, else ``default`` with a finding."""
    value = _float(ds.get(keyword))
    if value is not None and value > 0:
        return value
    findings.append(f"geometry assumed: {keyword} {default:g} mm (missing)")
    return default


def _projection_geometry(ds: Dataset, shape: tuple[int, int], request: GeometryRequest,
                         findings: list[str]) -> tuple[ProjectionGeometry, tuple[float, float, float]]:
    """A DX/CR: a standard view from the header, the caller's values first."""
    orientation = [str(v).strip().upper() for v in _multi(ds.get("PatientOrientation"))]
    view = checked_view(request.view) if request.view else _header_view(ds, orientation, findings)
    if view is None:
        view = request.fallback_view
        findings.append(f"geometry assumed: view {view} (none in the file)")
    sid = request.sid or _float(ds.get("DistanceSourceToDetector"))
    sid = sid if sid and sid > 0 else None
    pixel = request.pixel_mm if request.pixel_mm is not None else _detector_pixel(ds, findings)
    sod = request.sod or _isocentre_distance(ds, sid, view, findings)
    geometry = standard_geometry(shape, findings, view, sid, sod, pixel)
    if request.view is None:
        geometry = orient_to_patient(geometry, orientation, findings)
    return geometry, (0.0, 0.0, 0.0)


def _header_view(ds: Dataset, orientation: list[str], findings: list[str]) -> str | None:
    """The view from ``ViewPosition``, else guessed from ``PatientOrientation``."""
    position = str(ds.get("ViewPosition", "") or "").strip().upper()
    if position in VIEW_POSITIONS:
        return VIEW_POSITIONS[position]
    if position:
        raise InputError(f"ViewPosition {position} is not a supported view; give the view (pa, ap, ll, rl) "
                         "if the image is one")
    return view_from_orientation(orientation, findings)


def _detector_pixel(ds: Dataset, findings: list[str]) -> tuple[float, float] | None:
    """The detector pixel size: ImagerPixelSpacing, else PixelSpacing, else ``None``."""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        value = _vector(ds.get(keyword), 2)
        if value is not None and min(value) > 0:
            findings.append(f"pixel spacing from {keyword}" +
                            ("" if keyword == "ImagerPixelSpacing" else " (taken as the detector pixel)"))
            return value[0], value[1]
        if keyword in ds:
            findings.append(f"{keyword} {ds.get(keyword)} is not a usable pixel size")
    return None


def _isocentre_distance(ds: Dataset, sid: float | None, view: str | None, findings: list[str]) -> float | None:
    """Source-to-isocentre: the PixelSpacing calibration, else DistanceSourceToPatient less half the
    patient, else ``None``."""
    if sid is None:
        return None
    imager, calibrated = _vector(ds.get("ImagerPixelSpacing"), 2), _vector(ds.get("PixelSpacing"), 2)
    if imager and calibrated and min(imager + calibrated) > 0 and imager[0] / calibrated[0] > 1.001:
        sod = sid * calibrated[0] / imager[0]
        findings.append(f"source-to-isocentre {sod:.1f} mm from the PixelSpacing calibration "
                        f"(magnification {imager[0] / calibrated[0]:.3f})")
        return sod
    support = _float(ds.get("DistanceSourceToPatient"))
    half = HALF_THICKNESS_MM[view or "pa"]
    if support and 0 < support - half < sid:
        findings.append(f"geometry assumed: isocentre {half:g} mm before the patient support "
                        f"(DistanceSourceToPatient {support:g} mm)")
        return support - half
    return None


def write_dicom_radiograph(rad: Radiograph, path: Path) -> None:
    """Write ``rad`` as a Digital X-Ray image (MONOCHROME2, uint16 with rescale), atomically."""
    image = np.asarray(rad.image, dtype=np.float64)
    lo, hi = float(image.min()), float(image.max())
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    ds = _dx_dataset(rad, lo, slope)
    ds.PixelData = np.rint((image - lo) / slope).clip(0, 65535).astype("<u2").tobytes()
    with atomic_file(path) as tmp:
        pydicom.dcmwrite(tmp, ds, write_like_original=False)
    logger.info("wrote a DX radiograph %dx%d (%s view)", *image.shape, rad.geometry.view)


def _dx_dataset(rad: Radiograph, intercept: float, slope: float) -> Dataset:
    """Every attribute of the DX file except the pixels."""
    g, now, ds = rad.geometry, dt.datetime.now(), Dataset()
    for keyword in _DX_KEYWORDS:
        if keyword in rad.meta:
            setattr(ds, keyword, _plain(rad.meta[keyword]))
        elif keyword in _TYPE2:
            setattr(ds, keyword, "")
    if "StudyInstanceUID" not in rad.meta:
        ds.StudyInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = DigitalXRayImageStorageForPresentation, generate_uid()
    ds.Modality, ds.PresentationIntentType = "DX", "FOR PRESENTATION"
    ds.SeriesInstanceUID, ds.InstanceNumber = generate_uid(), 1
    ds.SeriesNumber = _series_number(rad.meta.get("SeriesNumber"))
    ds.SeriesDescription = "DRR [CT Enhance]" if rad.kind == "line_integral" else "radiograph [CT Enhance]"
    ds.ContentDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.SeriesTime = now.strftime("%H%M%S")
    ds.ImageType = ["DERIVED", "SECONDARY"] + (["DRR"] if rad.kind == "line_integral" else [])
    ds.DerivationDescription = ("line integrals of attenuation (log domain) by ctsr_models"
                                if rad.kind == "line_integral" else "written by ctsr_models")
    ds.Manufacturer, ds.SoftwareVersions = "ctsr_models", __version__
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    ds.ViewPosition = {"pa": "PA", "ap": "AP", "ll": "LL", "rl": "RL"}.get(g.view, "")
    ds.PatientOrientation = [orientation_letters(g.col_dir), orientation_letters(g.row_dir)]
    ds.DistanceSourceToDetector = _ds(g.sid)
    ds.ImagerPixelSpacing = [_ds(p) for p in g.pixel_mm]
    if rad.isocentre is not None:
        magnification = g.magnification_at(rad.isocentre)
        ds.DistanceSourceToPatient = _ds(g.sid / magnification)
        ds.EstimatedRadiographicMagnificationFactor = _ds(magnification)
        ds.PixelSpacing = [_ds(p / magnification) for p in g.pixel_mm]
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = "isocentre plane"
    ds.Rows, ds.Columns = int(g.shape[0]), int(g.shape[1])
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PresentationLUTShape = 1, "MONOCHROME2", "IDENTITY"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", -1
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "US"
    ds.WindowCenter, ds.WindowWidth = _ds(intercept + slope * 32767.5), _ds(slope * 65535.0 or 1.0)
    record = {"geometry": g.to_dict(), "kind": rad.kind,
              "isocentre": list(rad.isocentre) if rad.isocentre is not None else None}
    ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True).add_new(PRIVATE_ELEMENT, "UT", json.dumps(record))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta, ds.preamble = meta, b"\x00" * 128
    ds.is_little_endian, ds.is_implicit_VR = True, False
    return ds

