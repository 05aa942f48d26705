"""Texture and density metrics of through-plane super-resolution: what PSNR and SSIM do not show.

    * :func:`band_power` / :func:`restored_band_ratio`: power of a volume along ``z`` in the frequency
      band that thick slabs cannot carry (between the slabs' Nyquist ``1 / (2 S)`` and the output's
      ``1 / (2 s)``), relative to the truth's. A regression model that predicts the conditional mean
      tends to a ratio below 1 (smoothed detail); a sampler that invents too much detail goes above 1.
    * :func:`body_mask`, :func:`lung_mask`: masks from the truth (lungs inside the body, not air outside).
    * :func:`laa_percent` / :func:`laa_bias`: LAA-950, the percentage of lung voxels below -950 HU (an
      emphysema index), and the difference of a prediction's LAA to the truth's in percentage points.

Arrays are ``(z, y, x)`` HU on one grid (float or int).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_erosion, binary_fill_holes

BODY_HU = -500.0
LAA_THRESHOLD_HU = -950.0


def _check_3d(*arrays: np.ndarray) -> None:
    shapes = {np.shape(a) for a in arrays}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"expected (z, y, x) arrays of one shape, got {[np.shape(a) for a in arrays]}")


def _columns(shape: tuple[int, int, int], columns: np.ndarray | None) -> np.ndarray:
    """``(y, x)`` bool mask of the in-plane positions used (all when ``None``)."""
    keep = np.ones(shape[1:], bool) if columns is None else np.asarray(columns, bool)
    if keep.shape != tuple(shape[1:]):
        raise ValueError(f"columns must have the in-plane shape {tuple(shape[1:])}, got {keep.shape}")
    if not keep.any():
        raise ValueError("no in-plane position selected")
    return keep


def band_power(volume: np.ndarray, spacing_mm: float, band: tuple[float, float],
               columns: np.ndarray | None = None) -> float:
    """Mean through-plane power of ``volume`` in a frequency band.

    Each selected column (a line along ``z``) has its mean removed and is multiplied by a Hann window
    (less leakage from the column ends); its one-sided periodogram ``|rfft|^2`` (numpy FFT along ``z``)
    is summed over the frequencies ``f_k = k / (n_z spacing_mm)`` with ``band[0] < f_k <= band[1]``,
    and the sums are averaged over the selected columns.

    Args:
        volume: ``(z, y, x)`` HU.
        spacing_mm: slice spacing along ``z`` in mm.
        band: ``(f_lo, f_hi)`` in cycles per mm, ``0 <= f_lo < f_hi``.
        columns: ``(y, x)`` bool, the in-plane positions to average over (``None``: all).

    Returns:
        Power in HU² (un-normalised periodogram units: the same for every array of this shape, so
        ratios between arrays are meaningful, absolute values are not).

    Raises:
        ValueError: not 3D, fewer than 4 slices, a band holding no frequency bin, or an empty selection.
    """
    volume = np.asarray(volume, dtype=np.float64)
    _check_3d(volume)
    n = volume.shape[0]
    lo, hi = band
    if n < 4 or not 0 <= lo < hi or spacing_mm <= 0:
        raise ValueError(f"need >= 4 slices, spacing > 0 and 0 <= f_lo < f_hi, got n={n}, {spacing_mm}, {band}")
    freqs = np.fft.rfftfreq(n, d=spacing_mm)
    in_band = (freqs > lo) & (freqs <= hi + 1e-12)
    if not in_band.any():
        raise ValueError(f"no frequency bin of {n} slices at {spacing_mm} mm lies in {band} cycles/mm")
    lines = volume[:, _columns(volume.shape, columns)]  # (z, n_columns)
    lines = (lines - lines.mean(axis=0)) * np.hanning(n)[:, None]
    power = np.abs(np.fft.rfft(lines, axis=0)) ** 2
    return float(power[in_band].sum(axis=0).mean())


def restored_band(spacing_mm: float, slab_spacing_mm: float) -> tuple[float, float]:
    """The band ``(1 / (2 S), 1 / (2 s))`` in cycles per mm between the slabs' and the output's Nyquist."""
    if not slab_spacing_mm > spacing_mm > 0:
        raise ValueError(f"slab spacing must exceed the output spacing, got {slab_spacing_mm} and {spacing_mm}")
    return 0.5 / slab_spacing_mm, 0.5 / spacing_mm


def restored_band_ratio(pred: np.ndarray, truth: np.ndarray, spacing_mm: float, slab_spacing_mm: float,
                        columns: np.ndarray | None = None) -> float:
    """Restored-band power ratio: :func:`band_power` of ``pred`` over that of ``truth`` in
    :func:`restored_band` (dimensionless; 1 = the truth's through-plane detail energy; 0 = none).

    Args:
        pred, truth: ``(z, y, x)`` HU on one grid of slice spacing ``spacing_mm``.
        spacing_mm: output slice spacing ``s`` in mm.
        slab_spacing_mm: the thick input's slab spacing ``S`` in mm.
        columns: ``(y, x)`` in-plane positions to average over (``None``: the whole crop).
    """
    _check_3d(pred, truth)
    band = restored_band(spacing_mm, slab_spacing_mm)
    return band_power(pred, spacing_mm, band, columns) / band_power(truth, spacing_mm, band, columns)


def body_mask(truth: np.ndarray, threshold_hu: float = BODY_HU) -> np.ndarray:
    """``(z, y, x)`` bool: each axial slice's ``truth > threshold_hu`` with its holes filled, so the lungs
    and airways inside a closed body contour count as body and the air around the patient does not.
    Pass whole axial slices (a crop that cuts the body contour leaves the lungs open to the outside)."""
    truth = np.asarray(truth)
    _check_3d(truth)
    return np.stack([binary_fill_holes(s > threshold_hu) for s in truth])


def lung_mask(truth: np.ndarray, body: np.ndarray, upper_hu: float = BODY_HU, erosion: int = 2) -> np.ndarray:
    """``(z, y, x)`` bool: lung (and airway) voxels, ``truth <= upper_hu`` inside ``body``, eroded in 3D by
    ``erosion`` voxels so that partial-volume edges (vessels, pleura) do not count."""
    truth = np.asarray(truth)
    _check_3d(truth, body)
    lung = (truth <= upper_hu) & np.asarray(body, bool)
    return binary_erosion(lung, iterations=erosion) if erosion > 0 else lung


def laa_percent(hu: np.ndarray, lung: np.ndarray, threshold_hu: float = LAA_THRESHOLD_HU) -> float:
    """LAA: the percentage (0-100) of ``lung`` voxels of ``hu`` below ``threshold_hu`` (-950: LAA-950).

    Returns:
        Percent; ``nan`` when the mask is empty.
    """
    hu, lung = np.asarray(hu), np.asarray(lung, bool)
    if hu.shape != lung.shape:
        raise ValueError(f"hu {hu.shape} and lung mask {lung.shape} must share one shape")
    if not lung.any():
        return float("nan")
    return float(100.0 * np.mean(hu[lung] < threshold_hu))


def laa_bias(pred: np.ndarray, truth: np.ndarray, lung: np.ndarray, threshold_hu: float = LAA_THRESHOLD_HU) -> float:
    """LAA of ``pred`` minus LAA of ``truth`` on the same lung mask, in percentage points."""
    return laa_percent(pred, lung, threshold_hu) - laa_percent(truth, lung, threshold_hu)
