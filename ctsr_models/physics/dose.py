"""Physically simulated lower dose: sinogram-domain noise insertion into a standard-dose CT.

Model (monochromatic, parallel beam, one axial slice at a time):
    * HU become linear attenuation ``mu`` (1/mm) with :func:`~ctsr_models.physics.projector.hu_to_mu`
      (70 keV, water 0.01929 /mm). ``HU = 1000 (mu - mu_w) / (mu_w - mu_air)``, so an attenuation error
      ``dmu`` is ``1000 dmu / (mu_w - mu_air)`` HU.
    * Line integrals ``p = sum(mu) * a`` (dimensionless) come from scikit-image's ``radon`` over ``V``
      views on [0, 180) degrees, one detector bin per pixel of width ``a`` mm (the real pixel spacing).
    * A ray at full dose receives ``N0 exp(-p)`` photons on average; the detector reads
      ``I ~ Poisson(N0 exp(-p)) + Normal(0, s_e^2)`` (electronic noise ``s_e`` in photon units), and the scanner
      takes ``p_hat = ln(N0 / I)``. By the delta method its variance is
      ``Var(p_hat) = 1/lambda + s_e^2/lambda^2`` with ``lambda = N0 exp(-p)``.
    * At dose fraction ``d`` the count is ``d N0 exp(-p)`` and the electronic noise stays, so
      ``Var_d = exp(p)/(d N0) + s_e^2 exp(2p)/(d N0)^2``. The image already carries the full-dose noise;
      adding independent zero-mean noise of variance ``Var_d - Var_1`` makes the sum have the variance of
      dose ``d`` (variances of independent noise add):

          sigma_add^2(p) = (1 - d)/d * exp(p)/N0  +  (1 - d^2)/d^2 * s_e^2 exp(2p)/N0^2

      (the line-integral form of Yu et al. 2012, Med Phys 39:2115, and Zeng et al. 2015, Med Phys 42:4297).
      Only this noise sinogram is reconstructed, by filtered back-projection (``iradon``, ramp filter by
      default, linear interpolation), divided by ``a`` to give 1/mm, turned into HU and added to the
      original slice. FBP is linear, so the mean HU is unchanged and the inserted noise has FBP's
      ramp-shaped noise power spectrum.
    * ``N0`` (``photons``) is the number of incident photons per ray of a *reference* scan of
      :data:`REFERENCE_VIEWS` views: a clinical 360-degree rotation of 1000 views, whose conjugate rays
      rebinned to 180 degrees of parallel beam give each parallel ray twice the photons of 500 views, holds
      the same total. With ``V`` simulated views each view stands for ``REFERENCE_VIEWS / V`` reference
      views, so it gets ``N0 REFERENCE_VIEWS / V`` photons and ``s_e^2 REFERENCE_VIEWS / V`` electronic
      variance: the image noise does not depend on ``V`` (FBP variance goes as ``Var(p) / V``), only the
      cost does. The default ``N0 = 1e5`` photons per ray (1 mm-class detector bin, 120 kVp, a few hundred
      mAs-equivalent) is within the 1e5-2e5 commonly used for a standard chest protocol; ``s_e`` defaults
      to 0 (quantum noise only; 5-10 photons is typical of modern detectors).
    * Photon starvation: the Gaussian approximation of the log of a Poisson count needs a mean count well
      above 1. Rays whose low-dose mean count would fall below :data:`MIN_LOW_DOSE_COUNT` photons are given
      the variance of that count (the scanner's starvation correction does the same), and their share is
      logged.

Speed: the line integrals only set the noise *variance*, a smooth function of ``p``, so they are projected
from the slice block-averaged by ``variance_downsample`` (2 by default) and interpolated back to the full
detector grid (shift of the coarse rotation centre accounted for); only the noise sinogram is
reconstructed at full resolution. Slices are padded to a square whose inscribed circle holds every
non-air pixel (``HU > -950``); air outside it is set to zero attenuation (at most 0.014 over 700 mm).

Each slice gets its own random stream from ``numpy.random.SeedSequence(seed).spawn``, so results are
deterministic for a seed and do not depend on the order slices are processed; memory holds one slice's
sinograms beside the output volume.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from skimage.transform import downscale_local_mean, iradon, radon
from tqdm import tqdm

from .projector import MU_AIR_PER_MM, MU_WATER_PER_MM, hu_to_mu

if TYPE_CHECKING:
    from ctsr_models.io.volume import Volume

log = logging.getLogger(__name__)

DEFAULT_PHOTONS = 1.0e5
REFERENCE_VIEWS = 1000
DEFAULT_VIEWS = 360
MIN_LOW_DOSE_COUNT = 5.0
FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")
AIR_HU = -950.0  # pixels above this count as matter when sizing the scan circle
HU_PER_MU = 1000.0 / (MU_WATER_PER_MM - MU_AIR_PER_MM)  # HU per 1/mm of attenuation
_ANISOTROPY_TOL = 1e-3


@dataclass(frozen=True)
class DoseSettings:
    """How a lower-dose scan is simulated.

    Attributes:
        dose: dose fraction ``d`` of the simulated scan relative to the input, in (0, 1].
        photons: incident photons per ray of the input (standard-dose) scan, for a reference scan of
            :data:`REFERENCE_VIEWS` views.
        electronic_noise: SD of the detector's electronic noise per ray, in photons (reference views).
        views: number of simulated parallel-beam views over [0, 180) degrees.
        filter_name: FBP filter of the inserted noise, one of :data:`FILTERS`.
        variance_downsample: block size of the slice used to compute the line integrals that set the
            noise variance (1: full resolution).
    """

    dose: float
    photons: float = DEFAULT_PHOTONS
    electronic_noise: float = 0.0
    views: int = DEFAULT_VIEWS
    filter_name: str = "ramp"
    variance_downsample: int = 2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.dose) and 0.0 < self.dose <= 1.0):
            raise ValueError(f"dose must be a fraction in (0, 1], got {self.dose:g}")
        if not (math.isfinite(self.photons) and self.photons > 0):
            raise ValueError(f"photons must be a positive number of photons per ray, got {self.photons:g}")
        if not (math.isfinite(self.electronic_noise) and self.electronic_noise >= 0):
            raise ValueError(f"electronic_noise must be >= 0 photons, got {self.electronic_noise:g}")
        if int(self.views) != self.views or self.views < 8:
            raise ValueError(f"views must be a whole number >= 8, got {self.views}")
        if self.filter_name not in FILTERS:
            raise ValueError(f"unknown FBP filter {self.filter_name!r}; allowed: {', '.join(FILTERS)}")
        if int(self.variance_downsample) != self.variance_downsample or self.variance_downsample < 1:
            raise ValueError(f"variance_downsample must be a whole number >= 1, got {self.variance_downsample}")

    @property
    def view_weight(self) -> float:
        """Reference views each simulated view stands for."""
        return REFERENCE_VIEWS / self.views

    def angles(self) -> np.ndarray:
        """Projection angles in degrees, ``(views,)``."""
        return np.arange(self.views, dtype=np.float64) * (180.0 / self.views)


def added_variance(p: np.ndarray, settings: DoseSettings) -> np.ndarray:
    """Variance of the noise to add to line integrals ``p`` so that they have the variance of dose ``d``.

    ``sigma_add^2 = (1-d)/d exp(p)/N0 + (1-d^2)/d^2 s_e^2 exp(2p)/N0^2`` per simulated view (``N0`` and
    ``s_e^2`` scaled by :attr:`DoseSettings.view_weight`), with ``p`` capped where the low-dose mean count
    would be below :data:`MIN_LOW_DOSE_COUNT`.

    Args:
        p: line integrals (dimensionless), any shape.
        settings: dose, photons and electronic noise.

    Returns:
        Variances (dimensionless), float64, the shape of ``p``.
    """
    d = settings.dose
    n0 = settings.photons * settings.view_weight
    var_e = settings.electronic_noise ** 2 * settings.view_weight
    p_cap = math.log(d * n0 / MIN_LOW_DOSE_COUNT) if d * n0 > MIN_LOW_DOSE_COUNT else 0.0
    starved = p > p_cap
    if np.any(starved):
        log.debug("photon starvation: %.3f%% of rays below %g photons at dose %g", 100 * starved.mean(),
                  MIN_LOW_DOSE_COUNT, d)
    inv_lam = np.exp(np.minimum(np.asarray(p, dtype=np.float64), p_cap)) / n0
    return (1.0 - d) / d * inv_lam + (1.0 - d * d) / (d * d) * var_e * inv_lam ** 2


@dataclass(frozen=True)
class _ScanSquare:
    """Where a ``(ny, nx)`` slice sits in the square, circle-covering image that is projected."""

    size: int
    top: int
    left: int
    ny: int
    nx: int

    @classmethod
    def for_slice(cls, hu: np.ndarray, multiple: int) -> _ScanSquare:
        ny, nx = hu.shape
        rows, cols = np.nonzero(hu > AIR_HU)
        r_max = 0.0 if rows.size == 0 else float(np.sqrt(((rows - (ny - 1) / 2) ** 2
                                                          + (cols - (nx - 1) / 2) ** 2).max()))
        size = max(ny, nx, 2 * math.ceil(r_max) + 4)
        size = -(-size // multiple) * multiple
        return cls(size, (size - ny) // 2, (size - nx) // 2, ny, nx)

    def embed(self, mu: np.ndarray) -> np.ndarray:
        """``mu`` placed in the square, zero outside the inscribed circle of radius ``size // 2``."""
        out = np.zeros((self.size, self.size), dtype=np.float64)
        out[self.top:self.top + self.ny, self.left:self.left + self.nx] = mu
        return _zero_outside_circle(out)

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The slice's own pixels of a square image."""
        return image[self.top:self.top + self.ny, self.left:self.left + self.nx]


def _zero_outside_circle(square: np.ndarray) -> np.ndarray:
    """Zero (in place) the pixels outside scikit-image's reconstruction circle (radius and centre ``M // 2``)."""
    c = square.shape[0] // 2
    yy, xx = np.ogrid[:square.shape[0], :square.shape[1]]
    square[(yy - c) ** 2 + (xx - c) ** 2 > c ** 2] = 0.0
    return square


def _check_pixel(spacing_xy: tuple[float, float]) -> float:
    sx, sy = spacing_xy
    if abs(sx - sy) > _ANISOTROPY_TOL * max(sx, sy):
        raise ValueError(f"dose simulation needs square pixels, got {sx:g} x {sy:g} mm; resample in-plane first")
    return float(sx)


def line_integrals(mu_square: np.ndarray, pixel_mm: float, angles: np.ndarray, downsample: int = 1) -> np.ndarray:
    """Parallel-beam line integrals of a square attenuation image that is zero outside its circle.

    Args:
        mu_square: attenuation ``(M, M)`` in 1/mm, ``M`` a multiple of ``2 * downsample``.
        pixel_mm: pixel width ``a`` in mm.
        angles: view angles in degrees, ``(V,)``.
        downsample: project the ``downsample``-block mean and interpolate back to the ``M`` detector bins
            (bin ``i`` at ``i - M // 2`` pixels from the centre, scikit-image's convention).

    Returns:
        ``p`` (dimensionless), ``(M, V)``.
    """
    if downsample == 1:
        return radon(mu_square, angles, circle=True) * pixel_mm
    f = downsample
    small = _zero_outside_circle(downscale_local_mean(mu_square, (f, f)))  # only air can lie outside
    coarse = radon(small, angles, circle=True) * (f * pixel_mm)
    m, mc = mu_square.shape[0], coarse.shape[0]
    s_fine = np.arange(m, dtype=np.float64) - m // 2
    s_coarse = (np.arange(mc, dtype=np.float64) - mc // 2) * f
    # coarse pixel centres sit (f-1)/2 fine pixels down and right of the fine ones: s = col cos - row sin
    shift = (f - 1) / 2 * (np.cos(np.deg2rad(angles)) - np.sin(np.deg2rad(angles)))
    out = np.empty((m, len(angles)), dtype=np.float64)
    for v in range(len(angles)):
        out[:, v] = np.interp(s_fine, s_coarse + shift[v], coarse[:, v])
    return out


def fbp_hu(sinogram: np.ndarray, pixel_mm: float, angles: np.ndarray, filter_name: str = "ramp") -> np.ndarray:
    """Filtered back-projection of line integrals, in HU units of attenuation *differences*.

    Args:
        sinogram: line integrals (dimensionless), ``(M, V)``.
        pixel_mm: pixel width in mm.
        angles: view angles in degrees, ``(V,)``.
        filter_name: one of :data:`FILTERS`.

    Returns:
        ``(M, M)`` float64: ``HU_PER_MU * mu`` with ``mu`` in 1/mm (add ``-1000 mu_w/(mu_w - mu_air)`` for
        absolute HU).
    """
    mu = iradon(sinogram, angles, output_size=sinogram.shape[0], filter_name=filter_name,
                interpolation="linear", circle=True) / pixel_mm
    return mu * HU_PER_MU


def inserted_noise(hu: np.ndarray, pixel_mm: float, settings: DoseSettings,
                   rng: np.random.Generator) -> np.ndarray:
    """The noise (HU) that turns one standard-dose slice into a dose-``d`` slice.

    Args:
        hu: slice ``(ny, nx)`` in HU.
        pixel_mm: square pixel width in mm.
        settings: dose simulation settings.
        rng: random generator for this slice.

    Returns:
        Zero-mean noise ``(ny, nx)``, float32 HU (all zeros at ``d = 1``).
    """
    if settings.dose == 1.0:
        return np.zeros(hu.shape, dtype=np.float32)
    square = _ScanSquare.for_slice(hu, 2 * settings.variance_downsample)
    angles = settings.angles()
    p = line_integrals(square.embed(hu_to_mu(hu.astype(np.float64))), pixel_mm, angles,
                       settings.variance_downsample)
    noise = rng.standard_normal(p.shape) * np.sqrt(added_variance(p, settings))
    return square.crop(fbp_hu(noise, pixel_mm, angles, settings.filter_name)).astype(np.float32)


def simulate_low_dose(volume: Volume, settings: DoseSettings, seed: int | None = None,
                      progress: bool = False) -> Volume:
    """Simulate a scan of the same patient at a fraction of the dose, slice by slice along z.

    Args:
        volume: standard-dose CT in HU, square pixels. Not modified.
        settings: dose fraction, photons per ray, electronic noise, views, filter.
        seed: seed of ``numpy.random.SeedSequence``; slice ``k`` uses the ``k``-th spawned stream.
        progress: show a progress bar over slices.

    Returns:
        A float32 HU volume with the same geometry, ``original + inserted noise``; meta copied and a
        finding describing the simulation appended.

    Raises:
        ValueError: non-square pixels.
    """
    pixel_mm = _check_pixel(volume.spacing[:2])
    out = np.empty(volume.shape, dtype=np.float32)
    streams = np.random.SeedSequence(seed).spawn(volume.shape[0])
    for k in tqdm(range(volume.shape[0]), desc="dose", unit="slice", disable=not progress):
        hu = np.asarray(volume.array[k], dtype=np.float32)
        out[k] = hu + inserted_noise(hu, pixel_mm, settings, np.random.default_rng(streams[k]))
    finding = (f"lower dose simulated: dose fraction {settings.dose:g} of {settings.photons:g} photons per ray "
               f"({REFERENCE_VIEWS} reference views), electronic noise {settings.electronic_noise:g} photons, "
               f"{settings.views} views, {settings.filter_name} FBP, seed {seed}")
    log.info(finding)
    result = volume.replace(array=out)
    result.findings.append(finding)
    return result


def simulate_scan(hu: np.ndarray, pixel_mm: float, photons: float, rng: np.random.Generator,
                  electronic_noise: float = 0.0, views: int = DEFAULT_VIEWS,
                  filter_name: str = "ramp") -> np.ndarray:
    """A direct acquisition of a (noise-free) slice: Poisson counts, log, FBP. The reference that noise
    insertion is checked against.

    Counts ``I ~ Poisson(N0 exp(-p)) + Normal(0, s_e^2)`` per simulated view (``N0`` and ``s_e^2`` scaled by
    ``REFERENCE_VIEWS / views``), floored at ``MIN_LOW_DOSE_COUNT / 10`` photons before the log.

    Args:
        hu: slice ``(ny, nx)`` in HU (square pixels).
        pixel_mm: pixel width in mm.
        photons: incident photons per ray for :data:`REFERENCE_VIEWS` views.
        rng: random generator.
        electronic_noise: SD of electronic noise per ray, photons (reference views).
        views: simulated views over [0, 180) degrees.
        filter_name: FBP filter.

    Returns:
        The reconstructed slice ``(ny, nx)`` in HU, float32.
    """
    settings = DoseSettings(1.0, photons, electronic_noise, views, filter_name, 1)
    square = _ScanSquare.for_slice(hu, 2)
    angles = settings.angles()
    p = line_integrals(square.embed(hu_to_mu(hu.astype(np.float64))), pixel_mm, angles)
    n0 = photons * settings.view_weight
    counts = rng.poisson(n0 * np.exp(-p)).astype(np.float64)
    counts += electronic_noise * math.sqrt(settings.view_weight) * rng.standard_normal(p.shape)
    p_hat = np.log(n0 / np.maximum(counts, MIN_LOW_DOSE_COUNT / 10))
    recon = fbp_hu(p_hat, pixel_mm, angles, filter_name) - HU_PER_MU * MU_WATER_PER_MM
    return square.crop(recon).astype(np.float32)
