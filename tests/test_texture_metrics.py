"""Texture and density metrics (``ctsr_models.metrics.texture``) against analytic cases."""
from __future__ import annotations

import numpy as np
import pytest

from ctsr_models.metrics.texture import (band_power, body_mask, laa_bias, laa_percent, lung_mask, restored_band,
                                         restored_band_ratio)

N, S_MM = 64, 1.0  # 64 slices of 1 mm; slabs of 4 mm -> band (0.125, 0.5] cycles/mm = bins 9..32


def _sinusoid(cycles: float, amplitude: float, shape: tuple[int, int] = (8, 8)) -> np.ndarray:
    z = np.arange(N) * S_MM
    line = amplitude * np.sin(2 * np.pi * cycles / (N * S_MM) * z + 0.3)
    return np.broadcast_to(line[:, None, None], (N, *shape)).copy()


def test_restored_band_is_between_the_two_nyquists() -> None:
    assert restored_band(1.0, 4.0) == (0.125, 0.5)
    assert restored_band(2.5, 10.0) == pytest.approx((0.05, 0.2))
    with pytest.raises(ValueError):
        restored_band(2.0, 2.0)


def test_in_band_sinusoid_ratio_is_the_squared_amplitude_ratio() -> None:
    truth = _sinusoid(16, 100.0)
    assert restored_band_ratio(0.5 * truth, truth, S_MM, 4.0) == pytest.approx(0.25, rel=1e-9)
    assert restored_band_ratio(1.2 * truth, truth, S_MM, 4.0) == pytest.approx(1.44, rel=1e-9)


def test_out_of_band_content_does_not_count() -> None:
    truth = _sinusoid(16, 100.0)  # in band (0.25 cycles/mm)
    low = _sinusoid(2, 300.0)  # 0.03 cycles/mm, below the slabs' Nyquist
    assert restored_band_ratio(truth + low, truth, S_MM, 4.0) == pytest.approx(1.0, abs=0.01)
    assert restored_band_ratio(low, truth, S_MM, 4.0) < 0.01  # a smooth prediction restores nothing


def test_white_noise_band_power_is_the_band_share() -> None:
    rng = np.random.default_rng(0)
    sigma = 30.0
    noise = rng.normal(0.0, sigma, (N, 64, 64))
    per_bin = sigma**2 * np.sum(np.hanning(N) ** 2)  # E|X_k|^2 of windowed white noise, any k
    freqs = np.fft.rfftfreq(N, S_MM)
    band = restored_band(S_MM, 4.0)
    n_bins = int(np.sum((freqs > band[0]) & (freqs <= band[1])))
    assert n_bins == 24
    assert band_power(noise, S_MM, band) == pytest.approx(n_bins * per_bin, rel=0.03)
    # the whole one-sided spectrum but DC: the band holds 24 of its 32 bins
    total = band_power(noise, S_MM, (0.0, 0.5))
    assert band_power(noise, S_MM, band) / total == pytest.approx(24 / 32, rel=0.03)


def test_columns_select_in_plane_positions() -> None:
    truth = _sinusoid(16, 100.0)
    pred = truth.copy()
    pred[:, :4] = 0.0  # half the columns lost their detail
    assert restored_band_ratio(pred, truth, S_MM, 4.0) == pytest.approx(0.5, rel=1e-9)
    keep = np.zeros((8, 8), bool)
    keep[4:] = True
    assert restored_band_ratio(pred, truth, S_MM, 4.0, columns=keep) == pytest.approx(1.0, rel=1e-9)
    with pytest.raises(ValueError):
        band_power(truth, S_MM, (0.41, 0.42))  # no bin k / 64 lies in this band
    with pytest.raises(ValueError):
        band_power(truth, S_MM, (0.125, 0.5), columns=np.zeros((8, 8), bool))


def _phantom() -> np.ndarray:
    """Air (-1000) around a soft-tissue box (40 HU) holding a closed lung cavity (-850 HU)."""
    vol = np.full((20, 64, 64), -1000.0)
    vol[:, 8:56, 8:56] = 40.0
    vol[:, 16:48, 16:48] = -850.0
    return vol


def test_body_and_lung_masks() -> None:
    truth = _phantom()
    body = body_mask(truth)
    assert body.sum() == 20 * 48 * 48  # the cavity is body, the air around is not
    lung = lung_mask(truth, body)  # eroded by 2 voxels in 3D (z ends too)
    assert lung.sum() == 16 * 28 * 28
    assert not lung[:, :16].any() and not lung[:2].any()


def test_laa_counts_the_lung_voxels_below_threshold() -> None:
    truth = _phantom()
    lung = lung_mask(truth, body_mask(truth))
    truth[5:10, 20:30, 20:40] = -990.0  # 1000 voxels inside the eroded lung
    assert laa_percent(truth, lung) == pytest.approx(100 * 1000 / 12544, rel=1e-12)
    pred = truth.copy()
    pred[12:14, 20:30, 20:45] = -960.0  # 500 more below -950
    pred[:, :4] = -1024.0  # outside the body: never counted
    assert laa_bias(pred, truth, lung) == pytest.approx(100 * 500 / 12544, rel=1e-12)
    assert laa_percent(truth, lung, threshold_hu=-995.0) == 0.0
    assert np.isnan(laa_percent(truth, np.zeros_like(lung)))
