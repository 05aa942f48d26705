"""Shared test fixtures: the real data beside the repository, and the CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent


def shared(relative: str) -> Path:
    """A path under ``../shared/data``; the calling test is skipped with the reason if it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data not available: {path} (../shared/data is beside the repository in CI)")
    return path


def run_cli(name: str, *args: str | Path, check: bool = False) -> subprocess.CompletedProcess:
    """Run an installed console script of this package as a user would, capturing its output."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(BIN / name), *map(str, args)], capture_output=True, text=True, env=env, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}): {proc.stderr}")
    return proc
