"""Decode each volume once: a cache folder of ``.npy`` arrays with their geometry in JSON.

Entry names are a hash of the source (resolved path, series UID, read options) and of its content
stamp (size and modification time of the file, or of every file under a folder), so an edited or
replaced scan is decoded again and the old entry is simply no longer used. Arrays are stored as
int16 HU when every value is an integer in range (CT almost always), else float32, and are opened
memory-mapped, so worker processes share the page cache and a patch reads only its own bytes.
Writes are atomic and serialised by a lock file, so ranks and nodes sharing a cache folder decode
each volume once.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctsr_models.io import read_volume
from ctsr_models.io.atomic import atomic_file

from .sources import VolumeRef

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_INT16 = np.iinfo(np.int16)


def content_stamp(path: Path) -> list[Any]:
    """Size and modification time of a file, or of every file under a folder (relative names)."""
    if path.is_file():
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    stamp: list[Any] = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            st = (Path(root) / name).stat()
            stamp.append([os.path.relpath(Path(root) / name, path), st.st_size, st.st_mtime_ns])
    return stamp


def cache_key(ref: VolumeRef) -> str:
    """The cache entry name of a volume: 24 hex digits of a SHA-256 over source and content stamp."""
    blob = json.dumps([CACHE_VERSION, str(ref.path.resolve()), ref.series_uid, ref.resample_irregular,
                       content_stamp(ref.path)])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass
class CachedVolume:
    """A decoded volume in the cache: geometry in memory, voxels memory-mapped on first use.

    Attributes:
        npy: path of the ``(z, y, x)`` HU array (int16 or float32).
        shape: array shape ``(z, y, x)``.
        spacing: voxel size ``(x, y, z)`` in mm (ITK order).
        name: short source name for logs.
        geometry: origin, direction and slice thickness as stored in the JSON.
    """

    npy: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    name: str
    geometry: dict[str, Any] = field(default_factory=dict)
    _array: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def array(self) -> np.ndarray:
        """The voxels, ``(z, y, x)`` HU, memory-mapped read-only."""
        if self._array is None:
            self._array = np.load(self.npy, mmap_mode="r")
        return self._array

    def axis_spacing(self) -> tuple[float, float, float]:
        """Spacing per array axis ``(z, y, x)`` in mm."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None  # reopen the memory map in each worker instead of pickling voxels
        return state


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic renames alone keep the cache consistent
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _store_dtype(array: np.ndarray) -> np.dtype:
    in_range = array.size and array.min() >= _INT16.min and array.max() <= _INT16.max
    if in_range and np.array_equal(array, np.round(array)):
        return np.dtype(np.int16)
    return np.dtype(np.float32)


class VolumeCache:
    """A folder of decoded volumes.

    Args:
        folder: cache folder (created when missing).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def load(self, ref: VolumeRef) -> CachedVolume:
        """The cached volume for ``ref``, decoding and storing it first when needed.

        Raises:
            InputError: the source cannot be read (from :func:`ctsr_models.io.read_volume`).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        key = cache_key(ref)
        npy, meta = self.folder / f"{key}.npy", self.folder / f"{key}.json"
        if not meta.exists():
            with _locked(self.folder / f"{key}.lock"):
                if not meta.exists():
                    self._decode(ref, npy, meta)
        info = json.loads(meta.read_text())
        return CachedVolume(npy=npy, shape=tuple(info["shape_zyx"]), spacing=tuple(info["spacing_xyz_mm"]),
                            name=info["name"], geometry=info)

    @staticmethod
    def _decode(ref: VolumeRef, npy: Path, meta: Path) -> None:
        log.info("decoding %s into the cache", ref.name)
        volume = read_volume(ref.path, series_uid=ref.series_uid, resample_irregular=ref.resample_irregular)
        array = volume.array.astype(_store_dtype(volume.array), copy=False)
        with atomic_file(npy) as tmp, open(tmp, "wb") as handle:
            np.save(handle, array)
        info = {"name": ref.name, "source": str(ref.path.resolve()), "series_uid": ref.series_uid,
                "shape_zyx": list(array.shape), "dtype": str(array.dtype), **volume.geometry_dict(),
                "spacing_xyz_mm": list(volume.spacing)}
        with atomic_file(meta) as tmp:
            tmp.write_text(json.dumps(info, indent=1))
