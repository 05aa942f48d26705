"""The result file: int16 HU (float32 on request) in an uncompressed format unless asked otherwise.

MONAI Label's own writer obeys the client's ``result_dtype``; the official Slicer plugin asks for
``uint8``, which would destroy HU. Here ``result_dtype`` is honoured only as ``float32``; anything
else gives int16 HU, and the result JSON says so. ``result_extension`` may be ``.nrrd`` (default),
``.nii``, ``.nii.gz`` or ``.mha``; another extension falls back to the default with a note. Writing
512x512x300 int16 takes about 0.9 s as ``.nrrd`` or ``.nii`` and 2.9 s as ``.nii.gz`` (float32:
0.4 s vs 8.1 s) on the 2-core CI machine (``benchmarks/server_overhead.py --formats``).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctsr_models.io import Volume, write_volume

RESULT_EXTENSIONS = (".nrrd", ".nii", ".nii.gz", ".mha")
DEFAULT_EXTENSION = ".nrrd"
DEFAULT_DTYPE = "int16"
RESULT_PREFIX = "ctsr_result_"


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
