"""Atomic writes: a result appears whole under its final name, or not at all."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError


def _suffixes(path: Path) -> str:
    """All suffixes of a file name (``.nii.gz``), so writers that pick a format by name still work."""
    return "".join(path.suffixes)


def _read_umask() -> int:
    """The process umask, read once at import (setting it to probe is not thread-safe later)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_file(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` when the block succeeds.

    The temporary name keeps the suffixes of ``final`` (writers choose the format from them).
    On any error the temporary file is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name.split('.')[0]}.", suffix=".partial" + _suffixes(final),
                               dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; a result gets the usual mode
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; rename it to ``final`` when the block succeeds.

    Args:
        final: the folder to create.
        overwrite: replace an existing non-empty ``final``; otherwise refuse it with
            :class:`InputError` before anything is written.
    """
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise InputError(f"output {final.name} exists and is not a folder")
    if final.is_dir() and any(final.iterdir()) and not overwrite:
        raise InputError(f"output folder {final.name} exists and is not empty; choose another or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; a result gets the usual mode
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old.{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
