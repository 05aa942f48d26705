"""Anatomical augmentation on real CTs: exact geometry (a bead and its projections), habitus, breathing,
table removal, contrast flip, identity, determinism and settings."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from conftest import shared
from ctsr_models.data.anatomy_augment import (
    AnatomyAug, AnatomyDraw, augment_anatomy, augment_volume, body_mask, contrast_target, draw_anatomy, lung_mask,
)
from ctsr_models.data.xray_pairs import (
    PairSettings, XrayPairDataset, XraySetup, body_centre, ct_net_to_hu, resample_ct, rotation_matrix, simulate_pair,
)
from ctsr_models.io import Volume, read_volume
from ctsr_models.physics import ProjectionGeometry, VolumeGrid, drr

VOXEL_MM = 4.0


def _grid(ct: Volume, shape: tuple[int, int, int], centre: np.ndarray) -> VolumeGrid:
    """An axis-aligned ``VOXEL_MM`` grid of ``shape`` (z, y, x) centred on ``centre``."""
    origin = np.asarray(centre) - (np.asarray(shape[::-1]) - 1) * VOXEL_MM / 2
    return VolumeGrid(shape, (VOXEL_MM,) * 3, tuple(origin))


@pytest.fixture(scope="module")
def chest() -> tuple[np.ndarray, VolumeGrid]:
    """The 4D-CT phase 00 chest on a 4 mm grid wider than the body (air around it): (72, 136, 136)."""
    ct = read_volume(shared("ct/chest_4dct_phase00_dicom"))
    grid = _grid(ct, (72, 136, 136), body_centre(ct))
    return resample_ct(ct, grid), grid


@pytest.fixture(scope="module")
def torso() -> tuple[np.ndarray, VolumeGrid]:
    """160 mm of the neck-to-pelvis torso (with its table) on a 4 mm grid covering its whole axial field."""
    ct = read_volume(shared("ct/tcia_cc_tumor_het_torso/torso_ct_2.5mm.nii.gz"))
    lo = np.asarray(ct.origin)
    centre = lo + (np.asarray(ct.shape[::-1]) - 1) * np.asarray(ct.spacing) / 2
    centre[2] = body_centre(ct)[2]
    grid = _grid(ct, (40, 120, 128), centre)
    return resample_ct(ct, grid), grid


def _crop(hu: np.ndarray, grid: VolumeGrid, margin: int = 20) -> tuple[np.ndarray, VolumeGrid]:
    """The central part of an axial field (``margin`` voxels off each side in x and y)."""
    origin = np.asarray(grid.origin) + [margin * grid.spacing[0], margin * grid.spacing[1], 0.0]
    shape = (grid.shape[0], grid.shape[1] - 2 * margin, grid.shape[2] - 2 * margin)
    return hu[:, margin:-margin, margin:-margin], VolumeGrid(shape, grid.spacing, tuple(origin), grid.direction)


def _bead(grid: VolumeGrid, point: np.ndarray, peak: float = 1000.0, sigma_mm: float = 4.0) -> np.ndarray:
    """A Gaussian ball of ``peak`` HU at an LPS ``point`` (3 sigma support), on ``grid``."""
    r2 = ((grid.voxel_centres() - point) ** 2).sum(axis=-1)
    return np.where(r2 < (3 * sigma_mm) ** 2, peak * np.exp(-r2 / (2 * sigma_mm**2)), 0.0).astype(np.float32)


def _centroid(weights: np.ndarray, grid: VolumeGrid) -> np.ndarray:
    """LPS centroid of non-negative ``weights`` on ``grid``."""
    w = np.clip(weights, 0, None)
    return (grid.voxel_centres() * w[..., None]).reshape(-1, 3).sum(axis=0) / w.sum()


def _image_centroid(image: np.ndarray) -> np.ndarray:
    """``(row, col)`` centroid of a non-negative image."""
    w = np.clip(image, 0, None)
    rows, cols = np.indices(w.shape)
    return np.array([(rows * w).sum(), (cols * w).sum()]) / w.sum()


def _lung_point(hu: np.ndarray, grid: VolumeGrid) -> np.ndarray:
    """An LPS point deep in the right lung (at least 20 mm from its border)."""
    lungs = lung_mask(hu, grid, body_mask(hu))
    depth = ndi.distance_transform_edt(lungs, sampling=grid.spacing[::-1])
    zyx = np.argwhere(depth >= 20.0)
    pts = grid.voxel_centres()[tuple(zyx.T)]
    right = pts[pts[:, 0] < np.median(pts[:, 0])]  # LPS x grows to the patient's left
    return right[np.argmin(((right - right.mean(axis=0)) ** 2).sum(axis=1))]


def _extent(mask: np.ndarray, grid: VolumeGrid) -> np.ndarray:
    """LPS extents (x, y, z) of a mask, mm (voxel centres' range + one voxel)."""
    pts = grid.voxel_centres()[mask]
    return np.ptp(pts, axis=0) + np.asarray(grid.spacing)


# ----------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("change, message", [
    ({"habitus_range": (0.8, 1.0)}, "0.85 <= lo <= hi <= 1.15"),
    ({"habitus_range": (1.1, 1.0)}, "0.85 <= lo <= hi <= 1.15"),
    ({"breathing_range": (-0.5, 0.1)}, "-0.3 <= lo <= hi <= 0.3"),
    ({"contrast_hu": (0.0, 500.0)}, "0 <= lo <= hi <= 400"),
    ({"p_elastic": 1.5}, "p_elastic must be a probability in [0, 1]"),
    ({"rotation_deg": 30.0}, "rotation_deg must be in [0, 10]"),
    ({"elastic_mm": -1.0}, "elastic_mm must be in [0, 20]"),
    ({"elastic_grid_mm": 5.0}, "elastic_grid_mm must be in [20, 200]"),
])
def test_bad_settings_raise_with_the_allowed_range(change, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        AnatomyAug(**change)


def test_identity_settings_give_back_the_input(chest):
    hu, grid = chest
    before = hu.copy()
    off = AnatomyAug(p_habitus=0, p_rotation=0, p_elastic=0, p_breathing=0, p_table=0, p_contrast=0)
    result = augment_anatomy(hu, grid, off, np.random.default_rng(0))
    assert np.array_equal(result.hu, hu) and not result.displacement.any()
    volume = augment_volume(Volume(hu, grid.spacing, grid.origin), off, np.random.default_rng(0))
    assert np.array_equal(volume.array, hu) and volume.origin == grid.origin and volume.spacing == grid.spacing
    neutral = AnatomyAug(p_habitus=1, habitus_range=(1, 1), p_rotation=1, rotation_deg=0, p_elastic=1, elastic_mm=0,
                         p_breathing=1, breathing_range=(0, 0), p_table=0, p_contrast=1, contrast_hu=(0, 0))
    result = augment_anatomy(hu, grid, neutral, np.random.default_rng(0))
    assert np.abs(result.hu - hu).max() < 1e-2 and np.abs(result.displacement).max() < 1e-4
    assert np.array_equal(hu, before)  # the input is never modified


# ----------------------------------------------------------------------------------------- geometry
def test_bead_moves_as_the_analytic_scaling_and_rotation(chest):
    hu, grid = _crop(*chest)
    p = _lung_point(hu, grid)
    draw = AnatomyDraw(habitus=(0.9, 1.12), rotation_deg=(3.0, -2.0, 4.0))
    base = augment_anatomy(hu, grid, draw, np.random.default_rng(0))
    beaded = augment_anatomy(hu + _bead(grid, p), grid, draw, np.random.default_rng(0))
    c = base.centre
    expected = c + rotation_matrix(draw.rotation_deg) @ (np.diag([0.9, 1.12, 1.0]) @ (p - c))
    moved_by = np.linalg.norm(expected - p)
    assert moved_by > 5.0  # the test means something: the bead travels more than a voxel
    assert np.linalg.norm(_centroid(beaded.hu - base.hu, grid) - expected) < 0.5 * VOXEL_MM
    assert np.linalg.norm(base.moved(p) - expected) < 0.01  # the field's inverse is the formula


def test_bead_and_its_projections_follow_the_full_displacement(chest):
    hu, grid = _crop(*chest)
    p = _lung_point(hu, grid)
    aug = AnatomyAug(p_habitus=1, p_rotation=1, p_elastic=1, elastic_mm=10.0, p_breathing=1,
                     breathing_range=(0.12, 0.12), p_table=0, p_contrast=0)
    base = augment_anatomy(hu, grid, aug, np.random.default_rng(7))
    beaded = augment_anatomy(hu + _bead(grid, p), grid, aug, np.random.default_rng(7))
    q = base.moved(p)
    assert np.linalg.norm(q - p) > 10.0
    u_at_q = np.array([ndi.map_coordinates(base.displacement[..., c], grid.world_to_index(q)[::-1, None], order=1)[0]
                       for c in range(3)])
    assert np.linalg.norm(q + u_at_q - p) < 0.05  # q is where the field sends p
    assert np.linalg.norm(_centroid(beaded.hu - base.hu, grid) - q) < 0.5 * VOXEL_MM
    centre = np.asarray(base.centre)
    for view in ("pa", "ll"):
        g = ProjectionGeometry.standard(view, 1800.0, 1500.0, (96, 96), 4.8, tuple(centre))
        image = drr(beaded.hu, grid, g) - drr(base.hu, grid, g)
        assert np.linalg.norm(_image_centroid(image) - g.to_detector(q)) < 0.5  # detector pixels


def test_simulated_radiographs_are_projected_from_the_augmented_ct(chest):
    hu, grid = _crop(*chest)
    p = _lung_point(hu, grid)
    setup = XraySetup(size=64, fov_mm=320.0, detector_px=64)
    draw = AnatomyDraw(habitus=(1.1, 0.9), rotation_deg=(-2.0, 3.0, 1.0))
    pairs = [simulate_pair(Volume(a, grid.spacing, grid.origin), setup, np.random.default_rng(1), centre=p + 30.0,
                           anatomy=draw) for a in (hu, hu + _bead(grid, p, sigma_mm=5.0))]
    out_grid = setup.grid(p + 30.0)
    target = ct_net_to_hu(pairs[1]["ct_net"]) - ct_net_to_hu(pairs[0]["ct_net"])
    q_target = _centroid(target, out_grid)
    for pair in pairs:  # the inputs are the projections of the target
        for g, lines in zip(pair["geometries"], pair["line_integrals"]):
            assert np.abs(drr(ct_net_to_hu(pair["ct_net"]), out_grid, g) - lines).max() < 1e-4
    assert np.linalg.norm(q_target - p) > 3.0
    for g, a, b in zip(pairs[0]["geometries"], *(pair["line_integrals"] for pair in pairs)):
        assert np.linalg.norm(_image_centroid(b - a) - g.to_detector(q_target)) < 0.5


# ----------------------------------------------------------------------------------------- anatomy
@pytest.mark.parametrize("scale", [(0.88, 1.12), (1.06, 0.87)])
def test_habitus_scales_lateral_and_ap_extent_and_keeps_cranio_caudal(chest, scale):
    hu, grid = chest
    result = augment_anatomy(hu, grid, AnatomyDraw(habitus=scale), np.random.default_rng(0))
    ratio = _extent(body_mask(result.hu), grid) / _extent(body_mask(hu), grid)
    assert abs(ratio[0] / scale[0] - 1) < 0.02 and abs(ratio[1] / scale[1] - 1) < 0.02
    assert abs(ratio[2] - 1) < 0.01


@pytest.mark.parametrize("fraction", [0.15, -0.15])
def test_breathing_changes_lung_volume_and_conserves_lung_mass(chest, fraction):
    hu, grid = chest
    lungs = lung_mask(hu, grid, body_mask(hu))
    result = augment_anatomy(hu, grid, AnatomyDraw(breathing=fraction), np.random.default_rng(0))
    idx = grid.world_to_index(grid.voxel_centres() + result.displacement)[..., ::-1].reshape(-1, 3).T

    def follow(mask: np.ndarray) -> np.ndarray:  # where a mask of the input lies in the output
        return ndi.map_coordinates(mask.astype(np.float32), idx, order=1).reshape(hu.shape) >= 0.5

    moved_lungs = follow(lungs)
    assert abs(moved_lungs.sum() / lungs.sum() - 1 - fraction) < 0.1 * abs(fraction)
    after = lung_mask(result.hu, grid, body_mask(result.hu))  # found again in the image (HU < -400)
    assert abs(after.sum() / lungs.sum() - 1 - fraction) < 0.2 * abs(fraction)
    assert np.sign(hu[lungs].mean() - result.hu[after].mean()) == np.sign(fraction)  # more air: darker
    # mass of the lung interior (2 voxels from its border, so no partial-volume edge), followed by the field
    core = ndi.binary_erosion(lungs, iterations=2)
    moved_core = follow(core)
    mass = (result.hu[moved_core] + 1000).sum() / (hu[core] + 1000).sum()
    assert abs(mass - 1) < 0.05
    u = np.abs(result.displacement).reshape(-1, 3).max(axis=0)
    assert u[2] > 2 * max(u[0], u[1]) and u[2] > 10.0  # mostly cranio-caudal, at the diaphragm


def test_table_removal_clears_the_table_and_keeps_the_body(torso):
    hu, grid = torso
    body = body_mask(hu)
    centres = grid.voxel_centres()
    behind = centres[..., 1] > centres[body][:, 1].mean()  # LPS y grows to the back
    dense = (hu > -500) & ~body & behind
    assert dense.sum() * VOXEL_MM**3 > 50_000  # the table is there: > 50 mL of it
    result = augment_anatomy(hu, grid, AnatomyDraw(remove_table=True), np.random.default_rng(0))
    assert not ((result.hu > -500) & ~body & behind).any()
    assert np.array_equal(result.hu[body], hu[body])
    assert np.array_equal(result.hu[ndi.binary_dilation(body)], hu[ndi.binary_dilation(body)])


def test_contrast_flip_is_bounded_and_only_in_the_blood_pool(chest):
    hu, grid = chest
    lungs = lung_mask(hu, grid, body_mask(hu))
    target, sign = contrast_target(hu, grid, lungs)
    assert sign == 1  # a non-contrast CT gets contrast
    assert 100 < target.sum() * VOXEL_MM**3 / 1000 < 2000  # mL: heart and great vessels
    assert abs(_centroid(target.astype(np.float32), grid)[0] - _centroid(lungs.astype(np.float32), grid)[0]) < 40
    enhanced = augment_anatomy(hu, grid, AnatomyDraw(contrast_hu=180.0), np.random.default_rng(0)).hu
    diff = enhanced - hu
    assert np.array_equal(diff != 0, target) and np.allclose(diff[target], 180.0)
    target2, sign2 = contrast_target(enhanced, grid, lung_mask(enhanced, grid, body_mask(enhanced)))
    assert sign2 == -1 and (target2 & target).sum() > 0.9 * target.sum()  # now seen as enhanced
    washed = augment_anatomy(enhanced, grid, AnatomyDraw(contrast_hu=180.0), np.random.default_rng(0)).hu
    back = washed - enhanced
    assert np.array_equal(back != 0, target2 & (enhanced > 40)) and back.min() >= -180.0 and back.max() <= 0
    assert washed[target2].min() >= min(40.0, enhanced[target2].min())


def test_draws_are_deterministic_for_a_seeded_generator(chest):
    hu, grid = chest
    small = VolumeGrid(tuple(n // 2 for n in grid.shape), (2 * VOXEL_MM,) * 3, grid.origin)
    hu_small = hu[::2, ::2, ::2]
    aug = AnatomyAug(p_habitus=1, p_rotation=1, p_elastic=1, p_breathing=1, p_table=1, p_contrast=1)
    a, b = (augment_anatomy(hu_small, small, aug, np.random.default_rng(42)) for _ in range(2))
    assert a.draw == b.draw and np.array_equal(a.hu, b.hu) and np.array_equal(a.displacement, b.displacement)
    assert draw_anatomy(aug, np.random.default_rng(43)) != a.draw
    assert dataclasses.asdict(a.draw)["elastic_grid_mm"] == aug.elastic_grid_mm


def test_training_items_use_the_augmentation_and_validation_does_not(chest):
    hu, grid = chest

    @dataclasses.dataclass
    class Source:
        given_xrays = False

        def volume(self) -> Volume:
            return Volume(hu, grid.spacing, grid.origin)

    setup = XraySetup(size=32, fov_mm=320.0, detector_px=32)
    plain = PairSettings(setup, lifting_size=8, proj_px=16)
    aug = dataclasses.replace(plain, anatomy=AnatomyAug(p_habitus=1, habitus_range=(0.86, 0.86), p_rotation=0,
                                                        p_elastic=0, p_breathing=0, p_table=0, p_contrast=0))
    train = [XrayPairDataset([Source()], s, seed=3)[0]["target"] for s in (plain, aug)]
    val = [XrayPairDataset([Source()], s, seed=3, train=False)[0]["target"] for s in (plain, aug)]
    assert float((train[0] - train[1]).abs().mean()) > 0.01
    assert (val[0] == val[1]).all()
