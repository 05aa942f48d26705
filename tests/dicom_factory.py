"""Build small synthetic CT DICOM series with pydicom, with full control over their geometry.

Geometry helpers compute every slice's ImagePositionPatient from first principles (origin, IOP
axes, gaps, shear), and :func:`phantom_slices` fills slices with an analytic function of the LPS
position of each pixel centre, so a reader can be checked against the formula.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def axes(iop: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column and normal (row x col) unit vectors of an IOP (each normalised to length 1)."""
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


def oblique_iop(degrees_xyz: Sequence[float]) -> tuple[float, ...]:
    """The IOP of axial slices rotated by Euler angles (degrees, extrinsic x, y, z)."""
    ax, ay, az = np.radians(degrees_xyz)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    m = rz @ ry @ rx
    return tuple(float(v) for v in np.concatenate([m[:, 0], m[:, 1]]))


def stack_ipps(origin: Sequence[float], iop: Sequence[float], positions: Sequence[float],
               shear_mm_per_mm: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """IPPs of slices at ``positions`` (mm along the normal, from ``origin``), optionally sheared.

    ``shear_mm_per_mm`` = in-plane shift along (row, col) per mm along the normal (tan of a tilt).
    """
    row, col, normal = axes(iop)
    t = np.asarray(positions, float)[:, None]
    return (np.asarray(origin, float) + t * normal + t * shear_mm_per_mm[0] * row + t * shear_mm_per_mm[1] * col)


def pixel_centres(ipp: Sequence[float], iop: Sequence[float], pixel_spacing: Sequence[float],
                  shape: tuple[int, int]) -> np.ndarray:
    """LPS centres ``(rows, cols, 3)`` of the pixels of one slice (PixelSpacing = (dy, dx))."""
    row, col, _ = axes(iop)
    j, i = np.mgrid[0:shape[0], 0:shape[1]]
    return (np.asarray(ipp, float) + i[..., None] * pixel_spacing[1] * row + j[..., None] * pixel_spacing[0] * col)


def in_field_of_view(points: np.ndarray, ipp: Sequence[float], iop: Sequence[float], pixel_spacing: Sequence[float],
                     shape: tuple[int, int]) -> np.ndarray:
    """Whether LPS points ``(..., 3)`` project inside the pixel grid of a slice (PixelSpacing = (dy, dx))."""
    u, v = slice_coordinates(points, ipp, iop, pixel_spacing)
    return (u >= 0) & (u <= shape[1] - 1) & (v >= 0) & (v <= shape[0] - 1)


def slice_coordinates(points: np.ndarray, ipp: Sequence[float], iop: Sequence[float],
                      pixel_spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Continuous (column, row) pixel coordinates of LPS points projected onto a slice."""
    row, col, _ = axes(iop)
    rel = np.asarray(points, float) - np.asarray(ipp, float)
    return rel @ row / pixel_spacing[1], rel @ col / pixel_spacing[0]


def phantom_slices(ipps: np.ndarray, iop: Sequence[float], pixel_spacing: Sequence[float], shape: tuple[int, int],
                   func: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``(n, rows, cols)`` HU values ``func(P)`` at every pixel centre ``P`` (LPS, mm)."""
    return np.stack([func(pixel_centres(p, iop, pixel_spacing, shape)) for p in ipps]).astype(np.float64)


def linear_hu(p: np.ndarray) -> np.ndarray:
    """A smooth analytic phantom: HU is a linear function of the LPS position (mm)."""
    return 2.0 * p[..., 0] - 3.0 * p[..., 1] + 5.0 * p[..., 2] + 40.0


def write_slices(
    folder: Path,
    slices_hu: Sequence[np.ndarray],
    ipps: Sequence[Sequence[float] | None],
    *,
    iop: Sequence[float] | Sequence[Sequence[float]] = AXIAL,
    pixel_spacing: Sequence[float] | Sequence[Sequence[float]] = (0.5, 0.5),
    slope: float | Sequence[float] = 1.0,
    intercept: float | Sequence[float] = -1024.0,
    series_uid: str | None = "auto",
    modality: str = "CT",
    photometric: str = "MONOCHROME2",
    slice_thickness: float | None = 2.0,
    extra: dict[str, Any] | None = None,
    names: Sequence[str] | None = None,
    order: Sequence[int] | None = None,
    preamble: bool = True,
) -> list[Path]:
    """Write one single-frame CT file per slice; return the paths.

    Args:
        folder: where to write (created).
        slices_hu: 2D HU arrays (their shapes may differ).
        ipps: per slice ImagePositionPatient, ``None`` to leave it out.
        iop, pixel_spacing, slope, intercept: one value for all slices or one per slice.
        series_uid: ``"auto"`` for a fresh UID, ``None`` to leave SeriesInstanceUID out.
        extra: more top-level attributes for every slice (keyword -> value).
        names: file names (default ``IM0001.dcm`` ...).
        order: write order (file-name order) as a permutation of slice indices.
        preamble: False writes a bare dataset (no preamble, no file meta), implicit VR.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n = len(slices_hu)
    per = _per_slice(n)
    iops, spacings = per(iop, 6), per(pixel_spacing, 2)
    slopes, intercepts = per(slope, 0), per(intercept, 0)
    study, series = generate_uid(), (generate_uid() if series_uid == "auto" else series_uid)
    frame_of_reference = generate_uid()
    paths = []
    for rank, k in enumerate(order if order is not None else range(n)):
        stored = np.rint((np.asarray(slices_hu[k], float) - intercepts[k]) / slopes[k]).astype(np.int16)
        ds = _base_dataset(modality, study, series, frame_of_reference, photometric, extra)
        ds.InstanceNumber = k + 1
        if ipps[k] is not None:
            ds.ImagePositionPatient = [f"{v:.6f}" for v in ipps[k]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iops[k]]
        ds.PixelSpacing = [f"{v:g}" for v in spacings[k]]
        if slice_thickness is not None:
            ds.SliceThickness = f"{slice_thickness:g}"
        ds.RescaleSlope, ds.RescaleIntercept = f"{slopes[k]:g}", f"{intercepts[k]:g}"
        _set_pixels(ds, stored)
        path = folder / (names[rank] if names is not None else f"IM{rank + 1:04d}.dcm")
        _save(ds, path, preamble)
        paths.append(path)
    return paths


def _per_slice(n: int) -> Callable[[Any, int], list[Any]]:
    def per(value: Any, width: int) -> list[Any]:
        arr = np.asarray(value, dtype=float)
        if (width and arr.ndim == 2) or (not width and arr.ndim == 1):
            return [tuple(v) if width else float(v) for v in arr]
        return [tuple(arr) if width else float(arr)] * n
    return per


def _base_dataset(modality: str, study: str, series: str | None, frame_of_reference: str, photometric: str,
                  extra: dict[str, Any] | None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage if modality == "CT" else "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "PH001", "19700101", "O"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study, "20240102", "101500", "S1"
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyDescription = "ACC1", "Ref^Doc", "Synthetic study"
    if series is not None:
        ds.SeriesInstanceUID = series
    ds.SeriesNumber, ds.SeriesDescription = 3, "Synthetic 2mm"
    ds.FrameOfReferenceUID = frame_of_reference
    ds.Manufacturer, ds.KVP, ds.ConvolutionKernel, ds.PatientPosition = "ACME", "120", "B30f", "HFS"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PhotometricInterpretation = photometric
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    return ds


def _set_pixels(ds: Dataset, stored: np.ndarray) -> None:
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.ascontiguousarray(stored, dtype="<i2").tobytes()


def _save(ds: Dataset, path: Path, preamble: bool) -> None:
    if preamble:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta, ds.preamble = meta, b"\x00" * 128
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(path, ds, write_like_original=False)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, True
        pydicom.dcmwrite(path, ds, write_like_original=True)


def write_enhanced(path: Path, slices_hu: np.ndarray, ipps: np.ndarray, *, iop: Sequence[float] = AXIAL,
                   pixel_spacing: Sequence[float] = (0.5, 0.5), intercept: float = -1024.0,
                   order: Sequence[int] | None = None) -> Path:
    """Write an enhanced multi-frame CT: shared orientation/spacing/rescale, per-frame positions."""
    order = list(order if order is not None else range(len(slices_hu)))
    ds = _base_dataset("CT", generate_uid(), generate_uid(), generate_uid(), "MONOCHROME2", None)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.NumberOfFrames = len(order)
    shared = Dataset()
    shared.PlaneOrientationSequence = DicomSequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [f"{v:.8f}" for v in iop]
    shared.PixelMeasuresSequence = DicomSequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    shared.PixelMeasuresSequence[0].SliceThickness = "3"
    shared.PixelValueTransformationSequence = DicomSequence([Dataset()])
    pvt = shared.PixelValueTransformationSequence[0]
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = "1", f"{intercept:g}", "HU"
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for k in order:
        item = Dataset()
        item.PlanePositionSequence = DicomSequence([Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = [f"{v:.6f}" for v in ipps[k]]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    _set_pixels(ds, np.rint(np.asarray(slices_hu, float)[order] - intercept).astype(np.int16))
    _save(ds, path, preamble=True)
    return path
