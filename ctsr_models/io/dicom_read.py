"""Read one CT series from DICOM (a folder, a study ZIP, or one enhanced multi-frame file) with the
geometry its slice positions really support.

How a series is read:
    1. :mod:`~ctsr_models.io.dicom_files` finds the DICOM files (folder, ZIP in memory with a
       zip-bomb guard, or one file); other files (README, LICENSE, ...) are ignored.
    2. Headers (no pixels) are grouped by ``SeriesInstanceUID``. When a file has none, the key is
       ``"nouid-"`` + the first 12 hex digits of the SHA-1 of ``StudyInstanceUID|SeriesNumber|
       Modality|FrameOfReferenceUID``; :func:`list_dicom_series` shows it and ``series_uid`` accepts it.
       Objects without an image (no ``Rows``/``Columns``: DICOMDIR, SR, RT structures) are ignored.
    3. Localizer (scout) images mixed into an axial series are left out (noted in ``findings``).
    4. :func:`~ctsr_models.io.slice_geometry.analyse_slices` checks the positions; an irregular series
       is refused with a one-line :class:`GeometryError` unless it can be and is asked to be resampled.
    5. Pixels are decoded (JPEG 2000 / JPEG-LS through the pylibjpeg plugins) and rescaled per slice
       with that slice's ``RescaleSlope``/``RescaleIntercept`` to float32 HU.

``MONOCHROME1``: the Modality LUT (rescale) defines HU whatever the photometric interpretation, which
only says how to display. So images with a rescale (every CT) keep their HU and a finding records
it; images without one (radiographs read with ``allow_non_ct``) are inverted within their stored
range (``max + min - value``) so that larger values mean more attenuation, as for ``MONOCHROME2``.
"""
from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from . import slice_geometry as sg
from .dicom_files import DicomSource, is_dicom_file, open_sources
from .errors import GeometryError, InputError
from .volume import Volume

logger = logging.getLogger(__name__)

__all__ = ["SeriesInfo", "is_dicom_file", "list_dicom_series", "read_dicom"]

RESAMPLE_HINT = ("pass --resample-irregular (resample_irregular=True) to resample onto a regular grid "
                 "from the true slice positions")
IDENTITY_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "StudyInstanceUID", "StudyDate",
    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription", "FrameOfReferenceUID",
    "SeriesInstanceUID", "SeriesDescription", "SeriesNumber", "Modality", "Manufacturer", "ManufacturerModelName",
    "KVP", "ConvolutionKernel", "BodyPartExamined", "PatientPosition",
)
"""Tags copied (as plain str/int/float) into ``Volume.meta`` so that a derived series can be written."""
_CODEC_PACKAGES = {
    **{f"1.2.840.10008.1.2.4.{n}": "pylibjpeg pylibjpeg-openjpeg" for n in (90, 91)},
    **{f"1.2.840.10008.1.2.4.{n}": "pylibjpeg pylibjpeg-libjpeg" for n in (50, 51, 57, 70, 80, 81)},
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}
"""pip packages that decode each compressed transfer syntax (JPEG 2000, JPEG, JPEG-LS, RLE)."""


@dataclass(frozen=True)
class SeriesInfo:
    """One image series found in a DICOM folder or ZIP (no patient data).

    Attributes:
        series_uid: ``SeriesInstanceUID``, or the ``"nouid-..."`` key when the files have none.
        n_files: number of image files in the series.
        modality: ``Modality`` (e.g. ``"CT"``).
        description: ``SeriesDescription`` (may be empty).
    """

    series_uid: str
    n_files: int
    modality: str
    description: str


@dataclass
class _Frame:
    """Header facts about one slice (a single-frame file, or one frame of a multi-frame file)."""

    source: DicomSource
    index: int | None
    ipp: list[float] | None
    iop: list[float] | None
    pixel_spacing: list[float] | None
    shape: tuple[int, int]
    slope: float
    intercept: float
    has_rescale: bool
    rescale_type: str
    thickness: float | None
    tilt: float | None
    localizer: bool


@dataclass
class _Series:
    """The image files of one series, with the header of its first file."""

    key: str
    header: Dataset
    sources: list[DicomSource]
    frames: list[_Frame]

    def info(self) -> SeriesInfo:
        return SeriesInfo(self.key, len(self.sources), str(self.header.get("Modality", "") or ""),
                          str(self.header.get("SeriesDescription", "") or ""))


def list_dicom_series(path: str | Path) -> list[SeriesInfo]:
    """The image series in a DICOM folder (searched recursively), study ZIP or single file.

    Args:
        path: folder, ``.zip`` or DICOM file.

    Returns:
        One :class:`SeriesInfo` per series, sorted by series UID.
    """
    with open_sources(Path(path)) as sources:
        return [s.info() for s in _scan(sources).values()]


def read_dicom(
    path: str | Path,
    *,
    series_uid: str | None = None,
    resample_irregular: bool = False,
    resample_spacing: float | None = None,
    allow_non_ct: bool = False,
) -> Volume:
    """Read one CT series as a float32 HU volume with exact geometry.

    Args:
        path: a folder (searched recursively), a study ZIP, or one DICOM file (an enhanced
            multi-frame CT; a single 2D slice is refused).
        series_uid: which series to read when there are several (``SeriesInstanceUID`` or the
            ``"nouid-..."`` key shown by :func:`list_dicom_series`).
        resample_irregular: resample a tilted, unevenly spaced or gapped series onto a regular grid
            from its true slice positions instead of refusing it.
        resample_spacing: slice spacing (mm) of that regular grid; default the median gap. Regular
            series are always returned on their own grid.
        allow_non_ct: read a series whose ``Modality`` is not CT.

    Returns:
        The volume: ``array`` ``(z, y, x)`` sorted along the slice normal ``row x col``, ``spacing``
        ``(column spacing, row spacing, slice gap)`` in mm, ``origin`` the IPP of the first slice,
        ``direction`` the columns ``(row, col, normal)``, ``meta`` the identity tags, ``findings``
        the geometry notes.

    Raises:
        GeometryError: the slice positions do not form a regular grid (one line naming the problem).
        InputError: nothing readable, several series and no choice, not a CT, a 2D image, a corrupt
            file or a missing codec.
    """
    if resample_spacing is not None and not resample_spacing > 0:
        raise InputError(f"resample spacing must be a positive number of mm, got {resample_spacing}")
    with open_sources(Path(path)) as sources:
        series = _choose_series(_scan(sources), series_uid)
        modality = str(series.header.get("Modality", "") or "")
        if modality != "CT" and not allow_non_ct:
            raise InputError(f"not a CT: Modality is {modality or 'missing'}; pass --allow-non-ct to read it anyway")
        frames, findings = _usable_frames(series.frames)
        report = sg.analyse_slices([f.iop for f in frames], [f.ipp for f in frames],
                                   pixel_spacings=[f.pixel_spacing for f in frames],
                                   shapes=[f.shape for f in frames], gantry_tilts_deg=[f.tilt for f in frames])
        _refuse_irregular(report, resample_irregular)
        frames = [frames[i] for i in report.order]
        stack, notes = _read_pixels(frames)
    findings += report.notes + notes
    return _assemble(stack, frames, report, series.header, findings, resample_spacing)


def _scan(sources: list[DicomSource]) -> dict[str, _Series]:
    """Read every header (no pixels) and group the image files by series."""
    series: dict[str, _Series] = {}
    for source in sources:
        ds = _read(source, stop_before_pixels=True)
        if "Rows" not in ds or "Columns" not in ds:
            _check_non_image(ds, source)
            continue
        try:
            key, frames = _series_key(ds), _frames_of(ds, source)
        except Exception as exc:  # noqa: BLE001 - pydicom converts values lazily, damaged ones raise here
            raise InputError(f"cannot read the header of {source.name} ({type(exc).__name__}); "
                             "it may be corrupt") from exc
        group = series.setdefault(key, _Series(key, ds, [], []))
        group.sources.append(source)
        group.frames.extend(frames)
    logger.info("%d image series", len(series))
    return dict(sorted(series.items()))


def _read(source: DicomSource, stop_before_pixels: bool) -> Dataset:
    """Parse one file; a file that does not parse is named in an :class:`InputError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(source.open(), force=True, stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
        raise InputError(f"cannot read DICOM file {source.name} ({type(exc).__name__}); it may be corrupt") from exc
    return ds


def _check_non_image(ds: Dataset, source: DicomSource) -> None:
    """Accept a file without ``Rows``/``Columns`` as a non-image object, unless it claims an image SOP
    class or holds no data set: pydicom stops quietly at the end of a truncated file."""
    meta = getattr(ds, "file_meta", None)
    sop = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""))
    if "Image Storage" in pydicom.uid.UID(sop).name or not any(e.tag.group != 0x0002 for e in ds):
        raise InputError(f"cannot read DICOM file {source.name} (no image attributes); it may be truncated or corrupt")


def _series_key(ds: Dataset) -> str:
    """``SeriesInstanceUID``, or a ``nouid-`` key from the study, series number, modality and frame
    of reference when it is missing."""
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    if uid:
        return uid
    parts = [str(ds.get(k, "") or "") for k in ("StudyInstanceUID", "SeriesNumber", "Modality", "FrameOfReferenceUID")]
    return "nouid-" + hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def _multi(value: Any) -> list[Any]:
    """A tag value as a list (empty when missing)."""
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]


def _floats(value: Any) -> list[float] | None:
    """A multi-valued numeric tag as floats, ``None`` when missing or unreadable."""
    try:
        return [float(v) for v in _multi(value)] or None
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    values = _floats(value)
    return values[0] if values else None


def _vector(value: Any, length: int) -> list[float] | None:
    """A numeric tag with exactly ``length`` values, ``None`` otherwise (treated as missing)."""
    values = _floats(value)
    return values if values is not None and len(values) == length else None


def _frames_of(ds: Dataset, source: DicomSource) -> list[_Frame]:
    """One :class:`_Frame` per slice of a file (per-frame functional groups for enhanced images)."""
    n_frames = int(_float(ds.get("NumberOfFrames")) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    localizer = "LOCALIZER" in {str(v).strip().upper() for v in _multi(ds.get("ImageType"))}
    frames = []
    for i in range(n_frames):
        groups = [g for g in ((per_frame[i] if per_frame and i < len(per_frame) else None),
                              (shared[0] if shared else None)) if g is not None]
        frames.append(_frame(ds, groups, source, i if n_frames > 1 else None, localizer,
                             positions_known=n_frames == 1 or bool(per_frame)))
    return frames


def _frame(ds: Dataset, groups: list[Dataset], source: DicomSource, index: int | None, localizer: bool,
           positions_known: bool) -> _Frame:
    """The header facts of one frame: functional groups first, then the top-level tags."""
    def get(sequence: str, keyword: str) -> Any:
        for group in groups:
            items = group.get(sequence)
            if items and keyword in items[0]:
                return items[0].get(keyword)
        return ds.get(keyword)

    slope = _float(get("PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _float(get("PixelValueTransformationSequence", "RescaleIntercept"))
    return _Frame(
        source=source, index=index,
        ipp=_vector(get("PlanePositionSequence", "ImagePositionPatient"), 3) if positions_known else None,
        iop=_vector(get("PlaneOrientationSequence", "ImageOrientationPatient"), 6),
        pixel_spacing=_vector(get("PixelMeasuresSequence", "PixelSpacing"), 2), shape=(int(ds.Rows), int(ds.Columns)),
        slope=1.0 if slope is None else slope, intercept=0.0 if intercept is None else intercept,
        has_rescale=slope is not None, rescale_type=str(get("PixelValueTransformationSequence", "RescaleType") or ""),
        thickness=_float(get("PixelMeasuresSequence", "SliceThickness")),
        tilt=_float(get("CTAcquisitionDetailsSequence", "GantryDetectorTilt")), localizer=localizer)


def _choose_series(series: dict[str, _Series], series_uid: str | None) -> _Series:
    """The series asked for, or the only one; otherwise a one-line list of the candidates."""
    if not series:
        raise InputError("no DICOM image found in the input (only non-image or non-DICOM files)")
    listing = "; ".join(f"{s.key} ({len(s.sources)} files, {s.info().modality or '?'}, "
                        f"'{s.info().description}')" for s in series.values())
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(f"series {series_uid} not found; the input holds: {listing}")
        return series[series_uid]
    if len(series) > 1:
        raise InputError(f"{len(series)} series found; choose one with --series-uid (series_uid=...): {listing}")
    return next(iter(series.values()))


def _usable_frames(frames: list[_Frame]) -> tuple[list[_Frame], list[str]]:
    """Refuse a single 2D image; leave out localizers mixed into an axial series."""
    if len(frames) == 1:
        kind = ", a localizer/scout" if frames[0].localizer else ""
        raise InputError(f"2D image (1 slice{kind}) in {frames[0].source.name}: enhancement needs a volume; "
                         "give the folder or ZIP that holds the whole series")
    axial = [f for f in frames if not f.localizer]
    if not axial:
        raise InputError(f"the series holds only localizer/scout images ({len(frames)}), not a volume; "
                         "choose an axial series")
    if len(axial) == 1:
        raise InputError(f"2D image (1 slice besides {len(frames) - 1} localizer(s)) in {axial[0].source.name}: "
                         "enhancement needs a volume")
    notes = [f"excluded_localizer: {len(frames) - len(axial)} localizer/scout image(s) left out"] \
        if len(axial) < len(frames) else []
    return axial, notes


def _refuse_irregular(report: sg.SliceGeometryReport, resample_irregular: bool) -> None:
    """Raise a one-line :class:`GeometryError` unless the series is regular or will be resampled."""
    if report.regular or (report.resamplable and resample_irregular):
        return
    message = report.summary()
    if report.resamplable:
        message += f"; {RESAMPLE_HINT}"
    logger.info("geometry refused: %s", ", ".join(report.findings))
    raise GeometryError(message, report.findings)


def _read_pixels(frames: list[_Frame]) -> tuple[np.ndarray, list[str]]:
    """Decode and rescale the sorted frames into a ``(n, y, x)`` float32 HU stack."""
    stack = np.empty((len(frames),) + frames[0].shape, dtype=np.float32)
    by_source: dict[int, list[int]] = {}
    for k, frame in enumerate(frames):
        by_source.setdefault(id(frame.source), []).append(k)
    notes: set[str] = set()
    for positions in by_source.values():
        source = frames[positions[0]].source
        ds = _read(source, stop_before_pixels=False)
        pixels = _decode(ds, source.name)
        pixels = pixels[None] if pixels.ndim == 2 else pixels
        monochrome1 = str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
        for k in positions:
            frame = frames[k]
            stored = pixels[frame.index or 0]
            if monochrome1 and not frame.has_rescale:
                stored = _invert_stored(stored, ds)
                notes.add("monochrome1: inverted within the stored range (no rescale to HU)")
            elif monochrome1:
                notes.add("monochrome1: kept the rescaled HU (MONOCHROME1 only affects display)")
            if frame.rescale_type and frame.rescale_type.upper() != "HU":
                notes.add(f"rescale_type: RescaleType is {frame.rescale_type}, the values may not be HU")
            stack[k] = stored.astype(np.float64) * frame.slope + frame.intercept
    logger.info("decoded %d slices from %d files", len(frames), len(by_source))
    return stack, sorted(notes)


def _invert_stored(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Invert MONOCHROME1 stored values within the range ``BitsStored`` allows: ``max + min - v``."""
    bits = int(ds.get("BitsStored", 16) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -1 - stored.astype(np.int64)
    return (2**bits - 1) - stored.astype(np.int64)


def _decode(ds: Dataset, name: str) -> np.ndarray:
    """The stored pixel values; a missing codec names the pip packages that provide it."""
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if ds.is_implicit_VR else
                                  ExplicitVRLittleEndian if ds.is_little_endian else ExplicitVRBigEndian)
        ds.file_meta = meta
    if "PixelData" not in ds:
        raise InputError(f"{name} has image attributes but no pixel data; it may be corrupt")
    ts = meta.TransferSyntaxUID
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - handlers raise many types
        text = str(exc).lower()
        if ts.is_compressed and (isinstance(exc, NotImplementedError) or "missing required dependencies" in text
                                 or "plugin" in text or "no pixel data handler" in text):
            packages = _CODEC_PACKAGES.get(str(ts), "pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg")
            raise InputError(f"cannot decode the {ts.name} pixel data of {name}: no decoder installed; "
                             f"pip install {packages}") from exc
        raise InputError(f"cannot decode the pixel data of {name} ({type(exc).__name__}); "
                         "the file may be corrupt") from exc
    if caught:
        logger.debug("%s: %d decoder warning(s)", name, len(caught))
    if pixels.ndim not in (2, 3) or pixels.shape[-2:] != (int(ds.Rows), int(ds.Columns)):
        raise InputError(f"{name}: expected grey-scale pixels, got an array of shape {pixels.shape}")
    return pixels


def _assemble(stack: np.ndarray, frames: list[_Frame], report: sg.SliceGeometryReport, header: Dataset,
              findings: list[str], resample_spacing: float | None) -> Volume:
    """Build the volume, resampling onto a regular grid when the geometry was irregular."""
    dy, dx = frames[0].pixel_spacing  # type: ignore[misc]
    thicknesses = {round(f.thickness, 4) for f in frames if f.thickness is not None}
    thickness = thicknesses.pop() if len(thicknesses) == 1 else None
    if len(thicknesses) > 1:
        findings.append(f"slice_thickness_varies: {min(thicknesses):g} to {max(thicknesses):g} mm")
    if report.regular:
        direction = np.column_stack([report.row, report.col, report.normal]).ravel()
        return Volume(stack, spacing=(dx, dy, report.spacing), origin=tuple(frames[0].ipp),  # type: ignore[arg-type]
                      direction=direction, slice_thickness=thickness, meta=_identity(header), findings=findings)
    spacing = resample_spacing or report.typical_gap
    array, origin, direction = sg.resample_to_regular(stack, np.array([f.ipp for f in frames]), frames[0].iop,
                                                      (dy, dx), spacing)
    findings.append(f"{sg.RESAMPLED_IRREGULAR}: {_short_problems(report)} -> regular {spacing:.2f} mm grid "
                    f"({len(frames)} slices -> {len(array)})")
    logger.info("resampled an irregular series (%s) onto %d slices", ", ".join(report.findings), len(array))
    return Volume(array, spacing=(dx, dy, spacing), origin=origin, direction=direction, slice_thickness=thickness,
                  meta=_identity(header), findings=findings)


def _short_problems(report: sg.SliceGeometryReport) -> str:
    """The resampled problems in a few words with numbers."""
    words = {
        sg.GANTRY_TILT: f"gantry tilt {report.tilt_deg:.1f}°",
        sg.INPLANE_OFFSETS: "in-plane slice offsets",
        sg.NONUNIFORM_SPACING: f"non-uniform spacing (gaps {report.gaps.min():.2f} to {report.gaps.max():.2f} mm)",
        sg.MISSING_SLICES: f"missing slices (gaps up to {report.gaps.max():.2f} mm)",
    }
    return ", ".join(words[code] for code in report.findings)


def _identity(ds: Dataset) -> dict[str, Any]:
    """The identity tags of :data:`IDENTITY_KEYWORDS` as plain values (holds patient data)."""
    meta: dict[str, Any] = {}
    for keyword in IDENTITY_KEYWORDS:
        value = ds.get(keyword)
        if value is None or value == "" or isinstance(value, (bytes, Dataset)):
            continue
        if isinstance(value, MultiValue):
            meta[keyword] = "\\".join(str(v) for v in value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            meta[keyword] = int(value) if isinstance(value, int) else float(value)
        else:
            meta[keyword] = str(value)
    return meta
