"""Read and write CT volumes with exact geometry: DICOM series (folder, study ZIP, enhanced
multi-frame), NIfTI, NRRD, MHA in; the same formats or a derived DICOM series out. Irregular
DICOM geometry (tilt, gaps, duplicates) is detected from the slice positions and refused unless
resampling is asked for. Radiographs (DICOM DX/CR/CT localizer, PNG, JPEG) carry their projection
geometry. Every write is atomic."""
from __future__ import annotations

from .dicom_read import SeriesInfo, is_dicom_file, list_dicom_series, read_dicom
from .dicom_write import write_dicom_series
from .errors import GeometryError, InputError
from .formats import FILE_SUFFIXES, file_suffix, read_volume, write_volume
from .radiograph import Radiograph, read_radiograph, write_radiograph
from .volume import Volume

__all__ = [
    "FILE_SUFFIXES", "GeometryError", "InputError", "Radiograph", "SeriesInfo", "Volume", "file_suffix",
    "is_dicom_file", "list_dicom_series", "read_dicom", "read_radiograph", "read_volume", "write_dicom_series",
    "write_radiograph", "write_volume",
]
