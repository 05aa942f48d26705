"""Write a volume as a derived CT DICOM series (one file per slice), atomically.

The series is new (new Series and SOP Instance UIDs; ``ImageType`` ``DERIVED\\SECONDARY\\AXIAL``) but
belongs to the source study: patient and study identity and the frame of reference come from
``Volume.meta`` (filled by :func:`~ctsr_models.io.dicom_read.read_dicom`). Voxels are stored as
rounded, clipped HU: ``int16`` with rescale ``1, 0`` or ``uint16`` with rescale ``1, -1024``.

Slice ``k`` has ``ImagePositionPatient = origin + k * spacing_z * d_z`` and the orientation of the
first two direction columns. DICOM readers sort slices along ``row x col``; a left-handed direction
(``d_z = -(row x col)``) is therefore read back with the slice order and the third direction
column reversed: the same voxels at the same physical places.
"""
from __future__ import annotations

import copy
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from .. import __version__
from .atomic import atomic_dir
from .volume import Volume

logger = logging.getLogger(__name__)

ENHANCED_TAG = "[CT Enhance]"
"""Appended to the source SeriesDescription of every derived series."""
OUTPUT_DTYPES = {"int16": (np.int16, 0.0), "uint16": (np.uint16, -1024.0)}
"""Allowed ``dtype`` values and the RescaleIntercept (HU) each uses (slope 1)."""
_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "StudyInstanceUID", "StudyDate",
    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription", "FrameOfReferenceUID",
    "KVP", "ConvolutionKernel", "BodyPartExamined", "PatientPosition",
)
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
          "AccessionNumber", "ReferringPhysicianName", "KVP", "PatientPosition")


def write_dicom_series(
    volume: Volume,
    out_dir: str | Path,
    *,
    series_description: str | None = None,
    overwrite: bool = False,
    dtype: str = "int16",
) -> Path:
    """Write ``volume`` as a derived CT series, one file per slice, into a new folder.

    Args:
        volume: HU volume with geometry; its ``meta`` gives patient/study identity (new UIDs are made
            for what is missing).
        out_dir: folder to create. It is written beside as a temporary folder and renamed on success.
        series_description: SeriesDescription; default ``"<source description> [CT Enhance]"``.
        overwrite: replace an existing non-empty folder (refused otherwise).
        dtype: ``"int16"`` (HU stored as is) or ``"uint16"`` (HU + 1024, values below -1024 clipped).

    Returns:
        The folder written.

    Raises:
        ValueError: unknown ``dtype``.
        InputError: ``out_dir`` exists and is not empty, and ``overwrite`` is False.
    """
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(OUTPUT_DTYPES)}, got {dtype!r}")
    out_dir = Path(out_dir)
    store_type, intercept = OUTPUT_DTYPES[dtype]
    info = np.iinfo(store_type)
    values = np.rint(np.asarray(volume.array, dtype=np.float64) - intercept)
    stored = np.clip(values, info.min, info.max).astype(store_type)
    template = _series_template(volume, series_description, intercept, dtype == "int16")
    d = volume.direction_matrix
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for k in range(volume.shape[0]):
            position = np.asarray(volume.origin) + k * volume.spacing[2] * d[:, 2]
            ds = _slice_dataset(template, stored[k], position, k, float(position @ np.cross(d[:, 0], d[:, 1])))
            pydicom.dcmwrite(tmp / f"IM{k + 1:05d}.dcm", ds, write_like_original=False)
    logger.info("wrote a derived DICOM series of %d slices", volume.shape[0])
    return out_dir


def _ds(value: float) -> str:
    """A decimal string (DS) of at most 16 characters."""
    return format_number_as_ds(float(value))


def _series_template(volume: Volume, description: str | None, intercept: float, signed: bool) -> Dataset:
    """The attributes shared by every slice of the new series."""
    meta = volume.meta
    now = dt.datetime.now()
    ds = Dataset()
    for keyword in _STUDY_KEYWORDS:
        if keyword in meta:
            setattr(ds, keyword, _plain(meta[keyword]))
        elif keyword in _TYPE2:
            setattr(ds, keyword, "")
    if "StudyInstanceUID" not in meta:
        ds.StudyInstanceUID = generate_uid()
    if "FrameOfReferenceUID" not in meta:
        ds.FrameOfReferenceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = _series_number(meta.get("SeriesNumber"))
    source_description = str(meta.get("SeriesDescription", "") or "CT")
    ds.SeriesDescription = description if description is not None else \
        f"{source_description[:64 - len(ENHANCED_TAG) - 1]} {ENHANCED_TAG}"
    ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.DerivationDescription = "Derived by CT Enhance (ctsr_models)"
    ds.Manufacturer = "ctsr_models"
    ds.SoftwareVersions = __version__
    d = volume.direction_matrix
    ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([d[:, 0], d[:, 1]])]
    ds.PixelSpacing = [_ds(volume.spacing[1]), _ds(volume.spacing[0])]
    ds.SliceThickness = _ds(volume.slice_thickness if volume.slice_thickness is not None else volume.spacing[2])
    ds.SpacingBetweenSlices = _ds(volume.spacing[2])
    ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", _ds(intercept), "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    return ds


def _plain(value: Any) -> Any:
    """A meta value as pydicom accepts it (multi-values were joined with backslashes)."""
    if isinstance(value, str) and "\\" in value:
        return value.split("\\")
    if isinstance(value, float):
        return _ds(value)
    return value


def _series_number(source: Any) -> int:
    """Source SeriesNumber + 1000 (so the derived series sorts after it), 1000 when unknown."""
    try:
        return int(source) + 1000
    except (TypeError, ValueError):
        return 1000


def _slice_dataset(template: Dataset, pixels: np.ndarray, position: np.ndarray, k: int, location: float) -> Dataset:
    """One slice file: the shared attributes, its own UID, position and pixels."""
    ds = copy.deepcopy(template)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(location)
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    ds.is_little_endian, ds.is_implicit_VR = True, False
    return ds
