"""Read any supported CT input into a :class:`Volume`, and write a volume by the output name.

Inputs: a DICOM series (folder, study ZIP, or one enhanced multi-frame file), NIfTI (``.nii``,
``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``). Outputs: the same file
formats (int16 HU by default, float32 on request), or a folder, which receives a derived DICOM
series.
"""
from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_file
from .dicom_read import is_dicom_file, read_dicom
from .dicom_write import write_dicom_series
from .errors import InputError
from .volume import Volume

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
OUTPUT_DTYPES = ("int16", "float32")
THICKNESS_KEY = "ctsr_slice_thickness_mm"
_NOTES_KEY = "ITK_FileNotes"  # NIfTI keeps it as ``descrip``; NRRD/MHA keep any key
_NOTES_PREFIX = "slice_thickness_mm="
_INT16 = np.iinfo(np.int16)


def file_suffix(path: str | Path) -> str:
    """The volume-format suffix of a path (``.nii.gz`` counts as one), lower case, or ``""``."""
    name = Path(path).name.lower()
    for suffix in sorted(FILE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def read_volume(path: str | Path, **dicom_options: Any) -> Volume:
    """Read a CT volume in HU with its geometry.

    Args:
        path: DICOM folder, study ZIP, DICOM file, or NIfTI/NRRD/MHA file.
        **dicom_options: passed to :func:`read_dicom` (``series_uid``, ``resample_irregular``,
            ``resample_spacing``, ``allow_non_ct``); ``allow_non_ct`` also applies to files.

    Raises:
        InputError: missing, unreadable, 2D or non-CT input, or irregular geometry.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir() or path.suffix.lower() == ".zip":
        return read_dicom(path, **dicom_options)
    if file_suffix(path):
        return _read_itk_file(path, allow_non_ct=bool(dicom_options.get("allow_non_ct", False)))
    if is_dicom_file(path):
        return read_dicom(path, **dicom_options)
    raise InputError(
        f"{path.name} is not a supported input: give a DICOM folder or ZIP, or a "
        f"{'/'.join(FILE_SUFFIXES)} file"
    )


def _check_gzip_complete(path: Path) -> None:
    """SimpleITK fills a truncated ``.gz`` with zeros without an error: read the stream to its end."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"cannot read {path.name}: the file is corrupt or truncated") from exc


def _read_itk_file(path: Path, allow_non_ct: bool) -> Volume:
    import SimpleITK as sitk

    if path.name.lower().endswith(".gz"):
        _check_gzip_complete(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read {path.name}: the file is corrupt or not an image") from exc
    size = img.GetSize()
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path.name} has {img.GetNumberOfComponentsPerPixel()} components per voxel; a CT has one")
    if img.GetDimension() != 3 or min(size) < 2:
        raise InputError(f"{path.name} is not a 3D volume (size {'x'.join(map(str, size))}); a CT volume is needed")
    volume = Volume.from_sitk(sitk.Cast(img, sitk.sitkFloat32), slice_thickness=_read_thickness(img))
    check_hu(volume, path.name, allow_non_ct)
    return volume


def _read_thickness(img: Any) -> float | None:
    keys = set(img.GetMetaDataKeys())
    if THICKNESS_KEY in keys:
        return float(img.GetMetaData(THICKNESS_KEY))
    for key in ("descrip", _NOTES_KEY):
        value = img.GetMetaData(key) if key in keys else ""
        if value.startswith(_NOTES_PREFIX):
            return float(value[len(_NOTES_PREFIX):].split()[0])
    return None


def check_hu(volume: Volume, name: str, allow_non_ct: bool = False) -> None:
    """Refuse an array that cannot be CT in HU: with no value below 0 there is neither air nor fat.

    Raises:
        InputError: unless ``allow_non_ct``.
    """
    if allow_non_ct:
        return
    lo, hi = float(np.min(volume.array)), float(np.max(volume.array))
    if lo >= 0:
        raise InputError(
            f"{name} does not look like CT in HU (values {lo:g} to {hi:g}, none below 0 where air is "
            "about -1000); convert it to HU first, or pass --allow-non-ct"
        )


def to_output_dtype(array: np.ndarray, dtype: str) -> np.ndarray:
    """Cast HU to the output type: int16 rounds and clips (clipping is logged), float32 keeps values."""
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype!r}")
    if dtype == "float32":
        return array.astype(np.float32, copy=False)
    clipped = np.count_nonzero((array < _INT16.min) | (array > _INT16.max))
    if clipped:
        log.warning("%d voxels outside the int16 range were clipped", clipped)
    return np.clip(np.rint(array), _INT16.min, _INT16.max).astype(np.int16)


def write_volume(volume: Volume, path: str | Path, *, dtype: str = "int16", overwrite: bool = False,
                 series_description: str | None = None) -> Path:
    """Write a volume atomically; the format follows the name.

    Args:
        volume: the volume to write.
        path: a ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` file, or a folder
            (no such suffix), which receives a derived DICOM series.
        dtype: ``"int16"`` (HU, rounded) or ``"float32"``; DICOM is always int16.
        overwrite: replace an existing non-empty DICOM folder.
        series_description: DICOM only; defaults to the source's description marked enhanced.

    Returns:
        The written path.
    """
    path = Path(path)
    if not file_suffix(path):
        if path.suffix and not path.is_dir():
            raise InputError(f"unknown output format {path.suffix!r}: use {'/'.join(FILE_SUFFIXES)} or a folder for DICOM")
        return write_dicom_series(volume, path, series_description=series_description, overwrite=overwrite)
    if file_suffix(path) in (".nhdr", ".mhd"):
        raise InputError(f"{file_suffix(path)} writes two files and cannot be written atomically; use .nrrd or .mha")
    import SimpleITK as sitk

    img = volume.replace(array=to_output_dtype(volume.array, dtype)).to_sitk()
    if volume.slice_thickness is not None:
        img.SetMetaData(THICKNESS_KEY, f"{volume.slice_thickness:.6g}")
        img.SetMetaData(_NOTES_KEY, f"{_NOTES_PREFIX}{volume.slice_thickness:.6g}")
    with atomic_file(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=path.name.lower().endswith(".gz"))
    log.info("wrote %s (%s, %s)", path.name, dtype, "x".join(map(str, img.GetSize())))
    return path
