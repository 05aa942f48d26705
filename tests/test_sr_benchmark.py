"""Smoke test of ``benchmarks/sr_benchmark.py --quick`` on a real held-out crop (temp outputs only).

The quick run: the aorta crop (held out, 1.5 mm) cut to 48 x 48 in-plane, x3 rect slabs; linear / cubic /
Lanczos, the shipped model, the shipped model adapted for 3 s (ECLARE runs on the chest and head cases only).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import REPO, shared

sys.path.insert(0, str(REPO / "benchmarks"))

from sr_cases import _resample_z, all_cases  # noqa: E402

MODEL = "sr_unet_small_v3"


def test_case_grid_covers_every_region_factor_and_profile() -> None:
    cases = all_cases()
    slugs = {c.slug for c in cases}
    assert {"chest_x2_rect", "chest_x5_rect", "head_x3_gaussian", "aorta_x3_rect", "abdomen_x2_gaussian"} <= slugs
    assert "head_x2_gaussian" not in slugs and len(cases) == 14  # Gaussian at each region's main factor only
    main = {"chest_x3_rect", "head_x3_rect"}
    assert {c.slug for c in cases if c.adapt} == {c.slug for c in cases if c.eclare} == main
    assert {c.slug for c in cases[:5]} == {"chest_x3_rect", "aorta_x3_rect", "head_x3_rect", "abdomen_x2_rect",
                                           "chest_x3_gaussian"}  # main cases first


def test_resample_along_z_is_linear_and_nan_outside() -> None:
    array = np.arange(3, dtype=np.float32)[:, None, None] * np.ones((3, 2, 2), dtype=np.float32)  # 0, 1, 2
    out = _resample_z(array, np.array([0.0, 2.0, 4.0]), np.array([-1.0, 0.0, 1.0, 3.5, 4.0, 5.0]))
    np.testing.assert_allclose(out[1:5, 0, 0], [0.0, 0.5, 1.75, 2.0])
    assert np.isnan(out[0]).all() and np.isnan(out[5]).all()


def test_quick_benchmark_scores_every_method(tmp_path: Path) -> None:
    shared("ct/totalseg/aorta_report__test_result__models__ct_cropped.nii.gz")
    cmd = [sys.executable, str(REPO / "benchmarks" / "sr_benchmark.py"), "--quick", "--device", "cpu", "--models",
           f"{MODEL},no_such_model", "--out", str(tmp_path / "docs"), "--work", str(tmp_path / "work")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "<!-- sr_benchmark:start -->" in text and "Targets of issue 15" in text
    assert "no_such_model: not run" in text  # a model missing from the manifest is skipped, and said so
    assert (tmp_path / "docs" / "figures" / "sr_coronal.png").stat().st_size > 10_000

    result = json.loads((tmp_path / "work" / "results.json").read_text())["results"]
    assert [r["slug"] for r in result] == ["aorta_x3_rect"]
    rows = {r["method"]: r for r in result[0]["rows"]}
    adapted = f"{MODEL} + adapt 3 s"
    assert set(rows) == {"linear", "cubic", "lanczos", MODEL, adapted}
    for method in ("linear", "cubic", "lanczos", MODEL, adapted):
        r = rows[method]
        assert 20 < r["psnr"] < 60 and 0 < r["ssim"] <= 1 and math.isfinite(r["mae_hu_body"]), (method, r)
    # measured: linear 34.02, Lanczos 34.82, sr_unet_small_v3 36.19 dB on this 48 x 48 crop
    assert rows["lanczos"]["psnr"] > rows["linear"]["psnr"] + 0.3
    assert rows[MODEL]["psnr"] > rows["lanczos"]["psnr"] + 0.5
    # data consistency: interpolation is not projected (Lanczos 16 HU), a network's result is (~0 HU)
    assert rows["lanczos"]["consistency_hu"] > 5.0 and rows[MODEL]["consistency_hu"] < 0.5
    assert rows[MODEL]["raw_consistency_hu"] > 5.0
    guard = rows[adapted]["adaptation"]
    assert guard["consistency_rmse_pretrained_hu"] is not None and "guard" in guard
    profile = result[0]["profile"]
    assert profile["true_fwhm_mm"] == 4.5 and math.isfinite(profile["error_pct"])
