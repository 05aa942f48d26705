"""Whole-volume super-resolution: output grid, baselines, checked weights, bounded memory."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from ctsr_models.inference import (INTERPOLATORS, EnhanceOptions, WeightsError, enhance, enhance_detailed,
                                   load_network, read_manifest, through_plane_grid)
from ctsr_models.inference.predictor import resampled_input
from ctsr_models.inference.models import ship_model
from ctsr_models.io import InputError, Volume
from ctsr_models.io.checksum import sha256
from ctsr_models.nets import build_net
from ctsr_models.physics.consistency import SlabOperator, consistency_rmse


def thick_volume(n=10, spacing=5.0, shape=(24, 20), direction=np.eye(3), value=None) -> Volume:
    z = np.arange(n, dtype=np.float32)[:, None, None]
    array = np.broadcast_to(value if value is not None else -500 + 40 * z, (n, *shape)).astype(np.float32)
    return Volume(array.copy(), spacing=(0.8, 0.9, spacing), origin=(-10.0, 20.0, 30.0),
                  direction=np.asarray(direction).ravel(), slice_thickness=spacing)


def test_output_grid_covers_the_slab_extent():
    vol = thick_volume(direction=Rotation.from_euler("xz", [20, 35], degrees=True).as_matrix())
    grid = through_plane_grid(vol, 1.0)
    assert grid.n_slices == 50
    geo = grid.output_geometry(vol)
    # first output centre at c_0 - S/2 + s/2, along the (oblique) slice normal
    np.testing.assert_allclose(geo["origin"], np.asarray(vol.origin) - 2.0 * vol.slice_normal, atol=1e-9)
    assert geo["spacing"] == (0.8, 0.9, 1.0) and geo["direction"] == vol.direction
    np.testing.assert_allclose(grid.slab_centres_mm, 2.0 + 5.0 * np.arange(10))


def test_output_grid_with_a_non_integer_ratio_stops_inside_the_extent():
    grid = through_plane_grid(thick_volume(), 0.7)
    last = grid.first_offset_mm + (grid.n_slices - 1) * 0.7
    bound = 45.0 + 2.5 - 0.35  # c_last + S/2 - s/2, relative to c_0
    assert grid.n_slices == 71 and bound - 0.7 < last <= bound + 1e-9


@pytest.mark.parametrize("target", [5.0, 7.0, 0.0, -1.0, float("nan")])
def test_target_not_finer_than_the_input_is_refused(target):
    with pytest.raises(InputError, match="spacing"):
        through_plane_grid(thick_volume(), target)


@pytest.mark.parametrize("method", INTERPOLATORS)
def test_baselines_keep_a_constant_everywhere(method):
    out = enhance(thick_volume(value=40.0), EnhanceOptions(model=method))
    assert out.shape == (50, 24, 20)
    np.testing.assert_allclose(out.array, 40.0, atol=1e-3)


@pytest.mark.parametrize("method", INTERPOLATORS)
def test_z_only_baselines_equal_full_3d_simpleitk_resampling(method):
    """Independent reference: SimpleITK's own 3D resampling onto the output grid (normalised for Lanczos)."""
    import SimpleITK as sitk

    rng = np.random.default_rng(3)
    vol = thick_volume(n=8, shape=(9, 7), direction=Rotation.from_euler("y", 25, degrees=True).as_matrix())
    vol.array[:] = rng.normal(0, 300, vol.shape).astype(np.float32)
    grid = through_plane_grid(vol, 1.3)
    geo = grid.output_geometry(vol)
    ref = sitk.Image([7, 9, grid.n_slices], sitk.sitkFloat32)
    ref.SetSpacing(geo["spacing"]), ref.SetOrigin(geo["origin"]), ref.SetDirection(geo["direction"])
    kind = {"linear": sitk.sitkLinear, "cubic": sitk.sitkBSpline, "lanczos": sitk.sitkLanczosWindowedSinc}[method]

    def resample(array):
        return sitk.GetArrayFromImage(sitk.Resample(vol.replace(array=array).to_sitk(), ref, sitk.Transform(), kind))

    expected = resample(vol.array)
    if method == "lanczos":
        expected /= resample(np.ones_like(vol.array))
    out = enhance(vol, EnhanceOptions(model=method, target_spacing=1.3)).array
    np.testing.assert_allclose(out, expected, atol=0.05)


def test_linear_baseline_and_network_input_follow_the_physical_ramp():
    """Independent check: HU = -500 + 8 * (mm from slab 0's centre) between the first and last centre."""
    vol = thick_volume()
    grid = through_plane_grid(vol, 1.0)
    pos = grid.first_offset_mm + np.arange(grid.n_slices)  # mm from slab 0's centre
    inside = (pos >= 0) & (pos <= 45)
    expected = -500 + 8.0 * pos[inside]
    linear = enhance(vol, EnhanceOptions(model="linear")).array
    np.testing.assert_allclose(linear[inside, 5, 5], expected, atol=1e-3)
    np.testing.assert_allclose(resampled_input(vol, grid)[inside, 5, 5], expected, atol=1e-3)


def make_model_folder(folder, roi_size, features=4):
    """A shipped-model folder holding an untrained SR network (its residual head starts at zero)."""
    torch.manual_seed(0)
    net = build_net("sr_resnet", features=features, num_blocks=1)
    torch.save(net.state_dict(), folder / "tiny.pt")
    manifest = {"default": "tiny", "models": [{
        "name": "tiny", "net": "sr_resnet", "net_kwargs": {"features": features, "num_blocks": 1},
        "weights": "tiny.pt", "sha256": sha256(folder / "tiny.pt"), "roi_size": list(roi_size)}]}
    (folder / "models.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def tiny_model(tmp_path, monkeypatch):
    monkeypatch.setenv("CTSR_WEIGHTS_DIR", str(make_model_folder(tmp_path, (16, 16, 16))))
    return tmp_path


def test_untrained_network_returns_its_physical_linear_input(tiny_model):
    vol = thick_volume(n=6, shape=(40, 36))
    out = enhance(vol, EnhanceOptions(model="default", consistency=False))
    grid = through_plane_grid(vol, 1.0)
    np.testing.assert_allclose(out.array, resampled_input(vol, grid), atol=1e-2)
    assert out.findings[-2].startswith("enhanced: model tiny")
    assert out.findings[-1].startswith("data consistency: not enforced")


def test_a_network_result_reproduces_the_acquired_slabs(tiny_model):
    """With data consistency (the default) the result, degraded again with the slab profile, gives back
    the input slabs; without it the linear input does not (its slabs are smoothed twice)."""
    vol = thick_volume(n=6, shape=(40, 36))
    out, details = enhance_detailed(vol, EnhanceOptions(model="default"))
    raw = enhance(vol, EnhanceOptions(model="default", consistency=False))
    op = SlabOperator.for_grid(through_plane_grid(vol, 1.0), details["data_consistency"]["profile"]["fwhm_mm"])
    mask = np.ones(vol.array.shape, dtype=bool)
    assert consistency_rmse(out.array, vol.array, op, mask) < 0.01
    assert consistency_rmse(raw.array, vol.array, op, mask) > 1.0
    assert details["data_consistency"]["rmse_after_hu"] < 0.01 < details["data_consistency"]["rmse_before_hu"]
    assert details["data_consistency"]["enforced"] is True
    lanczos, lanczos_details = enhance_detailed(vol, EnhanceOptions(model="lanczos"))
    assert lanczos_details["data_consistency"]["enforced"] is False  # baselines are shown as they are
    np.testing.assert_array_equal(lanczos.array, enhance(vol, EnhanceOptions(model="lanczos", consistency=False)).array)


def test_altered_weights_are_refused(tiny_model):
    with open(tiny_model / "tiny.pt", "ab") as f:
        f.write(b"\0")
    specs, _ = read_manifest()
    with pytest.raises(WeightsError, match="SHA-256"):
        load_network(specs["tiny"], torch.device("cpu"))
    with pytest.raises(InputError, match="unknown model 'nope'.*tiny.*lanczos"):
        enhance(thick_volume(), EnhanceOptions(model="nope"))


def test_absurd_output_size_is_refused_before_any_work():
    huge = np.broadcast_to(np.float32(0.0), (400, 2048, 2048))  # no memory behind it
    vol = Volume(huge, spacing=(0.2, 0.2, 10.0), origin=(0, 0, 0))
    with pytest.raises(InputError, match="voxels"):
        enhance(vol, EnhanceOptions(target_spacing=0.01, model="linear"))


@pytest.mark.slow
def test_memory_stays_bounded_for_a_600_slice_output(tmp_path, monkeypatch):
    """512x512x120 slabs at 5 mm -> 600 slices at 1 mm, in a fresh process; peak RSS < 8 GB."""
    monkeypatch.setenv("CTSR_WEIGHTS_DIR", str(make_model_folder(tmp_path, (64, 256, 256), features=1)))
    code = textwrap.dedent("""
        import resource, sys, numpy as np
        from ctsr_models.io import Volume
        from ctsr_models.inference import EnhanceOptions, enhance
        rng = np.random.default_rng(0)
        vol = Volume(rng.normal(0, 200, (120, 512, 512)).astype(np.float32), (0.8, 0.8, 5.0), (0, 0, 0))
        out = enhance(vol, EnhanceOptions(model="default"))
        assert out.shape == (600, 512, 512), out.shape
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    peak_gb = float(proc.stdout.strip().splitlines()[-1])
    print(f"peak RSS {peak_gb:.2f} GB")
    assert peak_gb < 8.0, f"peak RSS {peak_gb:.2f} GB"


def test_ship_model_takes_the_ema_weights_of_a_training_checkpoint(tiny_model):
    torch.manual_seed(1)
    net = build_net("sr_resnet", features=4, num_blocks=1)
    ema = torch.optim.swa_utils.AveragedModel(net)
    with torch.no_grad():
        for p in ema.module.parameters():
            p.add_(0.5)
    checkpoint = tiny_model / "step_0000010.pt"
    torch.save({"model": net.state_dict(), "ema": ema.state_dict(),
                "config": {"model": {"name": "sr_resnet", "kwargs": {"features": 4, "num_blocks": 1}}}}, checkpoint)
    spec = ship_model(checkpoint, "shipped", description="test", card="docs/models/x.md", roi_size=(8, 8, 8))
    specs, default = read_manifest()
    assert default == "shipped" and set(specs) == {"tiny", "shipped"} and specs["shipped"] == spec
    loaded = load_network(spec, torch.device("cpu"))
    for (name, value), ema_value in zip(loaded.state_dict().items(), ema.module.state_dict().values()):
        assert torch.equal(value, ema_value), name
