"""Write a volume as a derived CT DICOM series (one file per slice), atomically.

The series is new (new Series and SOP Instance UIDs; ``ImageType`` ``DERIVED\\SECONDARY\\AXIAL``) but
belongs to the source study: patient and study identity and the frame of reference come from
``Volume.meta`` (filled by :func:`~ctsr_models.io.dicom_read.read_dicom`). Voxels are stored as
rounded, clipped HU: ``int16`` with rescale ``1, 0`` or ``uint16`` with rescale ``1, -1024``.

Slice ``k`` has ``ImagePositionPatient = origin + k * spacing_z * d_z`` and the orientation of the
first two direction columns. DICOM readers sort slices along ``row x col``; a left-handed direction
(``d_z = -(row x col)``) is therefore read back with the slice order and the third direction
column reversed: the same voxels at the same physical places.

:func:`derived_series_datasets` makes the datasets; :func:`write_dicom_series` writes them to a folder
and ``monailabel_app/lib/pacs.py`` sends them to a PACS (STOW-RS): one implementation for both.
A :class:`Derivation` says how the series was made: its SeriesDescription then names the method
(e.g. ``AI-enhanced``), the slice spacing and the model, and it references the source series
(``ReferencedSeriesSequence``); without one the description is ``"<source description> [CT Enhance]"``.
"""
from __future__ import annotations

import copy
import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass
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
_LO_CHARS = 64
"""Longest SeriesDescription (VR LO)."""


@dataclass(frozen=True)
class Derivation:
    """How a derived series was made: shown to a person in its SeriesDescription and DerivationDescription.

    Attributes:
        method: what was done, as a person should read it first, e.g. ``"AI-enhanced"`` or
            ``"AI estimate from X-rays"`` (say "AI" whenever a network made the voxels).
        model: the model that made it (its real name, not an alias such as ``default``).
        spacing_mm: slice spacing of the result in mm, named in the description (``None``: not named).
        details: a sentence appended to the DerivationDescription (e.g. "Not an acquired image.").
        source_series: SeriesInstanceUIDs the series was derived from (default: ``meta["SeriesInstanceUID"]``).
        source_instances: ``(SOPClassUID, SOPInstanceUID)`` of the source images, listed in the
            ``ReferencedInstanceSequence`` of the first source series when known.
    """

    method: str
    model: str
    spacing_mm: float | None = None
    details: str = ""
    source_series: tuple[str, ...] = ()
    source_instances: tuple[tuple[str, str], ...] = ()

    def series_description(self) -> str:
        """``"<method> <spacing> mm <model> [CT Enhance]"``, at most 64 characters (the tag is kept)."""
        spacing = f" {self.spacing_mm:g} mm" if self.spacing_mm is not None else ""
        text = f"{self.method}{spacing} {self.model}"
        return f"{text[:_LO_CHARS - len(ENHANCED_TAG) - 1]} {ENHANCED_TAG}"

    def derivation_description(self) -> str:
        """One paragraph for DerivationDescription (VR ST): method, software, model, spacing, details."""
        spacing = f", slice spacing {self.spacing_mm:g} mm" if self.spacing_mm is not None else ""
        text = f"{self.method} by CT Enhance (ctsr_models {__version__}), model {self.model}{spacing}."
        return f"{text} {self.details}".strip()[:1024]


def write_dicom_series(
    volume: Volume,
    out_dir: str | Path,
    *,
    series_description: str | None = None,
    overwrite: bool = False,
    dtype: str = "int16",
    derivation: Derivation | None = None,
) -> Path:
    """Write ``volume`` as a derived CT series, one file per slice, into a new folder.

    Args:
        volume: HU volume with geometry; its ``meta`` gives patient/study identity (new UIDs are made
            for what is missing).
        out_dir: folder to create. It is written beside as a temporary folder and renamed on success.
        series_description: SeriesDescription; default from ``derivation``, else
            ``"<source description> [CT Enhance]"``.
        overwrite: replace an existing non-empty folder (refused otherwise).
        dtype: ``"int16"`` (HU stored as is) or ``"uint16"`` (HU + 1024, values below -1024 clipped).
        derivation: how the series was made (description wording and source references).

    Returns:
        The folder written.

    Raises:
        ValueError: unknown ``dtype``.
        InputError: ``out_dir`` exists and is not empty, and ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    datasets = derived_series_datasets(volume, series_description=series_description, dtype=dtype,
                                       derivation=derivation)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for k, ds in enumerate(datasets):
            pydicom.dcmwrite(tmp / f"IM{k + 1:05d}.dcm", ds, write_like_original=False)
    logger.info("wrote a derived DICOM series of %d slices", volume.shape[0])
    return out_dir


def derived_series_datasets(
    volume: Volume,
    *,
    series_description: str | None = None,
    dtype: str = "int16",
    derivation: Derivation | None = None,
) -> Iterator[Dataset]:
    """The slices of a new derived CT series of ``volume``, one complete dataset (with file meta) each.

    All datasets of one call share a new SeriesInstanceUID; each has a new SOPInstanceUID. Slice
    ``k`` (``InstanceNumber`` ``k + 1``) holds ``volume.array[k]``, rounded and clipped to ``dtype``.
    The arguments are those of :func:`write_dicom_series`; they are checked before the first slice.

    Raises:
        ValueError: unknown ``dtype``.
    """
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(OUTPUT_DTYPES)}, got {dtype!r}")
    store_type, intercept = OUTPUT_DTYPES[dtype]
    info = np.iinfo(store_type)
    values = np.rint(np.asarray(volume.array, dtype=np.float64) - intercept)
    stored = np.clip(values, info.min, info.max).astype(store_type)
    template = _series_template(volume, series_description, intercept, dtype == "int16")
    if derivation is not None:
        _describe_derivation(template, volume.meta, derivation, series_description)
    return _slices(volume, template, stored)


def _slices(volume: Volume, template: Dataset, stored: np.ndarray) -> Iterator[Dataset]:
    d = volume.direction_matrix
    for k in range(volume.shape[0]):
        position = np.asarray(volume.origin) + k * volume.spacing[2] * d[:, 2]
        yield _slice_dataset(template, stored[k], position, k, float(position @ np.cross(d[:, 0], d[:, 1])))


def _describe_derivation(ds: Dataset, meta: dict[str, Any], derivation: Derivation, description: str | None) -> None:
    """SeriesDescription, DerivationDescription and the references to the source series."""
    if description is None:
        ds.SeriesDescription = derivation.series_description()
    ds.DerivationDescription = derivation.derivation_description()
    sources = derivation.source_series or ((str(meta["SeriesInstanceUID"]),) if meta.get("SeriesInstanceUID") else ())
    items = []
    for n, uid in enumerate(sources):
        item = Dataset()
        item.SeriesInstanceUID = uid
        if n == 0 and derivation.source_instances:
            item.ReferencedInstanceSequence = [_reference(*pair) for pair in derivation.source_instances]
        items.append(item)
    if items:
        ds.ReferencedSeriesSequence = items


def _reference(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
    return item


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
    ds.ManufacturerModelName = "CT Enhance"
    ds.SoftwareVersions = __version__
    ds.BurnedInAnnotation = "NO"
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
