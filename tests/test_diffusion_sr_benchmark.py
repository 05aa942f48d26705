"""Smoke test of ``benchmarks/diffusion_sr_benchmark.py --quick`` on real held-out CT (temp outputs only)."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import REPO, shared

sys.path.insert(0, str(REPO / "benchmarks"))

from diffusion_sr_benchmark import pick_corners  # noqa: E402

METHODS = ("linear", "cubic", "lanczos", "sr_unet_small_v3", "diffusion, 1 sample", "diffusion, mean of 2")


def test_pick_corners_takes_the_largest_non_overlapping_squares() -> None:
    score = np.zeros((64, 64))
    score[40:56, 8:24] = 1.0  # the densest square
    score[0:16, 40:56] = 0.5
    assert pick_corners(score, 16, 2) == [(40, 8), (0, 40)]
    assert pick_corners(score, 16, 1) == [(40, 8)]


def _run(tmp: Path) -> str:
    cmd = [sys.executable, str(REPO / "benchmarks" / "diffusion_sr_benchmark.py"), "--quick", "--device", "cpu",
           "--out-md", str(tmp / "bench.md"), "--fig", str(tmp / "fig.png"), "--work", str(tmp / "work")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (tmp / "bench.md").read_text()


def _rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in METHODS and len(cells) == 12:
            rows[cells[0]] = cells
    return rows


def test_quick_benchmark_writes_every_method_with_finite_numbers(tmp_path: Path) -> None:
    shared("ct/chest_4dct_phase00_dicom")
    shared("ct/pyradiomics_lung1/lung1_image.nrrd")
    text = _run(tmp_path)
    assert "<!-- diffusion_sr:start -->" in text and "Targets of issue 13" in text
    rows = _rows(text)
    assert set(rows) == set(METHODS)
    for method, cells in rows.items():
        psnr, ssim, ssim2d, mae, band = (float(c) for c in cells[1:6])
        assert all(math.isfinite(v) for v in (psnr, ssim, ssim2d, mae, band)), method
        assert 15 < psnr < 60 and 0 < ssim <= 1 and 0 <= band < 5, (method, cells)
    psnr = {m: float(rows[m][1]) for m in METHODS}
    assert psnr["sr_unet_small_v3"] > psnr["linear"] + 1.0  # the network beats interpolation on this crop
    for method in METHODS[3:]:
        assert float(rows[method][8]) <= 2.0  # data consistency is enforced for every network output
    cov_stated, cov95 = (float(x) for x in rows["diffusion, mean of 2"][9].split("/"))
    assert 0 < cov_stated <= cov95 <= 1  # the 95 % interval is wider than the stated 90 % one
    assert re.search(r"\| 1 \| [\d.]+ \| [\d.]+ \|", text) and re.search(r"\| 2 \| [\d.]+ \| [\d.]+ \|", text)
    png = (tmp_path / "fig.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # a rerun with the same --work resumes every unit: the same table, nothing recomputed
    first = text.split("Runtime against steps")[0].split("load average")[1].split("\n", 1)[1]
    again = _run(tmp_path)
    assert again.split("Runtime against steps")[0].split("load average")[1].split("\n", 1)[1] == first
