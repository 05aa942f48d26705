"""Slice-position analysis and irregular-geometry resampling (pure numpy, no DICOM files)."""
from __future__ import annotations

import numpy as np
import pytest

from ctsr_models.io import slice_geometry as sg
from dicom_factory import AXIAL, in_field_of_view, linear_hu, oblique_iop, phantom_slices, pixel_centres, stack_ipps

TILTED = (1.0, 0.0, 0.0, 0.0, np.cos(np.radians(20.0)), -np.sin(np.radians(20.0)))


def analyse(ipps, iop=AXIAL, **kwargs):
    return sg.analyse_slices([iop] * len(ipps), list(ipps), **kwargs)


def test_regular_axial_stack_in_any_order():
    ipps = stack_ipps((-100, -80, 30), AXIAL, [0, 2.5, 5, 7.5, 10])
    report = analyse(ipps[[3, 0, 4, 1, 2]])
    assert report.regular and report.findings == [] and report.messages == []
    assert report.spacing == pytest.approx(2.5, abs=1e-9)
    np.testing.assert_array_equal(report.order, [1, 3, 4, 0, 2])
    np.testing.assert_allclose(report.positions, [30, 32.5, 35, 37.5, 40])
    np.testing.assert_allclose(report.normal, [0, 0, 1])


def test_oblique_stack_along_its_normal_is_regular_with_that_normal():
    iop = oblique_iop((25, -10, 40))
    ipps = stack_ipps((5, 6, 7), iop, np.arange(6) * 1.25)
    report = analyse(ipps[::-1], iop=iop)
    assert report.regular and report.spacing == pytest.approx(1.25, abs=1e-9)
    np.testing.assert_allclose(report.normal, np.cross(iop[:3], iop[3:]), atol=1e-12)
    np.testing.assert_array_equal(report.order, np.arange(6)[::-1])


def test_position_tolerance_accepts_decimal_rounding_but_not_a_real_error():
    ipps = stack_ipps((0, 0, 0), AXIAL, np.arange(8) * 2.0)
    jitter = ipps.copy()
    jitter[3, 2] += 0.004
    assert analyse(jitter).regular
    wrong = ipps.copy()
    wrong[3, 2] += 0.2
    report = analyse(wrong)
    assert report.findings == [sg.NONUNIFORM_SPACING]
    assert "gaps 1.80 to 2.20 mm" in report.messages[0]


def test_gantry_tilt_is_measured_from_the_shear():
    tilt = 18.5
    ipps = stack_ipps((0, 0, 0), AXIAL, np.arange(10) * 4.0, shear_mm_per_mm=(0.0, np.tan(np.radians(tilt))))
    report = analyse(ipps, gantry_tilts_deg=[tilt] * 10)
    assert report.findings == [sg.GANTRY_TILT] and report.resamplable and not report.regular
    assert report.tilt_deg == pytest.approx(tilt, abs=1e-6)
    assert report.shear_mm_per_slice == pytest.approx(4.0 * np.tan(np.radians(tilt)), abs=1e-6)
    assert "gantry tilt of 18.5° (slices are sheared 1.34 mm per slice in-plane; GantryDetectorTilt 18.5°)" \
        in report.summary()


def test_tiny_shear_below_tolerance_is_not_a_tilt():
    ipps = stack_ipps((0, 0, 0), AXIAL, np.arange(50) * 1.0, shear_mm_per_mm=(0.0005, 0.0))
    assert analyse(ipps).regular


def test_tilt_tag_without_shear_is_a_note_not_a_problem():
    ipps = stack_ipps((0, 0, 0), TILTED, np.arange(5) * 3.0)
    report = analyse(ipps, iop=TILTED, gantry_tilts_deg=[20.0] * 5)
    assert report.regular
    assert report.notes and report.notes[0].startswith(sg.GANTRY_TILT_TAG)


def test_irregular_inplane_offsets_are_named():
    ipps = stack_ipps((0, 0, 0), AXIAL, np.arange(5) * 2.0)
    ipps[2, 0] += 1.5
    report = analyse(ipps)
    assert report.findings == [sg.INPLANE_OFFSETS] and report.resamplable


def test_missing_slice_is_told_apart_from_nonuniform_spacing():
    missing = analyse(stack_ipps((0, 0, 0), AXIAL, [0, 5, 10, 20, 25]))
    assert missing.findings == [sg.MISSING_SLICES] and missing.resamplable
    assert "1 gap of 10.00 mm where the typical gap is 5.00 mm: about 1 slice(s) missing" in missing.messages[0]
    nonuniform = analyse(stack_ipps((0, 0, 0), AXIAL, [0, 4, 8, 9.08, 16.08, 23.08]))
    assert nonuniform.findings == [sg.NONUNIFORM_SPACING]
    assert "non-uniform slice spacing (gaps 1.08 to 7.00 mm)" in nonuniform.messages[0]


def test_duplicates_mixed_orientation_size_and_spacing_cannot_be_resampled():
    ipps = stack_ipps((0, 0, 0), AXIAL, [0, 2, 2, 4, 4, 6])
    dup = analyse(ipps)
    assert dup.findings == [sg.DUPLICATE_POSITIONS] and not dup.resamplable
    assert "6 slices at 4 distinct positions" in dup.messages[0] and "split the phases" in dup.messages[0]
    mixed = sg.analyse_slices([AXIAL, AXIAL, (1, 0, 0, 0, 0, -1)], list(stack_ipps((0, 0, 0), AXIAL, [0, 1, 2])))
    assert mixed.findings == [sg.MIXED_ORIENTATION] and "normals up to 90.0° apart" in mixed.messages[0]
    ipps3 = list(stack_ipps((0, 0, 0), AXIAL, [0, 1, 2]))
    sizes = analyse(ipps3, shapes=[(4, 4), (4, 4), (8, 4)], pixel_spacings=[(0.5, 0.5), (0.5, 0.5), (0.7, 0.7)])
    assert sizes.findings == [sg.MIXED_SIZE, sg.MIXED_PIXEL_SPACING] and not sizes.resamplable
    assert "4x4, 8x4" in sizes.messages[0] and "0.5 to 0.7 mm" in sizes.messages[1]


def test_missing_geometry_single_slice_and_bad_orientation():
    missing = sg.analyse_slices([AXIAL, AXIAL], [(0, 0, 0), None])
    assert missing.findings == [sg.MISSING_GEOMETRY] and "ImagePositionPatient missing on 1 of 2" in missing.messages[0]
    single = sg.analyse_slices([AXIAL], [(0, 0, 0)])
    assert single.findings == [sg.SINGLE_SLICE]
    bad = sg.analyse_slices([(1, 0, 0, 1, 0, 0)] * 2, [(0, 0, 0), (0, 0, 1)])
    assert bad.findings == [sg.INVALID_ORIENTATION]


@pytest.mark.parametrize("iop", [AXIAL, TILTED, oblique_iop((10, 20, -30))])
def test_resampling_a_linear_phantom_reproduces_it_at_every_target_voxel(iop):
    shape, ps = (24, 20), (0.8, 0.6)
    positions = [0.0, 1.5, 4.5, 5.5, 9.0, 11.0]
    ipps = stack_ipps((-7.0, 3.0, 11.0), iop, positions, shear_mm_per_mm=(0.12, -0.35))
    slices = phantom_slices(ipps, iop, ps, shape, linear_hu).astype(np.float32)
    out, origin, direction = sg.resample_to_regular(slices, ipps, iop, ps, 1.0)
    assert out.shape == (12, *shape) and out.dtype == np.float32
    np.testing.assert_allclose(origin, ipps[0])
    d = np.asarray(direction).reshape(3, 3)
    np.testing.assert_allclose(d[:, 0], iop[:3], atol=1e-9)
    np.testing.assert_allclose(d[:, 2], np.cross(iop[:3], iop[3:]), atol=1e-9)
    np.testing.assert_array_equal(out[0], slices[0])
    positions_n = ipps @ d[:, 2]
    checked = 0
    for k in range(out.shape[0]):
        centres = pixel_centres(origin + k * 1.0 * d[:, 2], iop, ps, shape)
        bracket = np.flatnonzero(np.abs(positions_n - positions_n[0] - k) < 1e-9)
        if not bracket.size:
            a = np.searchsorted(positions_n, positions_n[0] + k) - 1
            bracket = np.array([a, a + 1])
        inside = np.all([in_field_of_view(centres, ipps[i], iop, ps, shape) for i in bracket], axis=0)
        assert inside.sum() > 0.3 * inside.size
        np.testing.assert_allclose(out[k][inside], linear_hu(centres)[inside], atol=2e-3)
        checked += inside.sum()
    assert checked > 1000



def test_resampling_fills_outside_the_field_of_view_with_air():
    shape, ps = (10, 10), (1.0, 1.0)
    ipps = stack_ipps((0, 0, 0), AXIAL, [0, 1, 2], shear_mm_per_mm=(3.0, 0.0))
    out, _, _ = sg.resample_to_regular(np.full((3, *shape), 50.0), ipps, AXIAL, ps, 1.0)
    np.testing.assert_array_equal(out[0], 50.0)
    np.testing.assert_array_equal(out[2, :, :6], sg.FILL_HU)  # slice 2 starts 6 mm further along the row
    np.testing.assert_array_equal(out[2, :, 6:], 50.0)


def test_resampling_validates_its_inputs():
    ipps = stack_ipps((0, 0, 0), AXIAL, [0, 1, 2])
    with pytest.raises(ValueError, match="sorted"):
        sg.resample_to_regular(np.zeros((3, 4, 4)), ipps[::-1], AXIAL, (1, 1), 1.0)
    with pytest.raises(ValueError, match="positive"):
        sg.resample_to_regular(np.zeros((3, 4, 4)), ipps, AXIAL, (1, 1), 0.0)
    with pytest.raises(ValueError, match="n >= 2"):
        sg.resample_to_regular(np.zeros((1, 4, 4)), ipps[:1], AXIAL, (1, 1), 1.0)
