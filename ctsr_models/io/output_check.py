"""Check an output path before any long work: a known format, and a folder this process can write in.

A command that reads, computes for minutes and only then fails to write has wasted the user's time
and, worse, may leave them with an error that names a hidden temporary file. :func:`check_output`
runs first and raises :class:`InputError` with a message that names the user's own path.

Writability is probed, not guessed from permission bits: a temporary file is created and removed in
the nearest existing folder of the path (``os.access`` answers "yes" to root on a read-only mount).
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Literal

from .errors import InputError

OutputKind = Literal["volume", "folder"]
"""``volume``: a volume file by suffix, or a folder for a DICOM series; ``folder``: a folder to create."""

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
"""Volume formats written atomically as one file (``.nhdr``/``.mhd`` write two files: refused)."""
_TWO_FILE_SUFFIXES = (".nhdr", ".mhd")


def _volume_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(VOLUME_SUFFIXES + _TWO_FILE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def check_output(path: str | Path, kind: OutputKind = "volume", overwrite: bool = False) -> Path:
    """Refuse an output that cannot be written, before any work is done.

    Args:
        path: the output the user named.
        kind: see :data:`OutputKind`.
        overwrite: an existing non-empty output folder may be replaced.

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        InputError: unknown format, an existing file or folder in the way, or a folder that
            cannot be written; the message names ``path`` as given.
    """
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise InputError(f"output {str(path)!r} names no file or folder")
    suffix = _volume_suffix(path) if kind == "volume" else ""
    if suffix in _TWO_FILE_SUFFIXES:
        raise InputError(f"output {path}: {suffix} writes two files and cannot be written atomically; "
                         "use .nrrd or .mha")
    if suffix:
        if path.is_dir():
            raise InputError(f"output {path} is an existing folder; give a file name ending in "
                             f"{'/'.join(VOLUME_SUFFIXES)}")
    else:
        _check_folder_output(path, kind, overwrite)
    _check_writable(path)
    return path


def _check_folder_output(path: Path, kind: OutputKind, overwrite: bool) -> None:
    if kind == "volume" and path.suffix and not path.is_dir():
        raise InputError(f"output {path}: unknown format {path.suffix!r}; use {'/'.join(VOLUME_SUFFIXES)}, "
                         "or a folder (no suffix) for a DICOM series")
    if path.exists() and not path.is_dir():
        raise InputError(f"output {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InputError(f"output folder {path} exists and is not empty; choose another or pass --overwrite")


def _check_writable(path: Path) -> None:
    """Probe the nearest existing folder of ``path`` with a temporary file."""
    folder = path.parent if str(path.parent) else Path(".")
    while not folder.exists():
        if folder.parent == folder:
            break
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"cannot write output {path}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ctsr-write-check.", dir=folder)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason = f"{reason}: the folder is not writable"
        raise InputError(f"cannot write output {path}: {reason} ({folder})") from None
    os.close(fd)
    os.unlink(probe)
