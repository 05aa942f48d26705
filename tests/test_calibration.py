"""Uncertainty calibration on synthetic data with known truth."""
from __future__ import annotations

import numpy as np
import pytest

from ctsr_models.metrics.calibration import (Calibration, block_spearman, coverage, fit_scale, normal_z,
                                             sample_mean_std)

GRID = (32, 32, 32)


def synthetic(seed: int, scale_error: float = 2.5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """truth = mean + N(0, sigma^2) with a known per-voxel sigma; the std estimate is sigma / scale_error."""
    rng = np.random.default_rng(seed)
    z = np.arange(GRID[0])[:, None, None] / GRID[0]
    sigma = np.broadcast_to(5.0 + 40.0 * z, GRID)  # 5 to 45 HU along z
    mean = rng.normal(0.0, 100.0, GRID)
    truth = mean + sigma * rng.standard_normal(GRID)
    return truth, mean, sigma / scale_error, sigma


def test_sample_mean_std_recovers_the_per_voxel_sigma():
    rng = np.random.default_rng(0)
    sigma = np.linspace(1.0, 10.0, 50)
    samples = 3.0 + sigma * rng.standard_normal((4000, 50))
    mean, std = sample_mean_std(samples)
    np.testing.assert_allclose(mean, 3.0, atol=4 * 10.0 / np.sqrt(4000))
    np.testing.assert_allclose(std / sigma, 1.0, atol=0.05)
    with pytest.raises(ValueError, match="K >= 2"):
        sample_mean_std(samples[:1])


@pytest.mark.parametrize("nominal", [0.8, 0.9, 0.95])
def test_fitted_scale_recovers_the_mis_scaling_and_covers_a_fresh_draw(nominal):
    truth, mean, std, _ = synthetic(1)
    cal = fit_scale(truth, mean, std, coverage=nominal)
    assert cal.z == pytest.approx(normal_z(nominal)) and cal.n == truth.size
    assert cal.scale == pytest.approx(2.5, rel=0.03)  # the std estimate was 2.5 times too small
    naive = Calibration(scale=1.0, z=cal.z, coverage=nominal, n=0)
    fresh_truth, fresh_mean, fresh_std, _ = synthetic(2)
    assert coverage(fresh_truth, fresh_mean, fresh_std, naive) < nominal - 0.3  # uncalibrated: far too narrow
    assert abs(coverage(fresh_truth, fresh_mean, fresh_std, cal) - nominal) <= 0.01
    lo, hi = cal.interval(fresh_mean, fresh_std)
    assert np.mean((fresh_truth >= lo) & (fresh_truth <= hi)) == pytest.approx(
        coverage(fresh_truth, fresh_mean, fresh_std, cal))


def test_a_well_scaled_std_gives_a_factor_of_one_and_a_mask_restricts_the_voxels():
    truth, mean, _, sigma = synthetic(3)
    assert fit_scale(truth, mean, sigma, coverage=0.9).scale == pytest.approx(1.0, rel=0.03)
    body = np.zeros(GRID, bool)
    body[:16] = True
    half = fit_scale(truth, mean, sigma, coverage=0.9, mask=body)
    assert half.n == body.sum() and half.scale == pytest.approx(1.0, rel=0.05)


def test_finite_sample_correction_uses_the_ceil_rank_and_refuses_too_few_voxels():
    scores = np.arange(1.0, 10.0)  # n = 9 scores 1..9; coverage 0.8 -> rank ceil(10 * 0.8) = 8
    cal = fit_scale(scores, np.zeros(9), np.ones(9), coverage=0.8, z=1.0)
    assert cal.scale == 8.0
    assert fit_scale(scores, np.zeros(9), np.ones(9), coverage=0.9, z=1.0).scale == 9.0  # rank 9 of 9
    with pytest.raises(ValueError, match="too few for coverage 0.9: need at least 9"):
        fit_scale(scores[:8], np.zeros(8), np.ones(8), coverage=0.9, z=1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"coverage": 1.0}, r"coverage must be in \(0, 1\)"),
    ({"coverage": 0.9, "z": -1.0}, "z must be > 0"),
    ({"mask": np.ones((2, 2), bool)}, "mask must have shape"),
])
def test_bad_arguments_raise(kwargs, message):
    truth, mean, std, _ = synthetic(4)
    with pytest.raises(ValueError, match=message):
        fit_scale(truth, mean, std, **kwargs)
    with pytest.raises(ValueError, match="share one shape"):
        fit_scale(truth, mean[:2], std)


def test_block_spearman_ranks_blocks_by_error_and_is_near_zero_for_a_shuffled_map():
    truth, mean, std, _ = synthetic(5)
    rho, n = block_spearman(truth, mean, std, block=8)
    assert n == 64 and rho > 0.85  # sigma grows with z: the std map orders the blocks' errors
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(std.ravel()).reshape(GRID)
    rho_shuffled, _ = block_spearman(truth, mean, shuffled, block=8)
    assert abs(rho_shuffled) < 0.3
    body = np.zeros(GRID, bool)
    body[:, :16] = True
    assert block_spearman(truth, mean, std, block=8, mask=body)[1] == 32
    assert np.isnan(block_spearman(truth, mean, np.ones(GRID), block=8)[0])  # a constant map ranks nothing
    with pytest.raises(ValueError, match="at least 8 voxels"):
        block_spearman(truth[:4], mean[:4], std[:4])
