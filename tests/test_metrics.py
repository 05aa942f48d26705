"""The evaluator: numbers against scikit-image and by hand, and scoring in physical space."""
from __future__ import annotations

import json
import math
import tracemalloc

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ctsr_models.io.volume import Volume
from ctsr_models.metrics import (HU_MAX, HU_MIN, compare_volumes, evaluate_arrays, mae_body, psnr, ssim2d, ssim3d,
                                 to_unit)
from ctsr_models.metrics import image_metrics
from ctsr_models.physics import simulate_thick_slices

SSIM_KW = dict(data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
KEYS = {"psnr", "ssim", "ssim2d", "mae_hu_body", "psnr_1000"}


def _phantom(shape: tuple[int, int, int] = (24, 32, 32), seed: int = 0) -> np.ndarray:
    """A body (ellipse of soft tissue with smooth texture and a bone rod) in air, HU, float32 ``(z, y, x)``."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    _, y, x = np.meshgrid(np.arange(nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    body = (y / 0.8) ** 2 + (x / 0.9) ** 2 < 1
    texture = gaussian_filter(rng.normal(0, 1, shape), 1.5) * 400
    hu = np.where(body, 40 + texture, -1000.0)
    hu[(y - 0.2) ** 2 + (x + 0.3) ** 2 < 0.04] = 900.0
    return hu.astype(np.float32)


def _noisy(ref: np.ndarray, sd: float = 30.0, seed: int = 1) -> np.ndarray:
    return (ref + np.random.default_rng(seed).normal(0, sd, ref.shape)).astype(np.float32)


# --- array metrics against scikit-image and by hand --------------------------------------------------------------


def test_psnr_matches_skimage() -> None:
    ref = _phantom()
    pred = _noisy(ref, 80.0)
    pred[0, 0, :4] = [-3000, 5000, 3071, -1024]  # outside the window: clipped first
    expected = peak_signal_noise_ratio(to_unit(ref), to_unit(pred), data_range=1.0)
    assert psnr(pred, ref) == pytest.approx(expected, abs=1e-3)
    expected_1000 = peak_signal_noise_ratio(to_unit(ref, -1000, 1000), to_unit(pred, -1000, 1000), data_range=1.0)
    assert psnr(pred, ref, -1000, 1000) == pytest.approx(expected_1000, abs=1e-3)


def test_psnr_by_hand() -> None:
    ref = np.array([-1024.0, 3071.0, 0.0, 0.0, -1024.0])
    pred = np.array([-1024.0, 3071.0, 409.5, 0.0, -2000.0])  # one error of 0.1 of the range; -2000 clips to -1024
    assert psnr(pred, ref) == pytest.approx(10 * math.log10(1 / (0.1**2 / 5)), abs=1e-9)  # 26.9897 dB
    assert psnr(pred, ref, -1000.0, 1000.0) == pytest.approx(10 * math.log10(1 / ((409.5 / 2000) ** 2 / 5)), abs=1e-9)


def test_to_unit() -> None:
    np.testing.assert_allclose(to_unit(np.array([-2000.0, HU_MIN, 1023.5, HU_MAX, 4000.0])), [0, 0, 0.5, 1, 1])
    assert to_unit(np.zeros(3, np.int16), dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="hi > lo"):
        to_unit(np.zeros(3), 10.0, 10.0)


def test_ssim_matches_skimage() -> None:
    ref = _phantom()
    pred = _noisy(gaussian_filter(ref, (1.2, 0, 0)), 20.0)
    expected = structural_similarity(to_unit(pred), to_unit(ref), **SSIM_KW)
    assert ssim3d(pred, ref) == pytest.approx(expected, abs=1e-6)
    expected_2d = np.mean([structural_similarity(to_unit(p), to_unit(q), **SSIM_KW) for p, q in zip(pred, ref)])
    assert ssim2d(pred, ref) == pytest.approx(expected_2d, abs=1e-6)
    assert 0.3 < ssim3d(pred, ref) < 0.99


def test_ssim3d_chunks_equal_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = _phantom((27, 24, 24))
    pred = _noisy(ref, 60.0)
    whole = ssim3d(pred, ref)
    for slices in (1, 2, 7):
        monkeypatch.setattr(image_metrics, "_CHUNK_VOXELS", 24 * 24 * slices)
        assert ssim3d(pred, ref) == pytest.approx(whole, abs=1e-12)


def test_mae_body_mask() -> None:
    ref = np.full((2, 3, 4), -1000.0)
    ref[:, :, 2:] = 30.0  # half the voxels are body
    pred = ref + np.where(ref > -500, 100.0, 500.0)  # 100 HU off inside, 500 HU off in air (ignored)
    assert mae_body(pred, ref) == pytest.approx(100.0)
    ref[0, 0, 3], pred[0, 0, 3] = 3071.0, 5000.0  # clipped to the same value: no error there
    assert mae_body(pred, ref) == pytest.approx(100.0 * 11 / 12)
    assert mae_body(pred, ref, body_threshold_hu=-2000.0) == pytest.approx((100.0 * 11 + 500.0 * 12) / 24)
    assert math.isnan(mae_body(pred, np.full_like(ref, -1000.0)))


def test_identical_volumes() -> None:
    ref = _phantom()
    scores = evaluate_arrays(ref, ref.copy())
    assert set(scores) == KEYS
    assert scores["psnr"] == math.inf and scores["psnr_1000"] == math.inf
    assert scores["ssim"] == pytest.approx(1.0, abs=1e-12) and scores["ssim2d"] == pytest.approx(1.0, abs=1e-12)
    assert scores["mae_hu_body"] == 0.0
    assert all(isinstance(v, float) for v in scores.values())


def test_evaluate_arrays_rejects_bad_input() -> None:
    ref = _phantom()
    with pytest.raises(ValueError, match="shapes differ"):
        evaluate_arrays(ref[:-1], ref)
    with pytest.raises(ValueError, match="3D"):
        evaluate_arrays(ref[0], ref[0])
    with pytest.raises(ValueError, match="at least 11 voxels"):
        evaluate_arrays(ref[:10], ref[:10])
    bad = ref.copy()
    bad[3, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_arrays(bad, ref)


def _peak_bytes(fn, *args) -> int:
    tracemalloc.start()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_bounded_on_int16(monkeypatch: pytest.MonkeyPatch) -> None:
    """PSNR and MAE run on z-chunks (no float64 copy of the volume); SSIM 3D on chunks with a halo."""
    ref = np.clip(_phantom((160, 32, 32)), -1024, 3071).astype(np.int16)
    pred = np.clip(_noisy(ref, 40.0), -1024, 3071).astype(np.int16)
    float64_copy = ref.size * 8
    whole_ssim = _peak_bytes(lambda: structural_similarity(to_unit(pred), to_unit(ref), **SSIM_KW))
    monkeypatch.setattr(image_metrics, "_CHUNK_VOXELS", 32 * 32 * 4)
    assert _peak_bytes(psnr, pred, ref) < 0.25 * float64_copy
    assert _peak_bytes(mae_body, pred, ref) < 0.25 * float64_copy
    assert _peak_bytes(ssim3d, pred, ref) < 0.25 * whole_ssim
    assert ssim3d(pred, ref) == pytest.approx(structural_similarity(to_unit(pred), to_unit(ref), **SSIM_KW),
                                              abs=1e-12)


# --- volumes in physical space -----------------------------------------------------------------------------------


def _thin_volume(nz: int = 40, origin_z: float = 10.0) -> Volume:
    return Volume(_phantom((nz, 32, 32)), spacing=(0.8, 0.8, 1.0), origin=(-12.0, 7.5, origin_z))


def test_compare_same_grid_equals_evaluate_arrays() -> None:
    ref = _thin_volume()
    pred = ref.replace(array=_noisy(ref.array))
    scores = compare_volumes(pred, ref)
    assert scores["resampled"] is False and scores["n_slices_scored"] == 40
    assert scores["z_range_mm"] == [10.0, 49.0]
    expected = evaluate_arrays(pred.array, ref.array)
    assert {k: scores[k] for k in KEYS} == expected
    json.dumps(scores)  # plain JSON types for the CLI
    bordered = compare_volumes(pred, ref, border_mm=2.5)  # slice centres 12.5..46.5 mm: slices 13..46
    assert bordered["n_slices_scored"] == 34 and bordered["z_range_mm"] == [13.0, 46.0]
    assert bordered["psnr"] == pytest.approx(psnr(pred.array[3:37], ref.array[3:37]), abs=1e-9)


def test_compare_thick_prediction_scores_only_the_overlap() -> None:
    ref = _thin_volume()  # slice centres 10..49 mm
    thick = simulate_thick_slices(ref, thickness=4.0)  # slab centres 11.5, 15.5, .., 47.5 mm
    np.testing.assert_allclose(thick.slice_positions(), 11.5 + 4.0 * np.arange(10))
    scores = compare_volumes(thick, ref)
    assert scores["resampled"] is True
    assert scores["n_slices_scored"] == 36 and scores["z_range_mm"] == pytest.approx([12.0, 47.0])
    # independent: linear interpolation along z between slab centres at the scored thin positions 12..47 mm
    z = np.arange(12.0, 48.0)
    flat = thick.array.reshape(10, -1)
    interp = np.stack([np.interp(z, thick.slice_positions(), flat[:, v]) for v in range(flat.shape[1])], axis=1)
    expected = evaluate_arrays(interp.reshape(36, 32, 32), ref.array[2:38])
    for key in KEYS:
        assert scores[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-5)
    bordered = compare_volumes(thick, ref, border_mm=4.0)  # one slab less at each end: 15.5..43.5 mm
    assert bordered["n_slices_scored"] == 28 and bordered["z_range_mm"] == pytest.approx([16.0, 43.0])
    with pytest.raises(ValueError, match="no reference slice to score"):
        compare_volumes(thick, ref, border_mm=18.5)


def test_compare_crops_to_prediction_field_of_view() -> None:
    ref = _thin_volume()
    origin = ref.index_to_physical(np.array([4.0, 3.0, 0.0]))
    pred = Volume(ref.array[:, 3:-3, 4:-2].copy(), spacing=ref.spacing, origin=tuple(origin))
    scores = compare_volumes(pred, ref)
    assert scores["resampled"] is True and scores["n_slices_scored"] == 40
    assert scores["psnr"] > 100 and scores["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert scores["mae_hu_body"] < 1e-2


def test_compare_honours_geometry_shift() -> None:
    ref = _thin_volume()
    pred = ref.replace(array=_noisy(ref.array, 5.0))
    shifted = pred.replace(origin=(ref.origin[0], ref.origin[1], ref.origin[2] + 1.0))
    good, bad = compare_volumes(pred, ref), compare_volumes(shifted, ref)
    assert bad["resampled"] is True and bad["n_slices_scored"] == 39 and bad["z_range_mm"] == [11.0, 49.0]
    assert bad["psnr"] < good["psnr"] - 5 and bad["ssim"] < good["ssim"] - 0.002  # 58.3 vs 50.4 dB, 0.9994 vs 0.9947
    assert bad["mae_hu_body"] > good["mae_hu_body"]


def test_compare_refuses_what_it_cannot_score() -> None:
    ref = _thin_volume()
    rotated = ref.replace(direction=(0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    with pytest.raises(ValueError, match="same direction"):
        compare_volumes(rotated, ref)
    far = ref.replace(origin=(ref.origin[0], ref.origin[1], 500.0))
    with pytest.raises(ValueError, match="no reference slice to score"):
        compare_volumes(far, ref)
    aside = ref.replace(origin=(ref.origin[0] + 100.0, ref.origin[1], ref.origin[2]))
    with pytest.raises(ValueError, match="in-plane field of view"):
        compare_volumes(aside, ref)
    with pytest.raises(ValueError, match="border_mm"):
        compare_volumes(ref, ref, border_mm=-1.0)
