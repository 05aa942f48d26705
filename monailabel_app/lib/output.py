"""The result file: int16 HU (float32 on request) in an uncompressed format unless asked otherwise.

MONAI Label's own writer obeys the client's ``result_dtype``; the official Slicer plugin asks for
``uint8``, which would destroy HU. Here ``result_dtype`` is honoured only as ``float32``; anything
else gives int16 HU, and the result JSON says so. ``result_extension`` may be ``.nrrd`` (default),
``.nii``, ``.nii.gz`` or ``.mha``; another extension falls back to the default with a note. Writing
512x512x300 int16 takes about 0.9 s as ``.nrrd`` or ``.nii`` and 2.9 s as ``.nii.gz`` (float32:
0.4 s vs 8.1 s) on the 2-core CI machine (``benchmarks/server_overhead.py --formats``).

The uncertainty of a diffusion result (a second volume of the same inference) is kept in the server's
temporary folder under a random result id (32 hex characters, :func:`keep_uncertainty`) until the client
fetches it once (:func:`take_uncertainty`) or :data:`UNCERTAINTY_TTL_S` seconds pass.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctsr_models.io import Volume, write_volume

RESULT_EXTENSIONS = (".nrrd", ".nii", ".nii.gz", ".mha")
DEFAULT_EXTENSION = ".nrrd"
DEFAULT_DTYPE = "int16"
RESULT_PREFIX = "ctsr_result_"
UNCERTAINTY_PREFIX = "ctsr_uncertainty_"
UNCERTAINTY_EXTENSION = ".nrrd"
UNCERTAINTY_TTL_S = 900.0
"""Seconds an unfetched uncertainty volume is kept."""
RESULT_ID = re.compile(r"[0-9a-f]{32}")
UNCERTAINTY_PATH = "/ctsr/result/{result_id}/uncertainty"
"""The route that hands out a kept uncertainty volume once (:mod:`lib.server`)."""

log = logging.getLogger(__name__)


def result_format(request: Mapping[str, Any], default_extension: str = DEFAULT_EXTENSION) -> tuple[str, str, list[str]]:
    """The extension and voxel type of the result, and notes on what the client asked for and did not get.

    Args:
        request: MONAI Label's request (``result_extension``, ``result_dtype`` are read).
        default_extension: the task's default.
    """
    notes = []
    extension = request.get("result_extension") or default_extension
    if not isinstance(extension, str) or extension.lower() not in RESULT_EXTENSIONS:
        notes.append(f"result_extension {extension!r} is not offered ({', '.join(RESULT_EXTENSIONS)}); "
                     f"wrote {default_extension}")
        extension = default_extension
    asked = request.get("result_dtype")
    dtype = "float32" if asked == "float32" else DEFAULT_DTYPE
    if asked not in (None, "", dtype):
        notes.append(f"result_dtype {asked!r} ignored: the result is {dtype} HU")
    return extension.lower(), dtype, notes


def write_result(volume: Volume, extension: str, dtype: str) -> Path:
    """Write ``volume`` to a new temporary file (MONAI Label deletes it after the response).

    The name is random (``ctsr_result_*``): it never carries a patient's or a file's name.
    """
    fd, name = tempfile.mkstemp(prefix=RESULT_PREFIX, suffix=extension)
    os.close(fd)
    path = Path(name)
    try:
        return write_volume(volume, path, dtype=dtype)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _uncertainty_path(result_id: str) -> Path:
    return Path(tempfile.gettempdir()) / f"{UNCERTAINTY_PREFIX}{result_id}{UNCERTAINTY_EXTENSION}"


def purge_uncertainty(now: float | None = None, ttl_s: float = UNCERTAINTY_TTL_S) -> int:
    """Remove kept uncertainty volumes older than ``ttl_s`` seconds; returns how many were removed."""
    now = time.time() if now is None else now
    removed = 0
    for path in Path(tempfile.gettempdir()).glob(f"{UNCERTAINTY_PREFIX}*"):
        try:
            if now - path.stat().st_mtime > ttl_s:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def keep_uncertainty(volume: Volume) -> str:
    """Write a diffusion result's uncertainty (float32 HU) to the temporary folder; return its result id.

    Expired ones are removed first. The id is random (``secrets``), 32 hex characters.
    """
    purge_uncertainty()
    result_id = secrets.token_hex(16)
    path = _uncertainty_path(result_id)
    try:
        write_volume(volume, path, dtype="float32")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return result_id


def take_uncertainty(result_id: str) -> Path | None:
    """Claim a kept uncertainty volume for sending (at most once): the file, renamed so that no second
    request finds it (the caller removes it after sending), or ``None`` when it is unknown, expired or taken.

    Raises:
        ValueError: ``result_id`` is not 32 lowercase hex characters.
    """
    if not isinstance(result_id, str) or not RESULT_ID.fullmatch(result_id):
        raise ValueError("a result id is 32 hex characters (0-9, a-f)")
    purge_uncertainty()
    path = _uncertainty_path(result_id)
    taken = path.with_name(f"{path.name}.sending{secrets.token_hex(4)}{UNCERTAINTY_EXTENSION}")
    try:
        path.rename(taken)
    except FileNotFoundError:
        return None
    return taken
