"""Where training volumes come from: sources in a config, expanded to one reference per CT volume.

A source ``path`` is a NIfTI/NRRD/MHA file, a study ZIP, an enhanced multi-frame DICOM file, a folder
holding one or many DICOM series and/or volume files and ZIPs (searched recursively), or a glob
pattern of any of these. Each CT series in a ZIP or DICOM folder counts as one volume.
"""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ctsr_models.io import InputError, file_suffix, is_dicom_file, list_dicom_series

log = logging.getLogger(__name__)

AXES = ("z", "y", "x")


@dataclass
class VolumeSource:
    """One entry of a dataset in a config.

    Attributes:
        path: file, ZIP, folder or glob pattern (see the module docstring).
        axes: axes that may be degraded: ``"z"`` (through-plane) and/or ``"x"``, ``"y"`` (in-plane
            self-supervision, for volumes whose z is already thick).
        z_fraction: ``[start, stop)`` of the slices used, as fractions of the z extent, e.g. ``[0.8, 1.0]``
            to hold out the last fifth of a scan for validation.
        weight: relative sampling weight of this source (shared equally by its volumes).
        series_uid: read only this series of a DICOM folder or ZIP.
        resample_irregular: resample tilted or irregularly spaced DICOM series instead of refusing them.
    """

    path: Path
    axes: list[str] = field(default_factory=lambda: ["z", "x", "y"])
    z_fraction: tuple[float, float] = (0.0, 1.0)
    weight: float = 1.0
    series_uid: str | None = None
    resample_irregular: bool = False

    def __post_init__(self) -> None:
        bad = [a for a in self.axes if a not in AXES]
        if bad or not self.axes or len(set(self.axes)) != len(self.axes):
            raise ValueError(f"axes must be distinct values from {', '.join(AXES)}, got {self.axes}")
        lo, hi = self.z_fraction
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"z_fraction must satisfy 0 <= start < stop <= 1, got {list(self.z_fraction)}")
        if not self.weight > 0:
            raise ValueError(f"weight must be > 0, got {self.weight}")


@dataclass(frozen=True)
class VolumeRef:
    """One CT volume to decode: a path and, for DICOM collections, the series to read."""

    path: Path
    series_uid: str | None = None
    resample_irregular: bool = False

    @property
    def name(self) -> str:
        """Short name for logs (file or folder name, plus the end of the series UID)."""
        return self.path.name + (f"[{self.series_uid[-8:]}]" if self.series_uid else "")


def matched_paths(source: VolumeSource, label: str) -> list[Path]:
    """The existing paths a source names (its glob matches, or the path itself).

    Cheap (no file is opened): used to stop on a missing data folder before any process group starts.

    Raises:
        InputError: the path does not exist or the pattern matches nothing (one line naming ``label``).
    """
    text = str(source.path)
    if glob.has_magic(text):
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
        if not matches:
            raise InputError(f"{label}: no files match {text}")
        return matches
    if not source.path.exists():
        raise InputError(f"{label}: data not found: {text}")
    return [source.path]


def _dicom_series_refs(path: Path, source: VolumeSource) -> list[VolumeRef]:
    refs = []
    for info in list_dicom_series(path):
        if source.series_uid is not None and info.series_uid != source.series_uid:
            continue
        if info.modality != "CT":
            log.info("skipping series %s in %s: modality %s", info.series_uid[-8:], path.name, info.modality or "?")
            continue
        refs.append(VolumeRef(path, info.series_uid, source.resample_irregular))
    return refs


def _folder_refs(folder: Path, source: VolumeSource) -> list[VolumeRef]:
    refs: list[VolumeRef] = []
    has_dicom = False
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if file_suffix(path) or path.suffix.lower() == ".zip":
                refs += _file_refs(path, source)
            elif not has_dicom and is_dicom_file(path):
                has_dicom = True
    if has_dicom:
        refs += _dicom_series_refs(folder, source)
    return refs


def _file_refs(path: Path, source: VolumeSource) -> list[VolumeRef]:
    if file_suffix(path):
        return [VolumeRef(path)]
    if path.suffix.lower() == ".zip" or is_dicom_file(path):
        return _dicom_series_refs(path, source)
    raise InputError(f"{path.name} is not a CT volume file, DICOM file, ZIP or folder")


def find_volumes(source: VolumeSource, label: str) -> list[VolumeRef]:
    """Every CT volume a source names, in a stable order.

    Args:
        source: the config entry.
        label: where it sits in the config (e.g. ``"data.train[0]"``), for messages.

    Raises:
        InputError: missing path, no match, an unsupported file, or no CT volume found.
    """
    refs: list[VolumeRef] = []
    for path in matched_paths(source, label):
        refs += _folder_refs(path, source) if path.is_dir() else _file_refs(path, source)
    if not refs:
        raise InputError(f"{label}: no CT volumes found in {source.path}")
    return refs
