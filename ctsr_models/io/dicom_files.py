"""Find the DICOM files of an input: a folder (searched recursively), a study ZIP read in memory, or
a single file, ignoring everything that is not DICOM (README, LICENSE, thumbnails, ...).

A file is DICOM when it has ``DICM`` after its 128-byte preamble, or, for files written without
preamble and file meta, when it starts with a group 0002/0008 element and parses with ``force``.
ZIP members are never extracted to disk; a ZIP whose members would expand to more than
``MAX_ZIP_UNCOMPRESSED_BYTES`` is refused before anything is read (zip-bomb guard).
"""
from __future__ import annotations

import contextlib
import io
import logging
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom

from .errors import InputError

logger = logging.getLogger(__name__)

MAX_ZIP_UNCOMPRESSED_BYTES = 8 * 1024**3
"""Largest total uncompressed size (bytes) of the members of a study ZIP (zip-bomb guard)."""


@dataclass(frozen=True)
class DicomSource:
    """One DICOM file: a name for messages (the file name only: folders may hold patient names) and
    how to open it (a path, or the bytes of a ZIP member)."""

    name: str
    open: Callable[[], Path | BinaryIO]


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` is a DICOM file: ``DICM`` after the 128-byte preamble, or (files without
    preamble and file meta) a start that looks like a group 0002/0008 element and parses with force.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return _probe(head, lambda: Path(path))


@contextlib.contextmanager
def open_sources(path: Path) -> Iterator[list[DicomSource]]:
    """The DICOM files of a folder (recursive), a ZIP or a single file, in a stable (name) order.

    Raises:
        InputError: the path does not exist, or is neither a folder, a DICOM file nor a ZIP, or the
            ZIP is too large once expanded.
    """
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        sources = [DicomSource(p.name, (lambda p=p: p)) for p in files if is_dicom_file(p)]
        logger.info("found %d DICOM files among %d files", len(sources), len(files))
        yield sources
    elif path.is_file() and is_dicom_file(path):
        yield [DicomSource(path.name, lambda: path)]
    elif path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            yield _zip_sources(zf, path.name)
    elif path.exists():
        raise InputError(f"{path.name} is not a DICOM file, a folder of DICOM files or a ZIP of them")
    else:
        raise InputError(f"input not found: {path.name}")


def _probe(head: bytes, opener: Callable[[], Path | BinaryIO]) -> bool:
    """DICOM check from the first 132 bytes, with a forced parse for files without a preamble."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8 or struct.unpack("<H", head[:2])[0] not in (0x0002, 0x0008):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(opener(), force=True, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - anything that does not parse is not DICOM
        return False
    return any(k in ds for k in ("SOPClassUID", "Modality", "Rows"))


def _zip_sources(zf: zipfile.ZipFile, zip_name: str) -> list[DicomSource]:
    """The DICOM members of a ZIP, read in memory on demand, after the zip-bomb guard."""
    members = [i for i in zf.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
    total = sum(i.file_size for i in members)
    if total > MAX_ZIP_UNCOMPRESSED_BYTES:
        raise InputError(f"{zip_name} would expand to {total / 1024**3:.1f} GiB, more than the "
                         f"{MAX_ZIP_UNCOMPRESSED_BYTES / 1024**3:.0f} GiB allowed (zip-bomb guard)")
    sources = []
    for info in sorted(members, key=lambda i: i.filename):
        def opener(info: zipfile.ZipInfo = info) -> BinaryIO:
            return io.BytesIO(zf.read(info))
        with zf.open(info) as f:
            head = f.read(132)
        if _probe(head, opener):
            sources.append(DicomSource(Path(info.filename).name, opener))
    logger.info("found %d DICOM members among %d ZIP members", len(sources), len(members))
    return sources
