"""Noise metrics against analytic references: Parseval, filtered white noise, sphere volumes, known CNR."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from ctsr_models.metrics.noise import (homogeneous_mask, insert_spheres, mean_frequency, noise_power_spectrum,
                                       noise_std, patch_corners, peak_frequency, sphere_cnr, sphere_fraction)

PIXEL_MM = 0.5
SHAPE = (8, 256, 256)


def _white(sd: float = 10.0, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, sd, shape)


def _filtered(noise: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Each slice filtered in the frequency domain by the real, even ``gain(fy, fx)`` (periodic)."""
    return np.real(np.fft.ifft2(np.fft.fft2(noise, axes=(-2, -1)) * gain, axes=(-2, -1)))


def _radial_frequency(n: int = SHAPE[1], pixel: float = PIXEL_MM) -> np.ndarray:
    f = np.fft.fftfreq(n, pixel)
    return np.hypot(f[:, None], f[None, :])


def _nps(noise: np.ndarray, patch: int = 64, detrend: str = "mean"):
    return noise_power_spectrum(noise, np.ones(noise.shape, bool), (PIXEL_MM, PIXEL_MM), patch=patch,
                                detrend=detrend)


# --- noise power spectrum -----------------------------------------------------------------------------------------


def test_white_noise_nps_is_flat_and_integrates_to_the_variance() -> None:
    sd = 10.0
    spectrum = _nps(_white(sd))
    # Parseval: the integral of the NPS is the variance of the mean-subtracted patches, (1 - 1/P^2) sd^2
    assert spectrum.variance == pytest.approx(sd ** 2 * (1 - 1 / 64 ** 2), rel=0.02)
    f, nps = spectrum.radial()
    assert f[0] == pytest.approx(1 / (64 * PIXEL_MM)) and f[-1] == pytest.approx(1 / (2 * PIXEL_MM))
    expected = sd ** 2 * PIXEL_MM ** 2  # flat white-noise level, HU^2 mm^2
    assert np.all(np.abs(nps[2:] / expected - 1) < 0.15), nps / expected  # the first rings hold few samples
    assert abs(nps.mean() / expected - 1) < 0.03


def test_gaussian_filtered_noise_peaks_at_zero_and_falls_as_the_filter_squared() -> None:
    sigma_mm = 1.5 * PIXEL_MM
    gain = np.exp(-2 * math.pi ** 2 * sigma_mm ** 2 * _radial_frequency() ** 2)  # continuous Gaussian |H|
    f, nps = _nps(_filtered(_white(), gain)).radial()
    assert peak_frequency(f, nps) == pytest.approx(f[0])
    expected = np.exp(-4 * math.pi ** 2 * sigma_mm ** 2 * f ** 2)  # |H(f)|^2
    ratio = (nps / nps[0]) / (expected / expected[0])
    keep = expected / expected[0] > 0.05
    assert keep.sum() >= 8
    assert np.all(np.abs(ratio[keep] - 1) < 0.2), ratio[keep]


def test_gaussian_filter_of_scipy_gives_the_same_spectrum_shape() -> None:
    """An independent filter implementation (scipy, spatial domain) moves the mean frequency down as expected."""
    white = _white()
    smooth = np.stack([gaussian_filter(s, 1.5, mode="wrap") for s in white])
    f, nps_white = _nps(white).radial()
    _, nps_smooth = _nps(smooth).radial()
    sigma_mm = 1.5 * PIXEL_MM
    weight = np.exp(-4 * math.pi ** 2 * sigma_mm ** 2 * f ** 2)
    assert mean_frequency(f, nps_smooth) == pytest.approx(np.sum(f * weight) / np.sum(weight), rel=0.05)
    assert mean_frequency(f, nps_white) == pytest.approx(np.mean(f), rel=0.03)
    assert mean_frequency(f, nps_smooth) < 0.5 * mean_frequency(f, nps_white)


def test_ramp_filtered_noise_peaks_where_expected() -> None:
    """|H|^2 = f^2 exp(-f^2 / a^2) (a ramp with Gaussian roll-off) peaks at f = a, mean frequency 2a / sqrt(pi)."""
    a = 0.4
    fr = _radial_frequency()
    f, nps = _nps(_filtered(_white(), fr * np.exp(-fr ** 2 / (2 * a ** 2)))).radial()
    step = f[0]
    assert abs(peak_frequency(f, nps) - a) <= 1.5 * step
    assert mean_frequency(f, nps) == pytest.approx(2 * a / math.sqrt(math.pi), rel=0.05)
    assert peak_frequency(f, nps) > 5 * step  # not at zero, unlike smoothed noise


def test_quadratic_detrend_removes_a_smooth_background_but_keeps_the_noise() -> None:
    yy, xx = np.mgrid[:256, :256] * PIXEL_MM
    background = 0.04 * (yy - 60) ** 2 + 1.0 * xx  # anatomy-like smooth trend, tens of HU per patch
    noisy = _white() + background[None]
    assert _nps(noisy, detrend="mean").variance > 3 * 100  # the trend swamps the noise ...
    assert _nps(noisy, detrend="quadratic").variance == pytest.approx(100, rel=0.05)  # ... unless fitted away


def test_patches_come_only_from_inside_the_mask() -> None:
    mask = np.zeros((2, 100, 100), bool)
    mask[0, 10:60, 16:50] = True
    corners = patch_corners(mask, 32, 16)
    assert corners == [(0, 16, 16)] and all(mask[z, y:y + 32, x:x + 32].all() for z, y, x in corners)
    assert {c[0] for c in corners} == {0}
    with pytest.raises(ValueError, match="no 64 x 64 patch"):
        noise_power_spectrum(np.zeros(mask.shape), mask, (1.0, 1.0), patch=64)
    with pytest.raises(ValueError, match="unknown detrend"):
        noise_power_spectrum(np.zeros(mask.shape), mask, (1.0, 1.0), detrend="linear")


# --- homogeneous regions and noise SD ------------------------------------------------------------------------------


def test_homogeneous_mask_keeps_flat_tissue_and_drops_edges_and_lung() -> None:
    ref = np.full((3, 128, 128), 40.0)
    ref[:, :, :40] = -800.0  # lung
    ref[:, 60:70, 60:128] = 300.0  # a bright structure with sharp edges
    ref += _white(3.0, ref.shape, seed=5)
    mask = homogeneous_mask(ref)
    assert not mask[:, :, :49].any()  # lung and its edge (window half-width 7 + erosion 2)
    assert mask[:, 90:120, 49:126].all()  # (the erosion also trims the image border)
    assert not mask[:, 51:79, 51:].any()  # the structure (rows 60-69) and its edges (7 + 2 pixels)
    assert mask[:, 50, 60:120].all() and mask[:, 79, 60:120].all()
    assert mask[:, 90:120, 60:120].all() and mask[:, 10:40, 60:120].all()
    single = homogeneous_mask(ref[1])
    assert np.array_equal(single, mask[1])  # in-plane only: a slice gives the same mask


def test_noise_std_recovers_the_sd_of_white_and_of_smoothed_noise() -> None:
    flat = np.full((4, 128, 128), 40.0)
    mask = homogeneous_mask(flat)
    noise = _white(20.0, flat.shape, seed=3)
    assert noise_std(flat + noise, mask) == pytest.approx(20.0 * math.sqrt(1 - 1 / 225), rel=0.03)
    smooth = np.stack([gaussian_filter(s, 1.0, mode="wrap") for s in noise])
    assert noise_std(flat + smooth, mask) == pytest.approx(smooth.std(), rel=0.08)
    assert noise_std(flat + smooth, mask) < 0.4 * noise_std(flat + noise, mask)
    with pytest.raises(ValueError, match="empty"):
        noise_std(flat, np.zeros(flat.shape, bool))


# --- spheres and CNR --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing, radius", [((0.57, 0.57, 5.0), 2.5), ((0.57, 0.57, 5.0), 5.0),
                                             ((0.47, 0.47, 1.25), 2.5), ((1.0, 1.0, 1.0), 5.0)])
def test_sphere_volume_matches_four_thirds_pi_r_cubed(spacing: tuple[float, float, float], radius: float) -> None:
    centre = (5.3, 30.7, 31.2)  # off the voxel grid
    _, fraction = sphere_fraction((12, 64, 64), spacing, centre, radius)
    volume = fraction.sum() * spacing[0] * spacing[1] * spacing[2]
    assert volume == pytest.approx(4 / 3 * math.pi * radius ** 3, rel=0.02)
    assert fraction.max() <= 1.0 and fraction.min() >= 0.0


def test_insert_spheres_adds_the_contrast_with_partial_volume_and_leaves_the_input() -> None:
    spacing = (0.5, 0.5, 1.25)
    base = np.zeros((20, 80, 80), np.float32)
    out = insert_spheres(base, spacing, [(10, 20, 20), (9.6, 55.5, 58.2)], 5.0, 20.0)
    assert not base.any()
    voxel = spacing[0] * spacing[1] * spacing[2]
    assert out.sum() * voxel == pytest.approx(2 * 20 * 4 / 3 * math.pi * 5.0 ** 3, rel=0.02)
    assert out[10, 20, 20] == pytest.approx(20.0) and out.max() <= 20.0 + 1e-4
    assert out[10, 20, 29] == pytest.approx(20.0)  # spans 4.25-4.75 mm from the centre: wholly inside
    assert 0 < out[10, 20, 30] < 20  # spans 4.75-5.25 mm: partly inside
    assert out[10, 20, 31] == 0  # spans 5.25-5.75 mm


def test_cnr_of_a_known_contrast_on_known_noise() -> None:
    spacing, centre, radius = (0.5, 0.5, 0.5), (10, 64, 64), 5.0
    values = {}
    for sd in (10.0, 20.0):
        values[sd] = np.mean([sphere_cnr(insert_spheres(np.full((21, 128, 128), 40.0), spacing, [centre], radius,
                                                        20.0) + _white(sd, (21, 128, 128), seed), spacing,
                                         centre, radius) for seed in range(12)])
    assert values[10.0] == pytest.approx(2.0, rel=0.07)
    assert values[20.0] == pytest.approx(1.0, rel=0.1)
    zero = np.mean([sphere_cnr(40 + _white(10.0, (21, 128, 128), s), spacing, centre, radius) for s in range(12)])
    assert abs(zero) < 0.15
