"""The implicit X-ray → CT network (issue 16, item 3): shapes, chunked decoding, the geometry of a point's
features, its training on sampled points, the inference API, and the patient-level CV split (item 1)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, shared
from ctsr_models.data.xray_pairs import PoseJitter, XraySetup, jittered_geometries
from ctsr_models.inference.xray2ct import XrayOptions, reconstruct_with
from ctsr_models.io import InputError
from ctsr_models.io.radiograph import Radiograph
from ctsr_models.nets import build_net
from ctsr_models.nets.xray2ct_implicit import sample_views
from ctsr_models.physics.lifting import detector_coords, edge_coords, lifting_coords
from ctsr_models.training import load_checkpoint
from ctsr_models.training.tasks.xray2ct import sample_points

sys.path.insert(0, str(REPO / "benchmarks"))
from xray2ct_cv import ALL, PATIENTS, fold_config, fold_split  # noqa: E402

SMOKE = REPO / "train" / "configs" / "xray2ct_implicit_smoke.yaml"
SMALL = {"size": 16, "detector_px": 16, "features_2d": (4, 8), "hidden": (8, 8), "frequencies": 2}


def small_net(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_net("xray2ct_implicit", **{**SMALL, **kwargs}).eval()


def test_shapes_any_point_layout_and_bad_arguments():
    net = small_net()
    x = torch.rand(2, 1, 16, 16)
    assert net(x, x, torch.rand(2, 2, 37, 2) * 2 - 1).shape == (2, 1, 37)
    assert net(x, x, torch.rand(2, 2, 5, 6, 7, 2) * 2 - 1).shape == (2, 1, 5, 6, 7)
    with pytest.raises(ValueError, match="coords must be"):
        net(x, x, torch.rand(2, 3, 5, 2))
    with pytest.raises(ValueError, match="frontal must be"):
        net(torch.rand(2, 1, 8, 8), x, torch.rand(2, 2, 5, 2))
    with pytest.raises(ValueError, match="divisible"):
        build_net("xray2ct_implicit", detector_px=18, features_2d=(4, 8, 16))
    with pytest.raises(ValueError, match="norm"):
        build_net("xray2ct_implicit", norm="layer")


def test_chunked_decoding_equals_one_shot():
    net = small_net()
    x, lat = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    coords = torch.rand(1, 2, 8, 8, 8, 2) * 2.4 - 1.2  # some points off the detectors
    with torch.no_grad():
        net.chunk_points = 10**6
        whole = net(x, lat, coords)
        net.chunk_points = 37
        chunked = net(x, lat, coords)
        single = net(x, lat, coords[:, :, 3, 4, 5][:, :, None])  # one point alone
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert torch.allclose(single[0, 0, 0], whole[0, 0, 3, 4, 5], atol=1e-6)
    assert whole.std() > 0  # the output depends on the point


def test_a_point_samples_its_views_where_the_projector_puts_it():
    """A ramp map (channels = detector row, column) sampled at the lifting coordinates of each voxel gives
    back ProjectionGeometry.to_detector of the voxel centre: the features a point decodes are those of the
    detector pixel its ray hits, on jittered (oblique) poses."""
    setup = XraySetup(size=12, fov_mm=320.0, detector_px=32)
    centre = (5.0, -20.0, 30.0)
    geoms = jittered_geometries(setup, centre, np.random.default_rng(3), PoseJitter(8.0, 10.0, 100.0, 50.0))
    grid = setup.grid(centre)
    coords = lifting_coords(grid, geoms, setup.size)[None]  # (1, 2, 12, 12, 12, 2)
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    ramp = torch.stack([rows, cols])[None]
    points = coords.reshape(1, 2, -1, 2)
    for v, g in enumerate(geoms):
        want = g.to_detector(grid.voxel_centres()).reshape(-1, 2)
        inside = np.all((want > 0.5) & (want < 30.5), axis=1)
        maps = [[torch.zeros_like(ramp)], [torch.zeros_like(ramp)]]
        maps[v] = [ramp]
        got = sample_views(maps, edge_coords(points, (32, 32)))[0].T.numpy()
        assert inside.mean() > 0.5
        assert np.abs(got[inside] - want[inside]).max() < 1e-3
        np.testing.assert_allclose(coords[0, v].numpy(), detector_coords(grid, g), atol=0)


def test_sample_points_gathers_matching_voxels():
    coords = torch.rand(2, 2, 4, 4, 4, 2)
    target = torch.rand(2, 1, 4, 4, 4)
    gen = torch.Generator().manual_seed(0)
    pts, values = sample_points(coords, target, 50, gen)
    assert pts.shape == (2, 2, 50, 2) and values.shape == (2, 1, 50)
    for b in range(2):
        for i in range(50):
            idx = int(torch.nonzero(target[b, 0].flatten() == values[b, 0, i])[0])
            assert torch.equal(pts[b, :, i], coords[b].reshape(2, -1, 2)[:, idx])


def test_smoke_config_trains_on_points_and_validates_whole_cubes(tmp_path):
    shared("ct/totalseg/aorta_report__test_result__models__ct_cropped.nii.gz")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "train", "xray2ct", "--config", str(SMOKE), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] and summary["step"] == 4
    assert all(np.isfinite(summary["val"][k]) for k in ("psnr", "ssim", "mae_hu", "proj_psnr", "mean_psnr"))
    assert 3 < summary["val"]["psnr"] < 40
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    kwargs = state["config"]["model"]["kwargs"]
    assert state["config"]["model"]["name"] == "xray2ct_implicit" and kwargs["size"] == 32
    net = build_net("xray2ct_implicit", **kwargs)
    net.load_state_dict(torch.load(out / "checkpoints" / "model_ema.pt", weights_only=True))


def _pair(setup: XraySetup) -> tuple[Radiograph, Radiograph]:
    rng = np.random.default_rng(0)
    rads = []
    for g in setup.geometries((0.0, 0.0, 0.0)):
        image = np.cumsum(np.cumsum(rng.random(g.shape), 0), 1).astype(np.float32)
        rads.append(Radiograph(image=image, geometry=g, kind="line_integral", meta={}, findings=[]))
    return rads[0], rads[1]


def test_inference_runs_the_implicit_model_on_any_output_grid():
    setup = XraySetup(size=16, fov_mm=320.0, detector_px=16)
    frontal, lateral = _pair(setup)
    net = small_net()
    out = {}
    for size in (None, 24):
        res = reconstruct_with(net, setup, "small", frontal, lateral, XrayOptions(refine_steps=0, check_pair=False,
                                                                                   output_size=size))
        out[size] = res.volume
    assert out[None].shape == (16, 16, 16) and out[24].shape == (24, 24, 24)
    np.testing.assert_allclose(out[24].spacing, (320 / 24,) * 3)
    # the same physical box: first voxel centre at -160 mm + half a voxel
    np.testing.assert_allclose(out[24].origin, (-160 + 320 / 48,) * 3, atol=1e-6)
    np.testing.assert_allclose(out[None].origin, (-160 + 10,) * 3, atol=1e-6)
    cube = build_net("xray2ct", size=16, detector_px=16, features_2d=(4, 8), features_3d=(4, 8)).eval()
    with pytest.raises(InputError, match="always outputs 16"):
        reconstruct_with(cube, setup, "cube", frontal, lateral, XrayOptions(refine_steps=0, check_pair=False,
                                                                             output_size=24))


def test_cv_split_never_trains_on_the_held_out_patient():
    every = [p for paths in PATIENTS.values() for p in paths]
    assert len(every) == len(set(every)) == 5
    for patient, paths in PATIENTS.items():
        train, test = fold_split(patient)
        train_paths = [p for p, _ in train]
        assert test == list(paths)
        assert not set(train_paths) & set(test)
        assert {Path(p).name for p in train_paths}.isdisjoint(Path(p).name for p in test)
        assert sorted(train_paths + test) == sorted(every)
        assert sum(w for _, w in train) == pytest.approx(len(PATIENTS) - 1)  # each training patient weighs 1
    # the two TotalSegmentator crops are one patient: held out together
    assert len(fold_split("totalseg_chest")[1]) == 2
    with pytest.raises(ValueError, match="unknown patient"):
        fold_split("nobody")
    with pytest.raises(ValueError, match="listed under"):
        fold_split("a", {"a": ("x.nii",), "b": ("x.nii",)})
    # the final model of the recipe holds nobody out
    train, test = fold_split(ALL)
    assert test == [] and sorted(p for p, _ in train) == sorted(every)
    assert sum(w for _, w in train) == pytest.approx(len(PATIENTS))


def test_fold_config_keeps_the_anatomical_augmentation_only_when_asked():
    with_anatomy = fold_config("xray2ct_implicit", "lung1", 600, 2, anatomy=True)
    without = fold_config("xray2ct_implicit", "lung1", 600, 2)
    assert without["anatomy"] is None and with_anatomy["anatomy"]["p_elastic"] > 0
    assert not any("lung1" in d["path"] for d in with_anatomy["data"]["train"])
    assert with_anatomy["trainer"]["steps"] == 600 and with_anatomy["trainer"]["ema_decay"] == pytest.approx(1 - 10 / 600)


def test_refinement_projects_a_box_averaged_copy_on_the_same_cube():
    from ctsr_models.inference.xray2ct import coarse_volume
    from ctsr_models.physics import ProjectionGeometry, VolumeGrid, hu_to_mu, project

    grid = VolumeGrid.centred((64, 64, 64), 2.5, centre=(3.0, -7.0, 11.0))
    # an ellipsoid of water in air, HU
    c = grid.voxel_centres() - np.array([3.0, -7.0, 11.0])
    hu = np.where((c[..., 0] / 60) ** 2 + (c[..., 1] / 45) ** 2 + (c[..., 2] / 70) ** 2 <= 1, 0.0, -1000.0)
    vol = torch.from_numpy(hu.astype(np.float32))
    small, small_grid = coarse_volume(vol, grid, 32)
    assert small.shape == (32, 32, 32) and small_grid.spacing == (5.0, 5.0, 5.0)
    # each coarse centre is the mean of its 2x2x2 fine centres (independent of the origin formula)
    fine = grid.voxel_centres().reshape(32, 2, 32, 2, 32, 2, 3).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(small_grid.voxel_centres(), fine, atol=1e-9)
    torch.testing.assert_close(small[3, 4, 5], vol[6:8, 8:10, 10:12].mean())
    # the line integrals agree to 2 % on average (a coarse grid shifted by half a fine voxel, 1.25 mm: 5 %)
    geoms = [ProjectionGeometry.standard(v, shape=(48, 48), pixel_mm=5.0, isocentre=(3.0, -7.0, 11.0)) for v in ("pa", "ll")]
    full = project(hu_to_mu(vol)[None, None].expand(2, 1, 64, 64, 64), grid, geoms, step_mm=2.5)
    half = project(hu_to_mu(small)[None, None].expand(2, 1, 32, 32, 32), small_grid, geoms, step_mm=5.0)
    assert float((full - half).abs().mean() / full.abs().mean()) < 0.03
    # no reduction when the volume is already small enough
    same, same_grid = coarse_volume(vol, grid, 64)
    assert same is vol and same_grid == grid
