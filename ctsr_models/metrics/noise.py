"""Noise texture and low-contrast detectability of CT images (used by the denoising benchmark).

* **Homogeneous regions** (:func:`homogeneous_mask`): pixels of the *standard-dose reference* whose
  in-plane local standard deviation (uniform ``size`` x ``size`` window) is below ``max_std_hu`` and whose
  local mean lies in ``hu_range`` (fat to soft tissue by default), eroded in-plane by ``erode`` pixels.
  Every window centred on a mask pixel is then flat in the reference, so what varies there in another
  image is noise (or an artefact of the method), not anatomy.
* **Noise SD** (:func:`noise_std`): the root mean over the mask of the image's local variance in the
  same window: an average of many small ROI SDs, the way a reader measures noise with ROIs.
* **Noise power spectrum** (:func:`noise_power_spectrum`): square patches of a noise image lying wholly in
  the mask, each detrended (mean or quadratic surface), ``NPS = dx dy / (P P) |DFT|^2`` averaged over the
  patches, in HU^2 mm^2 against spatial frequency in cycles/mm. Its integral over frequency is the
  variance (Parseval). :meth:`NoisePowerSpectrum.radial` averages it over rings one frequency step wide
  (DC excluded: the detrending removes it); :func:`peak_frequency` is the centre of the largest ring
  (refined by a parabola through it and its neighbours) and :func:`mean_frequency` the NPS-weighted mean
  of the 1D radial profile, ``sum f NPS(f) / sum NPS(f)``.
* **Low-contrast spheres** (:func:`insert_spheres`): a sphere of ``contrast_hu`` added with its exact
  partial-volume fraction per voxel (each voxel sampled on a sub-grid no coarser than ``radius / 10``),
  and its contrast-to-noise ratio (:func:`sphere_cnr`): in the axial slice nearest the centre, mean of a
  central disc minus the mean of a background annulus, over the annulus SD.

Arrays are ``(z, y, x)`` (or one ``(y, x)`` slice) in HU; spacing is ITK order ``(x, y, z)`` in mm.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_erosion, uniform_filter

DETRENDS = ("mean", "quadratic")


def _in_plane(array: np.ndarray, size: int) -> tuple[int, ...]:
    if array.ndim not in (2, 3):
        raise ValueError(f"expected a (y, x) slice or a (z, y, x) volume, got shape {array.shape}")
    if size < 1:
        raise ValueError(f"window size must be >= 1 pixel, got {size}")
    return (size, size) if array.ndim == 2 else (1, size, size)


def local_variance(image_hu: np.ndarray, size: int = 15) -> np.ndarray:
    """In-plane local variance in a uniform ``size`` x ``size`` window.

    Args:
        image_hu: ``(y, x)`` or ``(z, y, x)`` HU.
        size: window width in pixels.

    Returns:
        Float64 array of the same shape, HU^2 (clipped at 0 against round-off).
    """
    window = _in_plane(image_hu, size)
    x = np.asarray(image_hu, dtype=np.float64)
    mean = uniform_filter(x, window, mode="reflect")
    return np.maximum(uniform_filter(x * x, window, mode="reflect") - mean * mean, 0.0)


def homogeneous_mask(reference_hu: np.ndarray, size: int = 15, max_std_hu: float = 10.0,
                     hu_range: tuple[float, float] = (-150.0, 100.0), erode: int = 2) -> np.ndarray:
    """Pixels of flat fat or soft tissue in a standard-dose reference.

    Args:
        reference_hu: ``(y, x)`` or ``(z, y, x)`` standard-dose HU.
        size: in-plane window width (pixels) of the local mean and SD.
        max_std_hu: largest local SD (HU) of a homogeneous window.
        hu_range: allowed local mean (HU), inclusive.
        erode: in-plane erosion of the mask, pixels.

    Returns:
        Boolean array of the reference's shape.
    """
    window = _in_plane(reference_hu, size)
    x = np.asarray(reference_hu, dtype=np.float64)
    mean = uniform_filter(x, window, mode="reflect")
    mask = (local_variance(x, size) < max_std_hu ** 2) & (mean >= hu_range[0]) & (mean <= hu_range[1])
    if erode > 0:
        structure = np.ones((3, 3), dtype=bool)
        if x.ndim == 3:
            structure = np.stack([np.zeros_like(structure), structure, np.zeros_like(structure)])
        mask = binary_erosion(mask, structure=structure, iterations=erode)
    return mask


def noise_std(image_hu: np.ndarray, mask: np.ndarray, size: int = 15) -> float:
    """Noise SD (HU) of an image in homogeneous regions: ``sqrt(mean over mask of the local variance)``.

    Args:
        image_hu: ``(y, x)`` or ``(z, y, x)`` HU.
        mask: boolean, same shape (e.g. :func:`homogeneous_mask` of the reference).
        size: window width in pixels (use the one the mask was made with).

    Raises:
        ValueError: shapes differ or the mask is empty.
    """
    if mask.shape != np.shape(image_hu):
        raise ValueError(f"mask shape {mask.shape} differs from image shape {np.shape(image_hu)}")
    if not mask.any():
        raise ValueError("the homogeneous-region mask is empty")
    return float(np.sqrt(local_variance(image_hu, size)[mask].mean()))


@dataclass(frozen=True)
class NoisePowerSpectrum:
    """A 2D noise power spectrum.

    Attributes:
        nps: ``(P, P)`` HU^2 mm^2, numpy FFT order (DC at ``[0, 0]``).
        fy: ``(P,)`` frequencies of the rows, cycles/mm (``numpy.fft.fftfreq`` order).
        fx: ``(P,)`` frequencies of the columns, cycles/mm.
        n_patches: how many patches were averaged.
    """

    nps: np.ndarray
    fy: np.ndarray
    fx: np.ndarray
    n_patches: int

    @property
    def variance(self) -> float:
        """Integral of the NPS over frequency (HU^2): the variance of the detrended patches."""
        return float(self.nps.sum() * abs(self.fy[1] - self.fy[0]) * abs(self.fx[1] - self.fx[0]))

    def radial(self) -> tuple[np.ndarray, np.ndarray]:
        """Ring average over rings one frequency step wide, from one step to the lower Nyquist frequency.

        Returns:
            ``(f, nps_r)``: ring centres (cycles/mm) and the mean NPS in each ring (HU^2 mm^2).
        """
        step = min(abs(self.fy[1] - self.fy[0]), abs(self.fx[1] - self.fx[0]))
        nyquist = min(np.abs(self.fy).max(), np.abs(self.fx).max())
        radius = np.hypot(self.fy[:, None], self.fx[None, :])
        ring = np.rint(radius / step).astype(int)
        n_rings = int(np.floor(nyquist / step + 1e-9))
        sums = np.bincount(ring.ravel(), weights=self.nps.ravel(), minlength=n_rings + 1)
        counts = np.bincount(ring.ravel(), minlength=n_rings + 1)
        k = np.arange(1, n_rings + 1)
        return k * step, sums[k] / np.maximum(counts[k], 1)


def _detrend(patch: np.ndarray, detrend: str) -> np.ndarray:
    if detrend == "mean":
        return patch - patch.mean()
    n = patch.shape[0]
    yy, xx = np.mgrid[:n, :n] / (n - 1) - 0.5
    basis = np.stack([np.ones_like(yy), yy, xx, yy * yy, xx * xx, yy * xx], -1).reshape(-1, 6)
    coef, *_ = np.linalg.lstsq(basis, patch.ravel(), rcond=None)
    return patch - (basis @ coef).reshape(patch.shape)


def patch_corners(mask: np.ndarray, patch: int, step: int) -> list[tuple[int, int, int]]:
    """``(z, y, x)`` top-left corners (on a ``step`` grid) of the ``patch`` x ``patch`` squares inside ``mask``."""
    mask3 = mask[None] if mask.ndim == 2 else mask
    corners = []
    for z, plane in enumerate(mask3):
        table = np.pad(plane.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table
        count = table[patch:, patch:] - table[:-patch, patch:] - table[patch:, :-patch] + table[:-patch, :-patch]
        for y in range(0, plane.shape[0] - patch + 1, step):
            corners += [(z, y, x) for x in range(0, plane.shape[1] - patch + 1, step) if count[y, x] == patch * patch]
    return corners


def noise_power_spectrum(noise_hu: np.ndarray, mask: np.ndarray, spacing_xy: Sequence[float], patch: int = 32,
                         step: int | None = None, detrend: str = "mean") -> NoisePowerSpectrum:
    """2D NPS of a noise image from the ``patch`` x ``patch`` squares that lie wholly inside ``mask``.

    Args:
        noise_hu: ``(y, x)`` or ``(z, y, x)`` noise HU (e.g. a method's output minus the standard dose).
        mask: boolean, same shape: where patches may come from.
        spacing_xy: in-plane pixel spacing ``(x, y)`` in mm.
        patch: patch width in pixels.
        step: stride of the patch grid in pixels (default ``patch // 2``: half-overlapping patches).
        detrend: ``mean`` (subtract each patch's mean) or ``quadratic`` (a fitted 2nd-order surface).

    Returns:
        The averaged spectrum.

    Raises:
        ValueError: bad arguments, or no patch fits inside the mask.
    """
    if detrend not in DETRENDS:
        raise ValueError(f"unknown detrend {detrend!r}; allowed: {', '.join(DETRENDS)}")
    if mask.shape != np.shape(noise_hu):
        raise ValueError(f"mask shape {mask.shape} differs from noise shape {np.shape(noise_hu)}")
    if patch < 4:
        raise ValueError(f"patch must be >= 4 pixels, got {patch}")
    corners = patch_corners(mask, patch, step or max(1, patch // 2))
    if not corners:
        raise ValueError(f"no {patch} x {patch} patch lies inside the mask")
    noise3 = np.asarray(noise_hu, dtype=np.float64)
    noise3 = noise3[None] if noise3.ndim == 2 else noise3
    dx, dy = float(spacing_xy[0]), float(spacing_xy[1])
    total = np.zeros((patch, patch))
    for z, y, x in corners:
        total += np.abs(np.fft.fft2(_detrend(noise3[z, y:y + patch, x:x + patch], detrend))) ** 2
    nps = total * (dx * dy / (patch * patch)) / len(corners)
    return NoisePowerSpectrum(nps, np.fft.fftfreq(patch, dy), np.fft.fftfreq(patch, dx), len(corners))


def peak_frequency(frequencies: np.ndarray, nps_radial: np.ndarray) -> float:
    """Frequency (cycles/mm) where the radial NPS is largest: the centre of the largest ring, refined by the
    vertex of the parabola through it and its two neighbours (at most half a ring away); the end rings
    are returned as they are (a spectrum that peaks at the lowest ring peaks at zero frequency)."""
    k = int(np.argmax(nps_radial))
    if k == 0 or k == len(nps_radial) - 1:
        return float(frequencies[k])
    left, mid, right = (float(v) for v in nps_radial[k - 1:k + 2])
    curvature = left - 2 * mid + right
    shift = 0.0 if curvature >= 0 else float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
    return float(frequencies[k] + shift * (frequencies[k + 1] - frequencies[k]))


def mean_frequency(frequencies: np.ndarray, nps_radial: np.ndarray) -> float:
    """NPS-weighted mean frequency (cycles/mm) of the radial profile, ``sum f NPS(f) / sum NPS(f)``."""
    return float(np.sum(frequencies * nps_radial) / np.sum(nps_radial))


def sphere_fraction(shape: Sequence[int], spacing: Sequence[float], centre: Sequence[float],
                    radius_mm: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """Fraction of each voxel inside a sphere, on the sphere's bounding box.

    Args:
        shape: ``(z, y, x)`` volume shape.
        spacing: ``(x, y, z)`` voxel spacing in mm.
        centre: ``(z, y, x)`` sphere centre in voxel indices (may be fractional).
        radius_mm: sphere radius in mm.

    Returns:
        ``(box, fraction)``: the bounding-box slices into the volume and the ``[0, 1]`` fractions there,
        each voxel sampled at the centres of a regular sub-grid whose step is at most ``radius_mm / 10``.
    """
    if radius_mm <= 0:
        raise ValueError(f"radius must be > 0 mm, got {radius_mm}")
    step_zyx = (float(spacing[2]), float(spacing[1]), float(spacing[0]))
    box, axes = [], []
    for n, c, s in zip(shape, centre, step_zyx):
        lo, hi = max(0, math.floor(c - radius_mm / s - 0.5)), min(n, math.ceil(c + radius_mm / s + 0.5) + 1)
        k = max(1, math.ceil(s / (radius_mm / 10)))
        sub = (np.arange(k) + 0.5) / k - 0.5
        axes.append(((np.arange(lo, hi)[:, None] + sub[None, :] - c) * s, k))  # (voxels, k) offsets in mm
        box.append(slice(lo, hi))
    (oz, kz), (oy, ky), (ox, kx) = axes
    d2 = (oz[:, None, None, :, None, None] ** 2 + oy[None, :, None, None, :, None] ** 2
          + ox[None, None, :, None, None, :] ** 2)
    fraction = (d2 <= radius_mm ** 2).mean(axis=(3, 4, 5))
    return tuple(box), fraction


def insert_spheres(volume_hu: np.ndarray, spacing: Sequence[float], centres: Sequence[Sequence[float]],
                   radius_mm: float, contrast_hu: float) -> np.ndarray:
    """Add low-contrast spheres with partial-volume-correct edges.

    Args:
        volume_hu: ``(z, y, x)`` HU. Not modified.
        spacing: ``(x, y, z)`` mm.
        centres: ``(z, y, x)`` voxel-index centres, one per sphere.
        radius_mm: radius of every sphere, mm.
        contrast_hu: HU added where a voxel is wholly inside (times the inside fraction elsewhere).

    Returns:
        A float32 copy with the spheres added.
    """
    out = np.array(volume_hu, dtype=np.float32, copy=True)
    if out.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {out.shape}")
    for centre in centres:
        box, fraction = sphere_fraction(out.shape, spacing, centre, radius_mm)
        out[box] += np.float32(contrast_hu) * fraction.astype(np.float32)
    return out


def cnr(image_hu: np.ndarray, inside: np.ndarray, background: np.ndarray) -> float:
    """Contrast-to-noise ratio ``(mean inside - mean background) / SD background`` (population SD)."""
    if not inside.any() or background.sum() < 2:
        raise ValueError("CNR needs a non-empty inside and at least two background pixels")
    bg = np.asarray(image_hu, dtype=np.float64)[background]
    return float((np.asarray(image_hu, dtype=np.float64)[inside].mean() - bg.mean()) / bg.std())


def sphere_cnr(image_hu: np.ndarray, spacing: Sequence[float], centre: Sequence[float], radius_mm: float,
               inner: float = 0.6, annulus: tuple[float, float] = (1.5, 2.5)) -> float:
    """CNR of a sphere in the axial slice nearest its centre.

    Args:
        image_hu: ``(z, y, x)`` HU.
        spacing: ``(x, y, z)`` mm.
        centre: ``(z, y, x)`` voxel-index centre.
        radius_mm: sphere radius, mm.
        inner: the inside disc's radius as a fraction of the sphere's cross-section radius in that slice.
        annulus: inner and outer radius of the background ring, as multiples of ``radius_mm``.

    Returns:
        The CNR of :func:`cnr` for those two regions.
    """
    k = int(round(centre[0]))
    dz = (k - centre[0]) * float(spacing[2])
    r_slice = math.sqrt(max(radius_mm ** 2 - dz ** 2, 0.0))
    ny, nx = image_hu.shape[1:]
    yy, xx = np.mgrid[:ny, :nx]
    dist = np.hypot((yy - centre[1]) * float(spacing[1]), (xx - centre[2]) * float(spacing[0]))
    inside = dist <= inner * r_slice
    background = (dist >= annulus[0] * radius_mm) & (dist <= annulus[1] * radius_mm)
    return cnr(image_hu[k], inside, background)
