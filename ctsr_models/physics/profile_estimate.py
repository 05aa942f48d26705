"""Slice-profile estimation from a thick-slice volume itself (when the header is silent or wrong).

Idea (the isotropy argument of ESPRESO, made symmetric): the patient's texture has the same statistics
along z as along x or y; the scanner blurred z by the slab profile ``h`` and sampled it every ``S`` mm.
Blurring the thick volume *in-plane* by a candidate profile ``h_T`` and comparing

    A(T): power spectrum of z-lines of (thick blurred along x by ``h_T``),
    B(T): power spectrum of x-lines of (thick integrated along x by ``h_T`` into slabs every ``S`` mm),

both volumes are then blurred by the true ``h`` along one axis and by ``h_T`` along the other, both sampled
every ``S`` mm along the line, and both keep the slab averaging along z. For isotropic texture
``A(T) = B(T)`` exactly when ``h_T = h`` (aliasing, windowing, white noise and the z averaging of the
in-plane images included), so the estimate is the ``T`` minimising the mean squared log10 ratio of A and
B over the frequencies ``1/(L S) .. 1/(2 S)`` (y-lines are used as x-lines). The in-plane blur and the slab
integration use :func:`~ctsr_models.physics.thick_slice.slab_weights` (the simulator's physics).

Spectra are Welch averages of Hann-windowed segments of ``L`` samples (half overlap, mean removed)
that lie wholly inside the body (HU above -500, holes filled slice by slice), so air and the table do not
count. ``T`` is searched on a geometric grid over ``[0.6 S, 3 S]`` (slab gaps wider than 40 % of the
spacing are outside the model) and refined by a parabola through the best grid point and its
neighbours. Both profiles are fitted and the one with the lower residual is reported, but the shape
choice is not reliable (wrong in 13 of 33 validation cases, docs/slice_profile.md): use the fit of a known
shape (:meth:`ProfileEstimate.fit_for`) or fit one shape only (``EstimateOptions(shapes=("rect",))``).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from .thick_slice import PROFILES, slab_weights

if TYPE_CHECKING:
    from ctsr_models.io.volume import Volume

log = logging.getLogger(__name__)

BODY_HU = -500.0


@dataclass(frozen=True)
class EstimateOptions:
    """Settings of :func:`estimate_slice_profile`.

    Attributes:
        segment: Welch segment length ``L`` in slabs (frequency resolution ``1 / (L S)``); even, >= 8.
        search: ``(lo, hi)`` of the FWHM search range as multiples of the slab spacing.
        grid_points: points of the geometric search grid per profile.
        phases: slab phases used for the in-plane slabs (more in-plane lines, phase-averaged spectra).
        shapes: profiles to fit, from :data:`~ctsr_models.physics.thick_slice.PROFILES`.
        body_hu: voxels above this HU (holes filled per slice) are body.
        line_stride: use every ``line_stride``-th line across the other in-plane axis (speed).
    """

    segment: int = 16
    search: tuple[float, float] = (0.6, 3.0)
    grid_points: int = 15
    phases: int = 4
    shapes: tuple[str, ...] = PROFILES
    body_hu: float = BODY_HU
    line_stride: int = 1

    def __post_init__(self) -> None:
        if self.segment < 8 or self.segment % 2:
            raise ValueError(f"segment must be an even number of slabs >= 8, got {self.segment}")
        lo, hi = self.search
        if not 0 < lo < hi:
            raise ValueError(f"search must be (lo, hi) with 0 < lo < hi, got {self.search}")
        if self.grid_points < 3 or self.phases < 1 or self.line_stride < 1:
            raise ValueError("need grid_points >= 3, phases >= 1 and line_stride >= 1")
        bad = [s for s in self.shapes if s not in PROFILES]
        if bad or not self.shapes:
            raise ValueError(f"shapes must be taken from {', '.join(PROFILES)}, got {list(self.shapes)}")


@dataclass(frozen=True)
class ProfileFit:
    """The best FWHM for one profile shape.

    Attributes:
        shape: profile shape.
        fwhm_mm: fitted FWHM in mm.
        residual: RMS of log10(A / B) at the fit over the fitted frequencies (0: perfect agreement).
    """

    shape: str
    fwhm_mm: float
    residual: float


@dataclass(frozen=True)
class ProfileEstimate:
    """The slab profile estimated from a thick-slice volume.

    Attributes:
        shape: the shape whose fit has the lowest residual.
        fwhm_mm: its FWHM in mm.
        residual: its residual (RMS log10 spectral mismatch).
        slab_spacing_mm: the volume's slab spacing ``S`` in mm.
        confidence: ``"low"`` when the FWHM is at a bound of the search range (the profile is outside the
            model, e.g. slab gaps); else ``"medium"`` (see docs/slice_profile.md for the validated errors;
            the shape itself is not reliable either way).
        fits: the fit of every shape tried.
        notes: readable remarks (search bound reached, shape ambiguous, amount of data used).
    """

    shape: str
    fwhm_mm: float
    residual: float
    slab_spacing_mm: float
    confidence: str
    fits: tuple[ProfileFit, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def fit_for(self, shape: str) -> ProfileFit:
        """The fit of ``shape`` (``KeyError`` when it was not fitted)."""
        for fit in self.fits:
            if fit.shape == shape:
                return fit
        raise KeyError(f"profile {shape!r} was not fitted")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary (for result reports)."""
        return asdict(self)


@dataclass(frozen=True)
class _Data:
    """The thick volume prepared once: float32 HU, body mask, in-plane spacings and slab spacing (mm)."""

    array: np.ndarray
    mask: np.ndarray
    pixel_mm: tuple[float, float]  # (y, x) spacing: axes 1 and 2 of the array
    slab_mm: float
    segment: int


def estimate_slice_profile(volume: Volume, options: EstimateOptions | None = None) -> ProfileEstimate:
    """Estimate the slab profile (shape and FWHM) of a thick-slice volume from its own texture.

    Args:
        volume: thick-slice volume, ``(n_slabs, y, x)`` HU; its z spacing is the slab spacing ``S``. Not
            modified.
        options: estimation settings (defaults: :class:`EstimateOptions`).

    Returns:
        The best shape and FWHM, the fit of every shape and a confidence (see :class:`ProfileEstimate`).

    Raises:
        ValueError: slices not coarser than the pixels (nothing to estimate), too few slabs or too small an
            in-plane extent for one segment, or no segment inside the body.
    """
    options = options or EstimateOptions()
    data = _prepare(volume, options)
    fits = tuple(_fit_shape(data, shape, options) for shape in options.shapes)
    ranked = sorted(fits, key=lambda f: f.residual)
    best = ranked[0]
    notes = [f"spectra of {data.segment}-slab segments inside the body (HU > {options.body_hu:g}), "
             f"{data.array.shape[0]} slabs {data.slab_mm:g} mm apart"]
    lo, hi = (data.slab_mm * r for r in options.search)
    at_bound = not lo * 1.001 < best.fwhm_mm < hi * 0.999
    if at_bound:
        notes.append(f"FWHM at the search bound [{lo:g}, {hi:g}] mm: the profile is outside the model")
    if len(ranked) > 1:
        notes.append("the shape is the better-fitting one but not reliably identified; its FWHM depends on it")
    estimate = ProfileEstimate(best.shape, best.fwhm_mm, best.residual, data.slab_mm,
                               "low" if at_bound else "medium", fits, tuple(notes))
    log.info("slice profile: %s FWHM %.2f mm (residual %.4f, confidence %s); fits %s", estimate.shape,
             estimate.fwhm_mm, estimate.residual, estimate.confidence,
             ", ".join(f"{f.shape} {f.fwhm_mm:.2f} mm ({f.residual:.4f})" for f in fits))
    return estimate


def _prepare(volume: Volume, options: EstimateOptions) -> _Data:
    """Float32 HU, the body mask and a segment length that fits both the slabs and the in-plane extent."""
    array = np.asarray(volume.array, dtype=np.float32)
    px, py, slab = volume.spacing
    if slab <= 1.5 * max(px, py):
        raise ValueError(f"slab spacing {slab:g} mm is not coarser than the pixels ({px:g} x {py:g} mm): "
                         "no through-plane blur to estimate")
    n, h, w = array.shape
    # in-plane slabs of the widest candidate profile that fit across the volume
    in_plane = int(np.floor((min(h * py, w * px) - options.search[1] * slab) / slab)) + 1
    segment = min(options.segment, n, in_plane) // 2 * 2
    if segment < 8:
        raise ValueError(f"need at least 8 slabs, and room for 8 in-plane slabs of the widest candidate profile, "
                         f"for one segment; got {n} slabs and room for {max(in_plane, 0)}")
    mask = array > options.body_hu
    for k in range(n):
        mask[k] = ndimage.binary_fill_holes(mask[k])
    return _Data(array, mask, (py, px), float(slab), segment)


def _fit_shape(data: _Data, shape: str, options: EstimateOptions) -> ProfileFit:
    """Grid search of the FWHM on a log scale, refined by a parabola through the best point's neighbours."""
    log_t = np.log(data.slab_mm * np.geomspace(*options.search, options.grid_points))
    costs = np.array([_mismatch(data, shape, float(np.exp(t)), options) for t in log_t])
    if not np.isfinite(costs).any():
        raise ValueError("no segment of the volume lies inside the body: cannot estimate the slice profile")
    i = int(np.nanargmin(costs))
    best = float(log_t[i])
    if 0 < i < len(log_t) - 1 and np.all(np.isfinite(costs[i - 1:i + 2])):
        c0, c1, c2 = costs[i - 1:i + 2]
        curvature = c0 - 2 * c1 + c2
        if curvature > 0:
            best += 0.5 * (c0 - c2) / curvature * (log_t[i + 1] - log_t[i])
    fwhm = float(np.exp(best))
    return ProfileFit(shape, fwhm, float(np.sqrt(_mismatch(data, shape, fwhm, options))))


def _mismatch(data: _Data, shape: str, fwhm: float, options: EstimateOptions) -> float:
    """Mean squared log10 ratio of the z-line and in-plane-line spectra for a candidate profile."""
    length = data.segment
    z_sum, z_n = np.zeros(length // 2 + 1), 0
    p_sum, p_n = np.zeros(length // 2 + 1), 0
    for axis in (1, 2):
        pixel = data.pixel_mm[axis - 1]
        spec, count = _blurred_z_spectrum(data, axis, pixel, fwhm, shape, options.line_stride)
        z_sum, z_n = z_sum + spec, z_n + count
        spec, count = _in_plane_slab_spectrum(data, axis, pixel, fwhm, shape, options)
        p_sum, p_n = p_sum + spec, p_n + count
    if z_n == 0 or p_n == 0:
        return float("inf")
    ratio = np.log10(z_sum[1:] / z_n) - np.log10(p_sum[1:] / p_n)
    return float(np.mean(ratio**2))


def _kernel(pixel: float, fwhm: float, shape: str) -> np.ndarray:
    """The profile integrated over pixels of ``pixel`` mm: the weights of one slab centred on a pixel."""
    half = fwhm / 2.0 if shape == "rect" else 3.0 * fwhm
    k = int(np.ceil(half / pixel)) + 1
    positions = pixel * np.arange(2 * k + 1)
    return slab_weights(positions, pixel, np.array([k * pixel]), fwhm, shape)[0]


def _blurred_z_spectrum(data: _Data, axis: int, pixel: float, fwhm: float, shape: str,
                        stride: int) -> tuple[np.ndarray, int]:
    """Summed z-line periodograms of the volume blurred along in-plane ``axis`` by the candidate profile."""
    other = 3 - axis
    picked = [slice(None)] * 3
    picked[other] = slice(None, None, stride)
    array, mask = data.array[tuple(picked)], data.mask[tuple(picked)]
    kernel = _kernel(pixel, fwhm, shape)
    blurred = ndimage.correlate1d(array, kernel.astype(np.float32), axis=axis, mode="nearest")
    inside = ndimage.minimum_filter1d(mask, size=kernel.size, axis=axis, mode="nearest")
    n = array.shape[0]
    return _welch(blurred.reshape(n, -1).T, inside.reshape(n, -1).T, data.segment)


def _in_plane_slab_spectrum(data: _Data, axis: int, pixel: float, fwhm: float, shape: str,
                            options: EstimateOptions) -> tuple[np.ndarray, int]:
    """Summed periodograms of in-plane lines along ``axis`` integrated into slabs every ``S`` mm."""
    other = 3 - axis
    picked = [slice(None)] * 3
    picked[other] = slice(None, None, options.line_stride)
    width = data.array.shape[axis]
    lines = np.moveaxis(data.array[tuple(picked)], axis, -1).reshape(-1, width)
    inside = np.moveaxis(data.mask[tuple(picked)], axis, -1).reshape(-1, width).astype(np.float32)
    positions = pixel * np.arange(width)
    total, count = np.zeros(data.segment // 2 + 1), 0
    for phase in range(options.phases):
        first = -pixel / 2 + fwhm / 2 + data.slab_mm * phase / options.phases
        centres = np.arange(first, positions[-1] + pixel / 2 - fwhm / 2 + 1e-6, data.slab_mm)
        if centres.size < data.segment:
            continue
        weights = slab_weights(positions, pixel, centres, fwhm, shape).astype(np.float32)
        spec, n = _welch(lines @ weights.T, (inside @ weights.T) > 1 - 1e-4, data.segment)
        total, count = total + spec, count + n
    return total, count


def _welch(lines: np.ndarray, inside: np.ndarray, length: int) -> tuple[np.ndarray, int]:
    """Summed Hann-windowed periodograms of the half-overlapping segments wholly inside the body.

    Args:
        lines: ``(n_lines, n_samples)`` values.
        inside: ``(n_lines, n_samples)`` bool body mask.
        length: segment length (even).

    Returns:
        ``(length // 2 + 1,)`` summed periodogram and the number of segments used.
    """
    if lines.shape[1] < length:
        return np.zeros(length // 2 + 1), 0
    step = length // 2
    segments = sliding_window_view(lines, length, axis=1)[:, ::step]
    keep = sliding_window_view(inside, length, axis=1)[:, ::step].all(axis=2)
    used = segments[keep].astype(np.float64)
    if used.shape[0] == 0:
        return np.zeros(length // 2 + 1), 0
    used -= used.mean(axis=1, keepdims=True)
    window = np.hanning(length + 2)[1:-1]
    return (np.abs(np.fft.rfft(used * window, axis=1)) ** 2).sum(axis=0), int(used.shape[0])
