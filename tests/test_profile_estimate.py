"""Slice-profile estimation on thick slabs simulated from real thin CT with a known profile and width.

Target (issue 15): FWHM within 10 % of the truth for rect and Gaussian slabs of 2.5-10 mm. Each case below
asserts the bound it meets on this data; the cases that miss the target keep the bound measured for them
and say so (docs/slice_profile.md has the full table).
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from conftest import shared
from ctsr_models.io import read_volume
from ctsr_models.io.volume import Volume
from ctsr_models.physics import EstimateOptions, estimate_slice_profile, simulate_thick_slices

log = logging.getLogger(__name__)

TARGET = 0.10  # relative FWHM error wanted by the issue


def _crop(volume: Volume, size: int, slices: slice = slice(None)) -> Volume:
    """Central ``size`` x ``size`` in-plane crop of the slices ``slices``, float32."""
    _, h, w = volume.shape
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    array = volume.array[slices, y0:y0 + size, x0:x0 + size]
    return volume.replace(array=np.ascontiguousarray(array, dtype=np.float32))


@pytest.fixture(scope="module")
def aorta() -> Volume:
    """Contrast chest CT crop, 126 x 120 x 164 at 1.5 mm isotropic."""
    return _crop(read_volume(shared("ct/totalseg/aorta_report__test_result__models__ct_cropped.nii.gz")), 256)


@pytest.fixture(scope="module")
def head() -> Volume:
    """Head CT at 0.475 x 0.475 x 1.25 mm: central 256 x 256 (122 mm), 112 slices (140 mm)."""
    return _crop(read_volume(shared("ct/tcia_cptac_gbm_head/head_ct_1.25mm.nii.gz")), 256, slice(24, 136))


@pytest.fixture(scope="module")
def chest() -> Volume:
    """4D-CT chest phase 00 (DICOM) at 0.977 x 0.977 x 2 mm: central 256 x 256 (250 mm), all 141 slices."""
    return _crop(read_volume(shared("ct/chest_4dct_phase00_dicom")), 256)


def _check(thin: Volume, name: str, profile: str, thickness: float, spacing: float, bound: float,
           stride: int = 1) -> float:
    thick = simulate_thick_slices(thin, thickness, spacing, profile)
    estimate = estimate_slice_profile(thick, EstimateOptions(line_stride=stride))
    fit = estimate.fit_for(profile)
    error = fit.fwhm_mm / thickness - 1.0
    log.info("%s %s T %g mm / S %g mm: FWHM %.2f mm (%+.1f %%), chosen %s %.2f mm, confidence %s", name, profile,
             thickness, spacing, fit.fwhm_mm, 100 * error, estimate.shape, estimate.fwhm_mm, estimate.confidence)
    assert estimate.slab_spacing_mm == pytest.approx(spacing)
    assert abs(error) <= bound, f"{name} {profile} {thickness}/{spacing} mm: FWHM error {100 * error:+.1f} %"
    return error


@pytest.mark.parametrize("profile,thickness,spacing", [
    ("rect", 5.0, 5.0), ("rect", 10.0, 10.0), ("rect", 7.5, 5.0),
    ("gaussian", 5.0, 5.0), ("gaussian", 10.0, 10.0), ("gaussian", 7.5, 5.0),
])
def test_chest_crop_within_target(aorta: Volume, profile: str, thickness: float, spacing: float) -> None:
    _check(aorta, "chest crop", profile, thickness, spacing, TARGET)


@pytest.mark.parametrize("profile,thickness,spacing,bound", [
    ("gaussian", 2.5, 2.5, TARGET), ("gaussian", 5.0, 5.0, TARGET), ("gaussian", 7.5, 5.0, TARGET),
    ("rect", 7.5, 5.0, TARGET),
    ("rect", 5.0, 5.0, 0.45),  # misses the target: contiguous rect slabs of a head read about 35-40 % thin
])
def test_head(head: Volume, profile: str, thickness: float, spacing: float, bound: float) -> None:
    _check(head, "head", profile, thickness, spacing, bound, stride=2)


@pytest.mark.parametrize("profile,thickness,spacing", [("rect", 5.0, 5.0), ("gaussian", 7.5, 5.0)])
def test_chest_dicom_within_target(chest: Volume, profile: str, thickness: float, spacing: float) -> None:
    _check(chest, "4D-CT chest", profile, thickness, spacing, TARGET, stride=2)


def test_unblurred_slices_hit_the_lower_bound_with_low_confidence(aorta: Volume) -> None:
    """Every 4th thin slice kept (1.5 mm slices 6 mm apart: wide gaps): outside the model, and said so."""
    sparse = aorta.replace(array=np.ascontiguousarray(aorta.array[::4]),
                           spacing=(aorta.spacing[0], aorta.spacing[1], 6.0))
    estimate = estimate_slice_profile(sparse)
    assert estimate.fwhm_mm == pytest.approx(0.6 * 6.0, rel=0.02)
    assert estimate.confidence == "low"
    assert any("search bound" in note for note in estimate.notes)
    report = json.loads(json.dumps(estimate.to_dict()))
    assert report["shape"] in ("rect", "gaussian") and len(report["fits"]) == 2


def test_bad_inputs_raise(aorta: Volume) -> None:
    with pytest.raises(ValueError, match="not coarser"):
        estimate_slice_profile(aorta)  # isotropic: nothing to estimate
    few = aorta.replace(array=np.ascontiguousarray(aorta.array[:6]), spacing=(1.5, 1.5, 5.0))
    with pytest.raises(ValueError, match="at least 8 slabs"):
        estimate_slice_profile(few)
    with pytest.raises(ValueError, match="segment"):
        EstimateOptions(segment=7)
    with pytest.raises(ValueError, match="shapes"):
        EstimateOptions(shapes=("triangle",))
    air = aorta.replace(array=np.full((40, 120, 120), -1000.0, dtype=np.float32), spacing=(1.5, 1.5, 5.0))
    with pytest.raises(ValueError, match="inside the body"):
        estimate_slice_profile(air)
