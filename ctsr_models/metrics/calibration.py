"""Per-voxel uncertainty from K diffusion samples, and its calibration on held-out data.

    * :func:`sample_mean_std`: mean and standard deviation (``ddof=1``) over the K samples.
    * :func:`fit_scale`: split-conformal fit of one factor ``c`` so that ``|truth - mean| <= c z std`` holds
      for a stated fraction of calibration voxels: with scores ``s_i = |truth_i - mean_i| / (z std_i)``,
      ``c`` is the ``ceil((n + 1) coverage)``-th smallest of the ``n`` scores (the finite-sample
      correction), so a new exchangeable voxel lies inside ``mean +- c z std`` with probability
      ``>= coverage``. Voxels of one volume are correlated: calibrate on many held-out volumes.
    * :func:`coverage`: the fraction of voxels inside the calibrated interval.
    * :func:`block_spearman`: Spearman correlation between the mean std and the RMSE of the mean over
      non-overlapping ``b^3`` blocks (partial blocks at the far faces are dropped): does the map rank
      regions by their error?

Arrays share one grid, any unit (HU or the network scale), float or int; ``mask`` selects voxels (e.g. the
body, HU > -500).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, spearmanr


@dataclass(frozen=True)
class Calibration:
    """A fitted interval ``mean +- scale z std``.

    Attributes:
        scale: the conformal factor ``c`` (dimensionless).
        z: the normal quantile the interval was stated with.
        coverage: the coverage it was fitted for, in ``(0, 1)``.
        n: number of calibration voxels.
    """

    scale: float
    z: float
    coverage: float
    n: int

    def interval(self, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds ``mean -+ scale z std``, the shape of ``mean``."""
        half = self.scale * self.z * np.asarray(std, dtype=np.float64)
        return np.asarray(mean, dtype=np.float64) - half, np.asarray(mean, dtype=np.float64) + half


def sample_mean_std(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel mean and standard deviation of ``K >= 2`` samples.

    Args:
        samples: ``(K, *grid)``.

    Returns:
        ``(mean, std)``, each ``grid``-shaped float64; ``std`` uses ``ddof=1``.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim < 2 or samples.shape[0] < 2:
        raise ValueError(f"samples must have shape (K, ...) with K >= 2, got {samples.shape}")
    return samples.mean(axis=0), samples.std(axis=0, ddof=1)


def normal_z(coverage: float) -> float:
    """The two-sided normal quantile ``Phi^-1((1 + coverage) / 2)`` (1.645 for 0.9)."""
    _check_coverage(coverage)
    return float(norm.ppf(0.5 + coverage / 2))


def _check_coverage(coverage: float) -> None:
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage!r}")


def _min_voxels(coverage: float) -> int:
    """The least ``n`` with ``ceil((n + 1) coverage) <= n``."""
    n = max(1, math.floor(coverage / (1 - coverage)))
    while math.ceil((n + 1) * coverage) > n:
        n += 1
    return n


def _scores(truth: np.ndarray, mean: np.ndarray, std: np.ndarray, z: float, mask: np.ndarray | None,
            min_std: float) -> np.ndarray:
    truth, mean, std = (np.asarray(a, dtype=np.float64) for a in (truth, mean, std))
    if not truth.shape == mean.shape == std.shape:
        raise ValueError(f"truth, mean and std must share one shape, got {truth.shape}, {mean.shape}, {std.shape}")
    keep = np.ones(truth.shape, bool) if mask is None else np.asarray(mask, bool)
    if keep.shape != truth.shape:
        raise ValueError(f"mask must have shape {truth.shape}, got {keep.shape}")
    return np.abs(truth[keep] - mean[keep]) / (z * np.maximum(std[keep], min_std))


def fit_scale(truth: np.ndarray, mean: np.ndarray, std: np.ndarray, coverage: float = 0.9, z: float | None = None,
              mask: np.ndarray | None = None, min_std: float = 1e-6) -> Calibration:
    """Fit the conformal factor ``c`` on held-out calibration data.

    Args:
        truth, mean, std: same-shape arrays; ``mean``/``std`` from :func:`sample_mean_std`.
        coverage: the coverage the interval should have, in ``(0, 1)``.
        z: the interval's stated quantile; ``None`` takes :func:`normal_z` of ``coverage``.
        mask: voxels to calibrate on (all when ``None``).
        min_std: floor on ``std`` (same unit), so a zero std gives a finite score.

    Raises:
        ValueError: bad shapes or coverage, or fewer voxels than the coverage needs
            (``ceil((n + 1) coverage) > n``).
    """
    z = normal_z(coverage) if z is None else float(z)
    _check_coverage(coverage)
    if not z > 0:
        raise ValueError(f"z must be > 0, got {z!r}")
    scores = _scores(truth, mean, std, z, mask, min_std)
    n = scores.size
    rank = math.ceil((n + 1) * coverage)
    if rank > n:
        raise ValueError(f"{n} calibration voxels are too few for coverage {coverage}: need at least "
                         f"{_min_voxels(coverage)}")
    return Calibration(scale=float(np.partition(scores, rank - 1)[rank - 1]), z=z, coverage=coverage, n=n)


def coverage(truth: np.ndarray, mean: np.ndarray, std: np.ndarray, calibration: Calibration,
             mask: np.ndarray | None = None, min_std: float = 1e-6) -> float:
    """Fraction of (masked) voxels with ``|truth - mean| <= scale z std``."""
    scores = _scores(truth, mean, std, calibration.z, mask, min_std)
    if scores.size == 0:
        raise ValueError("no voxel to evaluate (empty mask)")
    return float(np.mean(scores <= calibration.scale))


def _block_view(volume: np.ndarray, block: int) -> np.ndarray:
    """``(n_blocks, block^3)`` view-copy of the full ``block^3`` blocks of a 3D volume."""
    nz, ny, nx = (s // block for s in volume.shape)
    cropped = volume[: nz * block, : ny * block, : nx * block]
    blocks = cropped.reshape(nz, block, ny, block, nx, block).transpose(0, 2, 4, 1, 3, 5)
    return blocks.reshape(nz * ny * nx, block**3)


def block_spearman(truth: np.ndarray, mean: np.ndarray, std: np.ndarray, block: int = 8,
                   mask: np.ndarray | None = None, min_fraction: float = 0.5) -> tuple[float, int]:
    """Spearman correlation of per-block mean std against per-block RMSE of ``mean``.

    Args:
        truth, mean, std: ``(z, y, x)`` arrays on one grid.
        block: block edge in voxels.
        mask: voxels that count; a block is used when at least ``min_fraction`` of it is in the mask.
        min_fraction: in ``(0, 1]``.

    Returns:
        ``(rho, n_blocks)``; ``rho`` is ``nan`` when fewer than 3 blocks qualify or one side is constant.
    """
    truth, mean, std = (np.asarray(a, dtype=np.float64) for a in (truth, mean, std))
    if truth.ndim != 3 or not truth.shape == mean.shape == std.shape:
        raise ValueError(f"truth, mean and std must be 3D of one shape, got {truth.shape}, {mean.shape}, {std.shape}")
    if min(truth.shape) < block:
        raise ValueError(f"every axis needs at least {block} voxels for {block}^3 blocks, got {truth.shape}")
    inside = _block_view(np.ones(truth.shape) if mask is None else np.asarray(mask, np.float64), block)
    sq_err, sd = _block_view((truth - mean) ** 2, block), _block_view(std, block)
    count = inside.sum(axis=1)
    used = count >= min_fraction * block**3
    if used.sum() < 3:
        return float("nan"), int(used.sum())
    rmse = np.sqrt((sq_err * inside).sum(axis=1)[used] / count[used])
    mean_std = (sd * inside).sum(axis=1)[used] / count[used]
    if np.ptp(rmse) == 0 or np.ptp(mean_std) == 0:
        return float("nan"), int(used.sum())
    return float(spearmanr(mean_std, rmse).statistic), int(used.sum())
