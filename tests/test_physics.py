"""Thick-slice simulation: exact block means, analytic ramps, geometry, noise and argument checks."""
from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from ctsr_models.io.volume import Volume
from ctsr_models.physics import PROFILES, degrade_axis, simulate_thick_slices, slab_centres_for, slab_weights

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def _random_array(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 300.0, shape).astype(np.float32)


def _rotation(ax: float, az: float) -> np.ndarray:
    """A proper rotation (about x by ``ax`` then about z by ``az``, radians): an oblique direction matrix."""
    cx, sx, cz, sz = math.cos(ax), math.sin(ax), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx


def _staircase_ramp(centres: np.ndarray, dz: float, transfer: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Exact slab value of the piecewise-constant ramp ``z_j(z)`` (thin centres at multiples of ``dz``).

    The staircase is ``z + s(z)`` with the sawtooth ``s(z) = -dz * sum_n (-1)^(n+1) sin(2 pi n z / dz) / (pi n)``;
    a symmetric profile with Fourier transfer ``transfer[n]`` at frequency ``n / dz`` maps it to
    ``c - dz * sum_n (-1)^(n+1) transfer[n] sin(2 pi n c / dz) / (pi n)``.
    """
    phase = np.sin(2.0 * np.pi * np.outer(centres, n) / dz)
    return centres - dz * (phase * ((-1.0) ** (n + 1) * transfer / (np.pi * n))).sum(axis=1)


# --- the benchmark convention: rect, T = S = r dz ------------------------------------------------------------


@pytest.mark.parametrize("r,dz", [(2, 0.5), (3, 0.625), (5, 1.0)])
def test_rect_integer_ratio_is_block_mean_with_mean_position(r: int, dz: float) -> None:
    n_slabs = 6
    thin = _random_array((n_slabs * r + r - 1, 5, 4))  # r-1 trailing slices cannot make a whole slab
    thick, centres = degrade_axis(thin, 0, dz, r * dz, r * dz, "rect")
    block = thin[: n_slabs * r].astype(np.float64).reshape(n_slabs, r, 5, 4).mean(axis=1)
    positions = dz * np.arange(thin.shape[0])
    assert thick.dtype == np.float32 and thick.shape == (n_slabs, 5, 4)
    np.testing.assert_allclose(thick, block, rtol=0, atol=1e-4)
    np.testing.assert_allclose(centres, positions[: n_slabs * r].reshape(n_slabs, r).mean(axis=1), rtol=0,
                               atol=1e-12)
    w = slab_weights(positions, dz, centres, r * dz, "rect")
    expected = np.kron(np.eye(n_slabs), np.full(r, 1.0 / r))
    np.testing.assert_allclose(w[:, : n_slabs * r], expected, rtol=0, atol=1e-12)
    assert np.all(w[:, n_slabs * r:] == 0)


def test_rect_block_mean_from_int16_volume() -> None:
    thin = np.random.default_rng(1).integers(-1024, 2000, size=(12, 3, 3)).astype(np.int16)
    vol = Volume(thin, spacing=(0.7, 0.7, 1.25), origin=(0.0, 0.0, -40.0))
    thick = simulate_thick_slices(vol, thickness=3.75)
    np.testing.assert_allclose(thick.array, thin.reshape(4, 3, 3, 3).mean(axis=1), rtol=0, atol=1e-4)
    np.testing.assert_allclose(thick.slice_positions(), vol.slice_positions().reshape(4, 3).mean(axis=1),
                               rtol=0, atol=1e-9)


# --- any ratio, gaps, overlaps: rows sum to 1, constants and ramps --------------------------------------------


CASES = [(0.6, 1.7, 1.7), (0.6, 2.3, 1.1), (0.6, 1.5, 2.9), (1.0, 3.0, 1.5), (0.8, 1.9, 1.3)]  # (dz, T, S) mm


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("dz,thickness,spacing", CASES)
def test_rows_sum_to_one_and_constant_is_exact(profile: str, dz: float, thickness: float, spacing: float) -> None:
    positions = 100.0 + dz * np.arange(30)
    centres = slab_centres_for(positions, dz, thickness, spacing)
    w = slab_weights(positions, dz, centres, thickness, profile)
    assert w.shape == (centres.size, 30) and np.all(w >= 0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    const = np.full((30, 2, 3), -712.25, dtype=np.float32)
    thick, _ = degrade_axis(const, 0, dz, thickness, spacing, profile)
    np.testing.assert_array_equal(thick, np.float32(-712.25))


@pytest.mark.parametrize("dz,thickness,spacing", CASES)
def test_rect_ramp_matches_analytic_staircase_integral(dz: float, thickness: float, spacing: float) -> None:
    """Slab of ``a + b z_j`` = ``a + b c`` plus the box-filtered sawtooth (Fourier series, sinc transfer)."""
    a, b, n_thin = 40.0, 3.0, 40
    ramp = (a + b * dz * np.arange(n_thin)).reshape(-1, 1)
    thick, centres = degrade_axis(ramp, 0, dz, thickness, spacing, "rect")
    n = np.arange(1, 40001, dtype=np.float64)
    expected = a + b * _staircase_ramp(centres, dz, np.sinc(n * thickness / dz), n)
    np.testing.assert_allclose(thick[:, 0], expected, rtol=0, atol=2e-3)
    assert np.all(np.abs(thick[:, 0] - (a + b * centres)) <= b * dz**2 / (8 * thickness) + 1e-3)


@pytest.mark.parametrize("dz,thickness,spacing", CASES)
def test_gaussian_ramp_matches_analytic_staircase_integral(dz: float, thickness: float, spacing: float) -> None:
    """Away from the data's ends the Gaussian slab of a ramp is ``a + b c`` plus the smoothed sawtooth."""
    a, b, n_thin = -300.0, 2.0, 80
    ramp = (a + b * dz * np.arange(n_thin)).reshape(-1, 1)
    thick, centres = degrade_axis(ramp, 0, dz, thickness, spacing, "gaussian")
    interior = (centres - 3 * thickness >= -dz / 2) & (centres + 3 * thickness <= (n_thin - 0.5) * dz)
    assert interior.sum() >= 3
    sigma = thickness * FWHM_TO_SIGMA
    n = np.arange(1, 51, dtype=np.float64)
    transfer = np.exp(-2.0 * (np.pi * sigma * n / dz) ** 2)
    expected = a + b * _staircase_ramp(centres[interior], dz, transfer, n)
    np.testing.assert_allclose(thick[interior, 0], expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_full_width_at_half_maximum_is_thickness(profile: str) -> None:
    """The impulse response sampled by 0.01 mm thin slices has FWHM = T (box width or Gaussian FWHM)."""
    dz, thickness = 0.01, 2.0
    positions = dz * np.arange(2001)
    w = slab_weights(positions, dz, np.array([10.0]), thickness, profile)[0] / dz
    half = w.max() / 2
    above = np.flatnonzero(w >= half)
    left, right = above[0], above[-1]  # linear interpolation of the half-maximum crossings
    z_left = np.interp(half, [w[left - 1], w[left]], positions[left - 1: left + 1])
    z_right = np.interp(half, [w[right + 1], w[right]], [positions[right + 1], positions[right]])
    assert z_right - z_left == pytest.approx(thickness, abs=0.02)
    assert (z_left + z_right) / 2 == pytest.approx(10.0, abs=1e-9)


def test_gaussian_weights_match_numerical_integration() -> None:
    """Each thin slice's weight is the Gaussian (FWHM = T) integrated over its extent (scipy quad)."""
    from scipy.integrate import quad

    dz, thickness, centre = 0.7, 2.3, 5.13
    positions = dz * np.arange(16)
    sigma = thickness * FWHM_TO_SIGMA
    mass = [quad(lambda z: math.exp(-0.5 * ((z - centre) / sigma) ** 2), p - dz / 2, p + dz / 2)[0] for p in positions]
    expected = np.asarray(mass) / np.sum(mass)
    got = slab_weights(positions, dz, np.array([centre]), thickness, "gaussian")[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_symmetric_slabs_reproduce_ramp_exactly() -> None:
    """Centres on thin centres/boundaries: symmetric weights, so slab = a + b c (rect overlaps/gaps, gaussian)."""
    ramp = (7.0 + 0.5 * np.arange(60.0)).reshape(-1, 1)  # dz = 1 mm
    for profile, thickness, spacing in [("rect", 3.0, 1.5), ("rect", 2.0, 3.5), ("gaussian", 3.0, 1.0)]:
        thick, centres = degrade_axis(ramp, 0, 1.0, thickness, spacing, profile)
        keep = (centres - 3 * thickness >= -0.5) & (centres + 3 * thickness <= 59.5) if profile == "gaussian" \
            else np.ones(centres.size, bool)
        np.testing.assert_allclose(thick[keep, 0], 7.0 + 0.5 * centres[keep], rtol=0, atol=1e-5)


def test_gaps_and_overlaps_slab_grid() -> None:
    dz, positions = 0.5, 0.5 * np.arange(20)  # data extent [-0.25, 9.75]: 10 mm
    gaps = slab_centres_for(positions, dz, 1.0, 3.0)
    np.testing.assert_allclose(gaps, [0.25, 3.25, 6.25, 9.25])
    w = slab_weights(positions, dz, gaps, 1.0)
    np.testing.assert_allclose(w[w > 0], 0.5)
    assert np.flatnonzero(w.sum(axis=0)).tolist() == [0, 1, 6, 7, 12, 13, 18, 19]  # the others fall in the gaps
    overlaps = slab_centres_for(positions, dz, 3.0, 1.0)
    np.testing.assert_allclose(overlaps, 1.25 + np.arange(8.0))
    w = slab_weights(positions, dz, overlaps, 3.0)
    np.testing.assert_allclose(w[w > 0], 1.0 / 6.0)
    assert [np.count_nonzero(w[k] * w[k + 1]) for k in range(7)] == [4] * 7  # 3 mm slabs every 1 mm share 2 mm
    assert slab_centres_for(positions, dz, 10.0, 1.0).tolist() == [4.75]  # exactly the extent: one slab


def test_offset_shifts_first_slab() -> None:
    thin = _random_array((13, 2, 2))
    thick, centres = degrade_axis(thin, 0, 1.0, 3.0, 3.0, offset_mm=1.0)
    np.testing.assert_allclose(centres, [2.0, 5.0, 8.0, 11.0])
    np.testing.assert_allclose(thick, thin[1:13].astype(np.float64).reshape(4, 3, 2, 2).mean(axis=1), atol=1e-4)
    with pytest.raises(ValueError, match="no slab fits"):
        degrade_axis(thin, 0, 1.0, 3.0, 3.0, offset_mm=10.5)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("axis", [1, 2, -1])
def test_degrade_other_axes_matches_z_version(profile: str, axis: int) -> None:
    arr = _random_array((9, 14, 17), seed=3)
    got, centres = degrade_axis(arr, axis, 0.8, 2.1, 1.7, profile)
    ref, ref_centres = degrade_axis(np.moveaxis(arr, axis, 0), 0, 0.8, 2.1, 1.7, profile)
    np.testing.assert_array_equal(got, np.moveaxis(ref, 0, axis))
    np.testing.assert_array_equal(centres, ref_centres)
    assert got.flags.c_contiguous


# --- volumes: geometry, noise ---------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", [np.eye(3), _rotation(0.4, -0.3)])
def test_volume_geometry_first_slab_centre(direction: np.ndarray) -> None:
    thin = _random_array((24, 6, 5))
    vol = Volume(thin, spacing=(0.7, 0.9, 0.625), origin=(12.0, -30.5, 101.0), direction=direction.ravel(),
                 slice_thickness=0.625, meta={"PatientID": "x"}, findings=["read"])
    thick = simulate_thick_slices(vol, thickness=2.5)
    assert thick.shape == (6, 6, 5) and thick.array.dtype == np.float32
    assert thick.spacing == pytest.approx((0.7, 0.9, 2.5)) and thick.slice_thickness == 2.5
    np.testing.assert_allclose(thick.direction, vol.direction)
    for i, j, k in [(0, 0, 0), (4, 5, 3), (2, 1, 5)]:  # slab k's voxel sits at the mean of its thin voxels
        expected = vol.index_to_physical(np.array([i, j, 4 * k + 1.5]))
        np.testing.assert_allclose(thick.index_to_physical(np.array([i, j, k])), expected, atol=1e-9)
    shift = (2.5 / 2 - 0.625 / 2) * vol.slice_normal
    np.testing.assert_allclose(thick.origin, np.asarray(vol.origin) + shift, atol=1e-12)
    assert thick.meta == vol.meta and thick.meta is not vol.meta
    assert vol.findings == ["read"] and len(thick.findings) == 2 and "rect" in thick.findings[-1]


def test_spacing_defaults_to_thickness_and_gap_geometry() -> None:
    vol = Volume(_random_array((30, 3, 3)), spacing=(1.0, 1.0, 0.5), origin=(0.0, 0.0, 0.0))
    assert simulate_thick_slices(vol, 1.5).spacing[2] == 1.5
    gap = simulate_thick_slices(vol, thickness=1.0, spacing=2.0, profile="gaussian")
    assert gap.shape[0] == 8 and gap.slice_thickness == 1.0 and gap.spacing[2] == 2.0
    np.testing.assert_allclose(gap.slice_positions(), 0.25 + 2.0 * np.arange(8))


def test_noise_sd_and_seed() -> None:
    vol = Volume(np.zeros((16, 64, 64), np.int16), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    a = simulate_thick_slices(vol, 2.0, noise_hu=25.0, seed=7)
    b = simulate_thick_slices(vol, 2.0, noise_hu=25.0, seed=7)
    c = simulate_thick_slices(vol, 2.0, noise_hu=25.0, seed=8)
    assert abs(float(a.array.std()) - 25.0) < 0.5 and abs(float(a.array.mean())) < 0.5  # 32768 samples
    np.testing.assert_array_equal(a.array, b.array)
    assert not np.array_equal(a.array, c.array)
    assert np.all(simulate_thick_slices(vol, 2.0).array == 0)
    assert "noise SD 25 HU" in a.findings[-1]


# --- contracts: errors, inputs untouched, memory --------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    ({"thickness": 0.0}, "thickness must be a positive"),
    ({"thickness": -2.0}, "thickness must be a positive"),
    ({"thickness": float("nan")}, "thickness must be a positive"),
    ({"thickness": 2.0, "spacing": 0.0}, "spacing must be a positive"),
    ({"thickness": 2.0, "profile": "box"}, "allowed: rect, gaussian"),
    ({"thickness": 10.5}, "no slab fits"),
    ({"thickness": 2.0, "noise_hu": -1.0}, "noise_hu must be >= 0"),
])
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    vol = Volume(np.zeros((10, 4, 4), np.float32), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=match):
        simulate_thick_slices(vol, **kwargs)


def test_bad_arguments_raise_low_level() -> None:
    arr = np.zeros((10, 4), np.float32)
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        degrade_axis(arr, 2, 1.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="offset_mm must be >= 0"):
        degrade_axis(arr, 0, 1.0, 2.0, 2.0, offset_mm=-0.5)
    with pytest.raises(ValueError, match="thin_spacing must be a positive"):
        degrade_axis(arr, 0, 0.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="overlap none of the thin data"):
        slab_weights(np.arange(5.0), 1.0, np.array([20.0]), 2.0)
    with pytest.raises(ValueError, match="allowed: rect, gaussian"):
        slab_weights(np.arange(5.0), 1.0, np.array([2.0]), 2.0, profile="triangle")


def test_inputs_not_modified() -> None:
    thin = _random_array((12, 5, 5))
    keep = thin.copy()
    vol = Volume(thin, spacing=(1.0, 1.0, 1.0), origin=(1.0, 2.0, 3.0))
    simulate_thick_slices(vol, 3.0, profile="gaussian", noise_hu=5.0, seed=0)
    degrade_axis(thin, 1, 1.0, 2.0, 2.0)
    np.testing.assert_array_equal(thin, keep)
    assert vol.origin == (1.0, 2.0, 3.0) and vol.spacing == (1.0, 1.0, 1.0) and vol.findings == []


def test_memory_no_float64_copy_of_whole_volume() -> None:
    thin = _random_array((150, 96, 96))  # 5.5 MB float32; a float64 copy would be 11 MB
    tracemalloc.start()
    try:
        thick, _ = degrade_axis(thin, 0, 0.5, 2.5, 2.5, "gaussian")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert thick.shape == (30, 96, 96)
    assert peak < 0.6 * thin.nbytes, f"peak {peak / 2**20:.1f} MiB"
