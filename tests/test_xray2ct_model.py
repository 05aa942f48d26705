"""X-ray → CT parts: the lifting geometry, the network, the losses, the pair simulation and the intensities."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from ctsr_models.data.xray_pairs import (
    PairSettings, XraySetup, ct_net_to_hu, hu_to_ct_net, make_item, normalize_xray, normalize_xray_torch, resample_ct,
)
from ctsr_models.io import Volume
from ctsr_models.metrics import ssim3d
from ctsr_models.nets import XrayToCT, build_net
from ctsr_models.physics.lifting import detector_coords, edge_coords, lift, lifting_coords, resampled_grid
from ctsr_models.training.tasks.xray2ct import project_ct_net, ssim_torch
from sr_fixtures import synthetic_ct

SETUP = XraySetup(size=12, fov_mm=300.0, detector_px=24)


def _lift_impulse(geometry, row: int, col: int, factor: int = 1) -> np.ndarray:
    """Lift a one-pixel impulse at ``(row, col)`` of a ``detector / factor`` feature map onto SETUP's grid."""
    px = SETUP.detector_px // factor
    features = torch.zeros(1, 1, px, px)
    features[0, 0, row, col] = 1.0
    coords = torch.from_numpy(detector_coords(SETUP.grid(), geometry))[None]
    return lift(features, edge_coords(coords, geometry.shape))[0, 0].numpy()


def _bilinear_weight(geometry, row: float, col: float) -> np.ndarray:
    """The bilinear weight of detector position ``(row, col)`` at each voxel's ray end (``to_detector``)."""
    rc = geometry.to_detector(SETUP.grid().voxel_centres())
    return np.clip(1 - np.abs(rc[..., 0] - row), 0, None) * np.clip(1 - np.abs(rc[..., 1] - col), 0, None)


@pytest.mark.parametrize("view", [0, 1])
def test_a_feature_impulse_lands_in_the_voxels_whose_rays_hit_its_pixel(view):
    geometry = SETUP.geometries()[view]
    lifted = _lift_impulse(geometry, 9, 14)
    expected = _bilinear_weight(geometry, 9, 14)
    assert expected.max() > 0.5 and (expected > 0).sum() >= SETUP.size  # a ray through the whole cube
    np.testing.assert_allclose(lifted, expected, atol=1e-5)
    # a half-resolution encoder level: coarse pixel (r, c) is centred on full-resolution 2r + 0.5
    np.testing.assert_allclose(_lift_impulse(geometry, 4, 7, factor=2), _coarse_weight(geometry, 4, 7), atol=1e-5)


def _coarse_weight(geometry, row: int, col: int) -> np.ndarray:
    rc = geometry.to_detector(SETUP.grid().voxel_centres())
    coarse = (rc + 0.5) / 2 - 0.5  # continuous index on the half-resolution map
    return np.clip(1 - np.abs(coarse[..., 0] - row), 0, None) * np.clip(1 - np.abs(coarse[..., 1] - col), 0, None)


def test_frontal_and_lateral_impulses_fill_different_rays():
    frontal, lateral = (_lift_impulse(g, 12, 12) > 1e-3 for g in SETUP.geometries())
    assert frontal.any() and lateral.any() and (frontal != lateral).any()
    # frontal (PA) rays run along y (axis 1 of z, y, x), lateral ones along x (axis 2)
    assert np.ptp(np.argwhere(frontal)[:, 1]) == SETUP.size - 1 and np.ptp(np.argwhere(frontal)[:, 2]) <= 1
    assert np.ptp(np.argwhere(lateral)[:, 2]) == SETUP.size - 1 and np.ptp(np.argwhere(lateral)[:, 1]) <= 1


def test_lifting_coords_of_a_coarser_grid_keep_the_box():
    grid = SETUP.grid((5.0, -3.0, 20.0))
    coarse = resampled_grid(grid, 6)
    assert coarse.spacing == pytest.approx((50.0,) * 3)
    centre = np.mean(grid.voxel_centres(), axis=(0, 1, 2))
    assert np.mean(coarse.voxel_centres(), axis=(0, 1, 2)) == pytest.approx(centre)
    coords = lifting_coords(grid, SETUP.geometries((5.0, -3.0, 20.0)), 6)
    assert coords.shape == (2, 6, 6, 6, 2) and coords.abs().max() < 1.5


def test_network_output_shape_and_arguments():
    torch.manual_seed(0)
    net = build_net("xray2ct", size=16, detector_px=16, features_2d=[4, 8], features_3d=[4, 8])
    assert isinstance(net, XrayToCT) and net.lifting_size == 8
    setup = XraySetup(size=16, detector_px=16)
    coords = lifting_coords(setup.grid(), setup.geometries(), net.lifting_size)[None].expand(2, -1, -1, -1, -1, -1)
    x = torch.rand(2, 1, 16, 16)
    out = net(x, x.flip(-1), coords)
    assert out.shape == (2, 1, 16, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="coords must be"):
        net(x, x, coords[:, :, :4])
    with pytest.raises(ValueError, match="divisible"):
        build_net("xray2ct", size=18, detector_px=16, features_2d=[4, 8, 16], features_3d=[4, 8, 16])
    with pytest.raises(ValueError, match="features_2d needs 2"):
        build_net("xray2ct", features_3d=[4, 8])


def test_default_network_state_dict_fits_the_25_mb_limit():
    buffer = io.BytesIO()
    torch.save(build_net("xray2ct").state_dict(), buffer)
    assert len(buffer.getvalue()) <= 25 * 2**20


def test_ct_intensity_scale_is_the_clean_protocol():
    hu = np.array([-2000.0, -1000.0, 250.0, 1500.0, 3000.0])
    np.testing.assert_allclose(hu_to_ct_net(hu), [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(ct_net_to_hu(hu_to_ct_net(hu)), np.clip(hu, -1000, 1500), atol=1e-3)
    assert torch.allclose(hu_to_ct_net(torch.tensor([250.0])), torch.tensor([0.5]))


def test_normalize_xray_ignores_scale_and_offset_and_matches_its_torch_twin():
    rng = np.random.default_rng(3)
    image = rng.gamma(2.0, 1.0, (40, 50))
    out = normalize_xray(image)
    assert out.min() == 0.0 and out.max() == 1.0 and out.dtype == np.float32
    np.testing.assert_allclose(normalize_xray(37.5 * image - 12.0), out, atol=1e-6)
    assert not np.allclose(normalize_xray(image**2), out, atol=1e-2)  # not invariant to a gamma
    np.testing.assert_allclose(normalize_xray_torch(torch.from_numpy(image)[None]).numpy()[0], out, atol=1e-5)
    assert not normalize_xray(np.ones((8, 8))).any()


def test_separable_ssim_equals_the_metrics_ssim():
    rng = np.random.default_rng(0)
    a = rng.random((14, 16, 15))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    ours = float(ssim_torch(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]))
    reference = ssim3d(a * 4095 - 1024, b * 4095 - 1024)  # to_unit maps these back to a and b
    assert ours == pytest.approx(reference, abs=1e-5)


def _phantom() -> Volume:
    """A synthetic body-like CT (3 x 3 x 4 mm voxels) around the origin."""
    hu = synthetic_ct((60, 80, 90), seed=4).astype(np.float32)
    return Volume(hu, (3.0, 3.0, 4.0), (-133.5, -118.5, -118.0))


class _Source:
    given_xrays = False

    def __init__(self, volume: Volume) -> None:
        self._volume = volume

    def volume(self) -> Volume:
        return self._volume


def test_projection_loss_is_zero_for_the_truth_and_positive_otherwise():
    setup = XraySetup(size=16, detector_px=16)
    settings = PairSettings(setup, 8, proj_px=8, step_mm=setup.spacing)
    item = make_item(_Source(_phantom()), settings, np.random.default_rng(0), train=False)
    target = torch.from_numpy(item["target"])[None]
    geom = torch.from_numpy(item["geom"])[None]
    ref = torch.from_numpy(item["proj_ref"])[None]
    same = project_ct_net(target, geom, setup, 8, setup.spacing)
    assert float((same - ref).abs().mean()) < 1e-5
    blurred = torch.nn.functional.avg_pool3d(target, 3, 1, 1)
    assert float((project_ct_net(blurred, geom, setup, 8, setup.spacing) - ref).abs().mean()) > 1e-3
    full = project_ct_net(target, geom, setup, None, setup.spacing)[0].numpy()  # the validation metric's view
    np.testing.assert_allclose(full, item["xray_ref"], atol=1e-4)


def test_resampling_onto_the_same_grid_returns_the_array():
    setup = XraySetup(size=12, fov_mm=120.0)
    grid = setup.grid((4.0, -2.0, 7.0))
    hu = synthetic_ct((12, 12, 12), seed=1).astype(np.float32)
    vol = Volume(hu, grid.spacing, grid.origin)
    np.testing.assert_allclose(resample_ct(vol, grid), hu, atol=1e-3)
    # a 2x coarser grid over the same box averages 2x2x2 blocks
    coarse = resampled_grid(grid, 6)
    expected = hu.reshape(6, 2, 6, 2, 6, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(resample_ct(vol, coarse), expected, atol=1e-2)
