"""Image metrics on arrays of HU that share one grid.

Convention (DESIGN.md, the MSD/I3Net one): HU are clipped to ``[HU_MIN, HU_MAX] = [-1024, 3071]`` and
mapped to ``[0, 1]``, data range 1.

    * ``psnr``: over the whole array, ``10 log10(1 / MSE)``; ``inf`` for identical inputs.
    * ``ssim``: 3D SSIM with scikit-image's ``structural_similarity`` (Gaussian weights, sigma 1.5,
      population covariance, data range 1, K1 0.01, K2 0.03). As in scikit-image, the mean is taken over
      the SSIM map less a 5-voxel strip at every face (the filter radius), so every axis needs at least
      11 voxels. It is computed in float64 on overlapping z-chunks (halo = filter radius), which gives the
      same numbers as one call on the whole volume with a bounded memory footprint.
    * ``ssim2d``: the same SSIM on each axial (z) slice, averaged over slices.
    * ``mae_hu_body``: mean absolute difference of the clipped HU over voxels whose reference HU is above
      -500 (the body); ``nan`` (with a warning in the log) when no voxel is in the body.
    * ``psnr_1000``: PSNR after clipping to the ``[-1000, 1000]`` HU window mapped to ``[0, 1]``.

PSNR and MAE are accumulated in float64 over z-chunks, so inputs may be int16 or float32 of any size.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
from numpy.typing import DTypeLike
from skimage.metrics import structural_similarity

log = logging.getLogger(__name__)

HU_MIN, HU_MAX = -1024.0, 3071.0
WINDOW_1000 = (-1000.0, 1000.0)
SSIM_SIGMA = 1.5
_SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)  # scikit-image's Gaussian truncation (3.5 sigma) -> 5 voxels
_SSIM_MIN_SIZE = 2 * _SSIM_RADIUS + 1
_SSIM_KWARGS = dict(data_range=1.0, gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False)
_CHUNK_VOXELS = 1 << 22  # about 4 M voxels per float64 working chunk (16 slices of 512 x 512)


def to_unit(hu: np.ndarray, lo: float = HU_MIN, hi: float = HU_MAX, dtype: DTypeLike = np.float64) -> np.ndarray:
    """Clip HU to ``[lo, hi]`` and map linearly to ``[0, 1]``.

    Args:
        hu: array of HU, any shape.
        lo: HU mapped to 0.
        hi: HU mapped to 1.
        dtype: floating output type.

    Returns:
        Array of the same shape in ``[0, 1]``.
    """
    if not hi > lo:
        raise ValueError(f"the HU window needs hi > lo, got [{lo}, {hi}]")
    out = np.clip(np.asarray(hu, dtype=dtype), lo, hi)
    out -= lo
    out /= hi - lo
    return out


def _check_pair(pred_hu: np.ndarray, ref_hu: np.ndarray, ndim: int | None = None) -> None:
    if pred_hu.shape != ref_hu.shape:
        raise ValueError(f"prediction and reference shapes differ: {pred_hu.shape} vs {ref_hu.shape}")
    if ndim is not None and pred_hu.ndim != ndim:
        raise ValueError(f"expected {ndim}D arrays (z, y, x), got shape {pred_hu.shape}")
    if pred_hu.size == 0:
        raise ValueError("cannot score empty arrays")


def _chunks(shape: tuple[int, ...]) -> Iterator[slice]:
    """Slices along axis 0 holding about ``_CHUNK_VOXELS`` voxels each."""
    n = shape[0]
    per_row = max(1, int(np.prod(shape[1:], dtype=np.int64)))
    step = max(1, _CHUNK_VOXELS // per_row)
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """The one PSNR formula: ``10 log10(data_range² / mse)`` in dB (``inf`` when ``mse`` is 0).

    Args:
        mse: mean squared error, in the squared units of ``data_range``.
        data_range: peak-to-peak range of the signal (1 for the HU window mapped to [0, 1]).
    """
    mse = float(mse)
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range * data_range / mse))


def psnr(pred_hu: np.ndarray, ref_hu: np.ndarray, lo: float = HU_MIN, hi: float = HU_MAX) -> float:
    """Peak signal-to-noise ratio in dB after mapping ``[lo, hi]`` HU to ``[0, 1]`` (data range 1).

    Args:
        pred_hu: predicted HU, any shape.
        ref_hu: reference HU, same shape.
        lo: lower end of the HU window.
        hi: upper end of the HU window.

    Returns:
        PSNR in dB; ``inf`` when the clipped arrays are identical.
    """
    pred_hu, ref_hu = np.atleast_1d(np.asarray(pred_hu)), np.atleast_1d(np.asarray(ref_hu))
    _check_pair(pred_hu, ref_hu)
    sq_sum = 0.0
    for sl in _chunks(pred_hu.shape):
        diff = to_unit(pred_hu[sl], lo, hi) - to_unit(ref_hu[sl], lo, hi)
        sq_sum += float(np.dot(diff.ravel(), diff.ravel()))
    return psnr_from_mse(sq_sum / pred_hu.size)


def _check_ssim_extent(shape: tuple[int, ...]) -> None:
    if min(shape) < _SSIM_MIN_SIZE:
        raise ValueError(f"SSIM (Gaussian sigma {SSIM_SIGMA}) needs at least {_SSIM_MIN_SIZE} voxels along every "
                         f"axis, got shape {shape}")


def ssim3d(pred_hu: np.ndarray, ref_hu: np.ndarray, lo: float = HU_MIN, hi: float = HU_MAX) -> float:
    """3D SSIM (Gaussian sigma 1.5, data range 1) of two ``(z, y, x)`` HU volumes, ``[lo, hi]`` HU → ``[0, 1]``.

    Equal to ``structural_similarity(to_unit(pred), to_unit(ref), gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)`` on the whole volume, computed on z-chunks with a halo of
    the filter radius so that the memory stays bounded.

    Args:
        pred_hu: ``(z, y, x)`` predicted HU.
        ref_hu: ``(z, y, x)`` reference HU.

    Returns:
        Mean SSIM over the volume less a 5-voxel strip at every face.

    Raises:
        ValueError: shapes differ, arrays are not 3D, or an axis is shorter than 11 voxels.
    """
    pred_hu, ref_hu = np.asarray(pred_hu), np.asarray(ref_hu)
    _check_pair(pred_hu, ref_hu, ndim=3)
    _check_ssim_extent(pred_hu.shape)
    nz, ny, nx = pred_hu.shape
    r = _SSIM_RADIUS
    step = max(1, _CHUNK_VOXELS // (ny * nx))
    total, count = 0.0, 0
    for z0 in range(r, nz - r, step):
        z1 = min(z0 + step, nz - r)
        a, b = z0 - r, z1 + r  # halo of the filter radius: the core's filtered values are exact
        _, smap = structural_similarity(to_unit(pred_hu[a:b], lo, hi), to_unit(ref_hu[a:b], lo, hi), full=True,
                                        **_SSIM_KWARGS)
        core = smap[r:r + z1 - z0, r:ny - r, r:nx - r]
        total += float(core.sum(dtype=np.float64))
        count += core.size
    return total / count


def ssim2d(pred_hu: np.ndarray, ref_hu: np.ndarray, lo: float = HU_MIN, hi: float = HU_MAX, axis: int = 0) -> float:
    """Mean over slices of the 2D SSIM (Gaussian sigma 1.5, data range 1), ``[lo, hi]`` HU → ``[0, 1]``.

    Args:
        pred_hu: ``(z, y, x)`` predicted HU.
        ref_hu: ``(z, y, x)`` reference HU.
        axis: the array axis across which slices are taken (0: axial, 1: coronal, 2: sagittal).

    Returns:
        The average of the per-slice SSIM values.

    Raises:
        ValueError: shapes differ, arrays are not 3D, or a slice is smaller than 11 x 11.
    """
    pred_hu, ref_hu = np.asarray(pred_hu), np.asarray(ref_hu)
    _check_pair(pred_hu, ref_hu, ndim=3)
    pred_hu, ref_hu = np.moveaxis(pred_hu, axis, 0), np.moveaxis(ref_hu, axis, 0)
    _check_ssim_extent(pred_hu.shape[1:])
    values = [structural_similarity(to_unit(p, lo, hi), to_unit(q, lo, hi), **_SSIM_KWARGS)
              for p, q in zip(pred_hu, ref_hu)]
    return float(np.mean(values))


def mae_body(pred_hu: np.ndarray, ref_hu: np.ndarray, body_threshold_hu: float = -500.0) -> float:
    """Mean absolute error in HU (on HU clipped to ``[HU_MIN, HU_MAX]``) inside the body.

    Args:
        pred_hu: predicted HU, any shape.
        ref_hu: reference HU, same shape.
        body_threshold_hu: voxels with reference HU above this are the body.

    Returns:
        MAE in HU; ``nan`` (logged as a warning) when no reference voxel is in the body.
    """
    pred_hu, ref_hu = np.atleast_1d(np.asarray(pred_hu)), np.atleast_1d(np.asarray(ref_hu))
    _check_pair(pred_hu, ref_hu)
    abs_sum, count = 0.0, 0
    for sl in _chunks(pred_hu.shape):
        ref = np.asarray(ref_hu[sl], dtype=np.float64)
        body = ref > body_threshold_hu
        pred = np.asarray(pred_hu[sl], dtype=np.float64)[body]
        diff = np.clip(pred, HU_MIN, HU_MAX) - np.clip(ref[body], HU_MIN, HU_MAX)
        abs_sum += float(np.abs(diff).sum())
        count += int(body.sum())
    if count == 0:
        log.warning("no reference voxel above %g HU: MAE inside the body is undefined (nan)", body_threshold_hu)
        return float("nan")
    return abs_sum / count


def evaluate_arrays(pred_hu: np.ndarray, ref_hu: np.ndarray) -> dict[str, float]:
    """All metrics of the convention for two HU volumes on the same grid.

    Args:
        pred_hu: ``(z, y, x)`` predicted HU (any numeric dtype; finite).
        ref_hu: ``(z, y, x)`` reference HU, same shape.

    Returns:
        ``{"psnr", "ssim", "ssim2d", "mae_hu_body", "psnr_1000"}``: dB, unitless, unitless, HU, dB.

    Raises:
        ValueError: shapes differ, arrays are not 3D, contain NaN/inf, or are too small for SSIM.
    """
    pred_hu, ref_hu = np.asarray(pred_hu), np.asarray(ref_hu)
    _check_pair(pred_hu, ref_hu, ndim=3)
    for name, arr in (("prediction", pred_hu), ("reference", ref_hu)):
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise ValueError(f"the {name} contains NaN or infinite values")
    return {
        "psnr": psnr(pred_hu, ref_hu),
        "ssim": ssim3d(pred_hu, ref_hu),
        "ssim2d": ssim2d(pred_hu, ref_hu),
        "mae_hu_body": mae_body(pred_hu, ref_hu),
        "psnr_1000": psnr(pred_hu, ref_hu, *WINDOW_1000),
    }
