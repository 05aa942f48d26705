"""Thick-slice simulation in physical space: thin slices integrated by a slice-sensitivity profile.

Model:
    * A thin slice ``j`` at position ``z_j`` (mm along the slice normal) with spacing ``dz`` is a
      piecewise-constant sample of the patient over its extent ``[z_j - dz/2, z_j + dz/2]``. The thin
      spacing is taken as the extent even when the thin series was reconstructed thicker than its
      spacing.
    * A slab with centre ``c`` and thickness ``T`` is the normalised integral of that piecewise-constant
      function weighted by a slice-sensitivity profile (SSP):

      - ``rect``: a box of width ``T``; the weight of thin slice ``j`` is the length of the overlap of its
        extent with ``[c - T/2, c + T/2]``.
      - ``gaussian``: a Gaussian of FWHM ``T`` (sigma = T / 2.3548), integrated over each thin slice's
        extent with the error function. The kernel is truncated symmetrically at ``c +- 3 T`` (mass
        outside below 3e-12), and near the ends of the data it is cut by the data's extent and
        renormalised.

    * Each row of weights is normalised to sum to 1, so a constant is reproduced exactly. A linear ramp
      is reproduced exactly (slab value = value at ``c``) when a slab's weights are symmetric about ``c``
      (``c`` on a thin-slice centre or boundary and, for ``gaussian``, ``c +- 3 T`` inside the data);
      otherwise the piecewise-constant model leaves a staircase error of at most ``|slope| dz^2 / (8 T)``
      for ``rect``.

Slab grid: the first slab starts at the lower edge of the first thin slice,
``c_0 = z_0 - dz/2 + T/2 (+ offset)``, then every ``spacing`` mm while the slab's box extent
``[c - T/2, c + T/2]`` lies inside the thin data's extent ``[z_0 - dz/2, z_last + dz/2]``. Spacing larger
than ``T`` leaves gaps, smaller overlaps. With ``rect`` and ``T = spacing = r dz`` (integer ``r``), slab
``k`` is exactly the mean of thin slices ``kr .. kr + r - 1`` and its centre is the mean of their positions
(the benchmark convention of DESIGN.md).
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import ndtr

if TYPE_CHECKING:
    from ctsr_models.io.volume import Volume

log = logging.getLogger(__name__)

PROFILES = ("rect", "gaussian")

_TOL_MM = 1e-6  # geometric tolerance (mm) for slab edges touching the data's edges
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_GAUSS_SUPPORT_FWHM = 3.0  # Gaussian kernel truncated at c +- 3 FWHM (about 7 sigma)


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of mm, got {value}")


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"unknown slice profile {profile!r}; allowed: {', '.join(PROFILES)}")


def _check_positions(thin_positions: np.ndarray) -> np.ndarray:
    z = np.asarray(thin_positions, dtype=np.float64)
    if z.ndim != 1 or z.size == 0 or not np.all(np.isfinite(z)):
        raise ValueError(f"thin_positions must be a non-empty 1D array of finite mm, got shape {z.shape}")
    if z.size > 1 and np.any(np.diff(z) <= 0):
        raise ValueError("thin_positions must increase strictly")
    return z


def _erf_mass(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Standard normal mass on ``[u, v]`` (``u <= v``), computed on the side of 0 where it is accurate.

    Using the mirror image for intervals right of 0 gives slices placed symmetrically about the centre
    the same weight to rounding, which keeps linear ramps exact for symmetric slabs.
    """
    right = (u + v) > 0
    return np.where(right, ndtr(-u) - ndtr(-v), ndtr(v) - ndtr(u))


def slab_weights(thin_positions: np.ndarray, thin_spacing: float, slab_centres: np.ndarray, thickness: float,
                 profile: str = "rect") -> np.ndarray:
    """Weights that turn thin slices into slabs.

    Args:
        thin_positions: ``(n_thin,)`` thin-slice centres in mm along the slice normal, increasing.
        thin_spacing: thin-slice spacing ``dz`` in mm; each thin slice covers ``[z_j - dz/2, z_j + dz/2]``.
        slab_centres: ``(n_slabs,)`` slab centres in mm, same axis and origin as ``thin_positions``.
        thickness: slab thickness ``T`` in mm (box width for ``rect``, FWHM for ``gaussian``).
        profile: slice-sensitivity profile, one of :data:`PROFILES`.

    Returns:
        ``(n_slabs, n_thin)`` float64 weights; every row sums to 1.

    Raises:
        ValueError: non-positive ``thin_spacing`` or ``thickness``, unknown profile, or a slab that
            overlaps none of the thin data.
    """
    _check_profile(profile)
    _check_positive(thin_spacing=thin_spacing, thickness=thickness)
    z = _check_positions(thin_positions)
    c = np.asarray(slab_centres, dtype=np.float64).reshape(-1, 1)
    lo, hi = z - thin_spacing / 2.0, z + thin_spacing / 2.0
    half = thickness / 2.0 if profile == "rect" else _GAUSS_SUPPORT_FWHM * thickness
    u = np.maximum(lo, c - half)
    v = np.minimum(hi, c + half)
    inside = (v - u) > _TOL_MM
    if profile == "rect":
        w = np.where(inside, v - u, 0.0)
    else:
        sigma = thickness * _FWHM_TO_SIGMA
        w = np.where(inside, _erf_mass((u - c) / sigma, (v - c) / sigma), 0.0)
    total = w.sum(axis=1, keepdims=True)
    if np.any(total <= 0):
        bad = c[total[:, 0] <= 0, 0]
        raise ValueError(f"slab centre(s) {bad[:3].tolist()} mm overlap none of the thin data "
                         f"[{lo[0]:g}, {hi[-1]:g}] mm")
    return w / total


def _centres(z_first: float, z_last: float, dz: float, thickness: float, spacing: float,
             offset_mm: float) -> np.ndarray:
    """Slab centres (mm) whose box extent lies inside ``[z_first - dz/2, z_last + dz/2]``."""
    _check_positive(thin_spacing=dz, thickness=thickness, spacing=spacing)
    if not (np.isfinite(offset_mm) and offset_mm >= 0):
        raise ValueError(f"offset_mm must be >= 0 mm (the first slab starts at the data's lower edge), "
                         f"got {offset_mm}")
    extent = z_last - z_first + dz
    room = extent - thickness - offset_mm
    if room < -_TOL_MM:
        raise ValueError(f"no slab fits: thickness {thickness:g} mm + offset {offset_mm:g} mm exceeds the thin "
                         f"data's extent of {extent:g} mm")
    n = int(math.floor((room + _TOL_MM) / spacing)) + 1
    c0 = z_first - dz / 2.0 + thickness / 2.0 + offset_mm
    return c0 + spacing * np.arange(n, dtype=np.float64)


def slab_centres_for(thin_positions: np.ndarray, thin_spacing: float, thickness: float,
                     spacing: float) -> np.ndarray:
    """Centres of the slabs a scanner would reconstruct from this thin data.

    Args:
        thin_positions: ``(n_thin,)`` thin-slice centres in mm, increasing.
        thin_spacing: thin-slice spacing ``dz`` in mm.
        thickness: slab thickness ``T`` in mm.
        spacing: distance between slab centres in mm (``> T``: gaps, ``< T``: overlaps).

    Returns:
        ``(n_slabs,)`` centres in mm: ``c_0 = z_0 - dz/2 + T/2``, step ``spacing``, keeping the slabs whose
        box ``[c - T/2, c + T/2]`` lies inside ``[z_0 - dz/2, z_last + dz/2]`` (1e-6 mm tolerance).

    Raises:
        ValueError: non-positive lengths, or ``thickness`` larger than the data's extent.
    """
    z = _check_positions(thin_positions)
    return _centres(float(z[0]), float(z[-1]), thin_spacing, thickness, spacing, 0.0)


def _apply_weights(array: np.ndarray, axis: int, weights: np.ndarray) -> np.ndarray:
    """``out[k] = sum_j weights[k, j] * array[j]`` along ``axis``, over the band of slices each slab touches.

    The sum runs one thin slice at a time into a float64 accumulator of one slice, and is stored as
    float32: no copy of the whole array (float64 or otherwise) is made.
    """
    moved = np.moveaxis(array, axis, 0)
    out = np.empty((weights.shape[0],) + moved.shape[1:], dtype=np.float32)
    acc = np.empty(moved.shape[1:], dtype=np.float64)
    for k, row in enumerate(weights):
        acc.fill(0.0)
        for j in np.flatnonzero(row):
            acc += np.multiply(moved[j], row[j], dtype=np.float64)
        out[k] = acc
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def degrade_axis(array: np.ndarray, axis: int, thin_spacing: float, thickness: float, spacing: float,
                 profile: str = "rect", offset_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Simulate thick slices along one axis of any array (volumes, training patches, in-plane axes).

    Index ``j`` along ``axis`` sits at ``j * thin_spacing`` mm; the other axes are left as they are.

    Args:
        array: array of any shape and numeric dtype (HU); not modified.
        axis: the axis to degrade (negative counts from the end).
        thin_spacing: spacing ``dz`` of ``array`` along ``axis`` in mm.
        thickness: slab thickness ``T`` in mm.
        spacing: distance between slab centres in mm.
        profile: slice-sensitivity profile, one of :data:`PROFILES`.
        offset_mm: shift of the first slab in mm, ``>= 0`` (random phase for training); slabs that no
            longer fit are dropped, and at least one must remain.

    Returns:
        ``(degraded, centres)``: ``degraded`` is float32 with ``n_slabs`` entries along ``axis``, the
        other axes unchanged; ``centres`` ``(n_slabs,)`` are the slab centres in mm relative to the
        centre of index 0.

    Raises:
        ValueError: bad axis, non-positive lengths, negative offset, unknown profile, or no slab fits.
    """
    arr = np.asarray(array)
    if not -arr.ndim <= axis < arr.ndim:
        raise ValueError(f"axis {axis} is out of range for an array of {arr.ndim} dimensions")
    n_thin = arr.shape[axis]
    if n_thin == 0:
        raise ValueError("cannot degrade an empty axis")
    _check_profile(profile)
    positions = thin_spacing * np.arange(n_thin, dtype=np.float64)
    centres = _centres(0.0, float(positions[-1]), thin_spacing, thickness, spacing, offset_mm)
    weights = slab_weights(positions, thin_spacing, centres, thickness, profile)
    return _apply_weights(arr, axis, weights), centres


def _add_noise(array: np.ndarray, noise_hu: float, seed: int | None) -> None:
    """Add zero-mean Gaussian noise of SD ``noise_hu`` in place, one slice at a time (float32)."""
    rng = np.random.default_rng(seed)
    for k in range(array.shape[0]):
        array[k] += np.float32(noise_hu) * rng.standard_normal(array.shape[1:], dtype=np.float32)


def simulate_thick_slices(volume: Volume, thickness: float, spacing: float | None = None, profile: str = "rect",
                          noise_hu: float = 0.0, seed: int | None = None) -> Volume:
    """Turn a thin-slice volume into the thick-slice volume a scanner would reconstruct.

    Slabs are formed along the volume's slice normal (its z axis) as described in the module docstring;
    the in-plane grid and the direction are kept.

    Args:
        volume: thin-slice volume; its z spacing is the thin-slice extent ``dz``. Not modified.
        thickness: slab thickness ``T`` in mm.
        spacing: distance between slab centres in mm; defaults to ``thickness`` (contiguous slabs).
        profile: slice-sensitivity profile, one of :data:`PROFILES`.
        noise_hu: SD of zero-mean Gaussian noise added to the slabs, HU (0: none).
        seed: seed of the noise generator (``numpy.random.default_rng``).

    Returns:
        A float32 HU volume: z spacing ``spacing``, origin at the physical centre of the first slab
        (``origin + (c_0 - z_0) * normal``), ``slice_thickness = thickness``, meta copied and a finding
        describing the simulation appended.

    Raises:
        ValueError: non-positive thickness or spacing, negative noise, unknown profile, or a thickness
            larger than the volume's z extent (no slab fits).
    """
    spacing = thickness if spacing is None else spacing
    if not (np.isfinite(noise_hu) and noise_hu >= 0):
        raise ValueError(f"noise_hu must be >= 0 HU, got {noise_hu}")
    dz = volume.spacing[2]
    thick, centres = degrade_axis(volume.array, 0, dz, thickness, spacing, profile)
    if noise_hu > 0:
        _add_noise(thick, noise_hu, seed)
    origin = np.asarray(volume.origin) + centres[0] * volume.slice_normal
    finding = (f"thick slices simulated: {profile} profile, thickness {thickness:g} mm, spacing {spacing:g} mm, "
               f"{thick.shape[0]} slabs from {volume.shape[0]} slices at {dz:g} mm"
               + (f", Gaussian noise SD {noise_hu:g} HU (seed {seed})" if noise_hu > 0 else ""))
    log.info(finding)
    out = volume.replace(array=thick, spacing=(volume.spacing[0], volume.spacing[1], float(spacing)),
                         origin=tuple(float(o) for o in origin), slice_thickness=float(thickness))
    out.findings.append(finding)
    return out
