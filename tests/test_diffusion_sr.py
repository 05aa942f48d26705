"""Diffusion super-resolution end to end: manifest settings, seeded sampling, data consistency on a real crop,
the calibrated uncertainty, the CLI, the training task and a real-server round trip.

A tiny denoiser (random weights, so samples differ) is shipped into a temporary ``CTSR_WEIGHTS_DIR`` beside a
copy of the shipped regression model it is conditioned on; the real diffusion model is too slow for a test.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ctsr_models.inference import DiffusionSettings, EnhanceOptions, ModelKind, enhance_detailed, resolve_model
from ctsr_models.inference.grid import through_plane_grid
from ctsr_models.inference.models import SHIPPED_WEIGHTS, WeightsError, ship_model, spec_from_entry
from ctsr_models.io import Volume, read_volume, write_volume
from ctsr_models.nets import build_net
from ctsr_models.physics.consistency import SlabOperator, consistency_rmse
from ctsr_models.physics.thick_slice import simulate_thick_slices

REPO = Path(__file__).resolve().parents[1]
SHARED_CT = REPO.parent / "shared" / "data" / "ct" / "totalseg" / "aorta_report__test_result__models__ct_cropped.nii.gz"
TINY = "sr_diffusion_tiny_test"
TINY_NET = {"cond_channels": 2, "channels": [8, 8], "num_res_blocks": 1}
SCALE = 1.5

needs_data = pytest.mark.skipif(not SHARED_CT.exists(), reason="../shared/data (real CT) is not present")


def ship_tiny(folder: Path) -> None:
    """Copy the shipped manifest and regression model into ``folder`` and ship a random tiny denoiser there."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPPED_WEIGHTS / "models.json", folder / "models.json")
    shutil.copy(SHIPPED_WEIGHTS / "sr_unet_small_v3.pt", folder / "sr_unet_small_v3.pt")
    torch.manual_seed(0)
    net = build_net("sr_diffusion_unet", **TINY_NET)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save({"model": net.state_dict(), "config": {"model": {"name": "sr_diffusion_unet", "kwargs": TINY_NET}}},
               folder / "ckpt.pt")
    settings = DiffusionSettings(scheduler="resshift", scheduler_kwargs={"num_train_timesteps": 4, "kappa": 0.2},
                                 steps=2, samples=2, calibration_scale=SCALE, calibration_coverage=0.9)
    ship_model(folder / "ckpt.pt", TINY, description="tiny test denoiser", card="docs/models/none.md",
               roi_size=(32, 48, 48), folder=folder, kind=ModelKind.DIFFUSION, diffusion=settings)
    (folder / "ckpt.pt").unlink()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    ship_tiny(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CTSR_WEIGHTS_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def thick(tmp_path_factory):
    """A real CT crop (1.5 mm, 32 x 48 x 48) degraded to 8 slabs of 6 mm (rect), and its file."""
    if not SHARED_CT.exists():
        pytest.skip("../shared/data (real CT) is not present")
    thin = read_volume(SHARED_CT)
    crop = Volume(thin.array[40:72, 30:78, 28:76].astype(np.float32), thin.spacing, thin.origin, thin.direction)
    slabs = simulate_thick_slices(crop, thickness=6.0, profile="rect")
    path = write_volume(slabs, tmp_path_factory.mktemp("thick") / "thick.nii.gz", dtype="float32")
    return slabs, path


def run(thick_volume: Volume, **options) -> tuple[Volume, dict]:
    return enhance_detailed(thick_volume, EnhanceOptions(target_spacing=1.5, model="diffusion", device="cpu",
                                                         **options))


def test_manifest_settings_round_trip_and_refusals(weights):
    spec = resolve_model("diffusion")
    assert spec.name == TINY and spec.kind is ModelKind.DIFFUSION and spec.diffusion.calibration_scale == SCALE
    assert resolve_model("default").name == "sr_unet_small_v3"  # the regression default stays
    assert spec_from_entry(spec.to_entry()) == spec
    entry = spec.to_entry()
    with pytest.raises(WeightsError, match="bad diffusion settings"):
        spec_from_entry({**entry, "diffusion": {**entry["diffusion"], "steps": 0}})
    with pytest.raises(WeightsError, match="required for kind diffusion"):
        spec_from_entry({k: v for k, v in entry.items() if k != "diffusion"})
    old = {k: v for k, v in entry.items() if k not in ("kind", "diffusion")}  # an older regression entry
    assert spec_from_entry(old).kind is ModelKind.REGRESSION and spec_from_entry(old).diffusion is None


@needs_data
def test_seeded_samples_consistency_and_calibrated_std(weights, thick):
    slabs, _ = thick
    one, d1 = run(slabs, samples=1, seed=7, steps=1)
    again, _ = run(slabs, samples=1, seed=7, steps=1)
    other, _ = run(slabs, samples=1, seed=8, steps=1)
    two, d2 = run(slabs, samples=2, seed=7, steps=1)
    np.testing.assert_array_equal(one.array, again.array)  # same seed: same voxels
    assert np.abs(one.array - other.array).max() > 1.0  # another seed: another sample
    assert not d1["uncertainty"].array.any()  # K = 1: std 0, OUT = the sample
    # sample 0 of K = 2 is the K = 1 sample (seeded by (seed, sample, window)); std = c * |a - b| / sqrt(2)
    second = 2.0 * two.array - one.array
    std = d2["uncertainty"].array
    np.testing.assert_allclose(std, SCALE * np.abs(one.array - second) / np.sqrt(2.0), atol=0.05)
    assert std.mean() > 0.5
    grid = through_plane_grid(slabs, 1.5)
    operator = SlabOperator.for_grid(grid, 6.0, "rect")
    for drawn in (one.array, other.array, second, two.array):
        assert consistency_rmse(drawn, slabs.array, operator) <= 2.0  # HU, inside the body (> -500 HU)
    # without the projection the samples are not consistent: the constraint is doing the work
    assert d2["diffusion"]["consistency_rmse_hu_max"] <= 2.0
    unc = d2["uncertainty"]
    assert unc.array.shape == two.array.shape and unc.geometry_dict() == two.geometry_dict()
    assert any("contains AI-generated detail (diffusion model" in f for f in two.findings)
    assert d2["diffusion"]["ai_generated"] is True and d2["diffusion"]["samples"] == 2


@needs_data
def test_cli_writes_mean_and_uncertainty_and_refuses_misuse(weights, thick, tmp_path, capsys):
    from ctsr_models.cli.enhance import main

    _, path = thick
    out, std_out = tmp_path / "out.nii.gz", tmp_path / "std.nii.gz"
    argv = [str(path), str(out), "--target-spacing", "1.5", "--device", "cpu", "--quiet"]
    assert main([*argv, "--model", "linear", "--samples", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--samples applies to diffusion models only" in err[0]
    assert main([*argv, "--uncertainty", str(std_out)]) == 2  # the default model is a regression
    assert "--uncertainty applies to diffusion models only" in capsys.readouterr().err
    assert main([*argv, "--model", "diffusion", "--uncertainty", str(tmp_path / "std.txt")]) == 2
    assert "unknown format '.txt'" in capsys.readouterr().err
    assert not out.exists()  # refused before any work
    assert main([*argv, "--model", "diffusion", "--samples", "2", "--steps", "2", "--seed", "3",
                 "--uncertainty", str(std_out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["diffusion"]["seed"] == 3 and report["uncertainty"] == str(std_out)
    mean, std = read_volume(out), read_volume(std_out, allow_non_ct=True)
    assert std.array.dtype == np.float32 and std.shape == mean.shape and std.spacing == mean.spacing
    assert std.array.max() > 0 and std.array.min() >= 0


@needs_data
def test_server_returns_the_mean_and_hands_out_the_uncertainty_once(weights, thick, tmp_path):
    import requests
    from server_fixture import running_server

    _, path = thick
    studies = tmp_path / "studies"
    studies.mkdir()

    def infer(url: str, params: dict) -> requests.Response:
        with path.open("rb") as f:
            return requests.post(f"{url}/infer/ct_super_resolution", params={"output": "image"},
                                 data={"params": json.dumps(params)}, files={"file": ("thick.nii.gz", f)}, timeout=300)

    with running_server(studies, env={"CTSR_WEIGHTS_DIR": str(weights)}) as server:
        base = {"model": "diffusion", "target_spacing": 1.5, "device": "cpu"}
        assert infer(server.url, {**base, "steps": 0}).status_code == 422
        assert infer(server.url, {**base, "samples": 99}).status_code == 422
        refused = infer(server.url, {"model": "linear", "target_spacing": 1.5, "samples": 2})
        assert refused.status_code == 422 and "diffusion models only" in refused.json()["detail"]
        answer = infer(server.url, {**base, "samples": 2, "steps": 2, "seed": 5})
        assert answer.status_code == 200, answer.text[:300]
        result = json.loads(answer.headers["X-CTSR-Result"])
        assert result["ai_generated"] is True and result["diffusion"]["samples"] == 2
        assert any("contains AI-generated detail" in f for f in result["findings"])
        (tmp_path / "mean.nrrd").write_bytes(answer.content)
        url = server.url + result["uncertainty"]["url"]
        first = requests.get(url, timeout=60)
        assert first.status_code == 200
        (tmp_path / "std.nrrd").write_bytes(first.content)
        assert requests.get(url, timeout=60).status_code == 404  # handed out once
        assert requests.get(f"{server.url}/ctsr/result/{'g' * 32}/uncertainty", timeout=60).status_code == 400
        assert not list(server.tmp.glob("ctsr_uncertainty_*"))  # removed after sending
    mean, std = read_volume(tmp_path / "mean.nrrd"), read_volume(tmp_path / "std.nrrd", allow_non_ct=True)
    assert std.array.dtype == np.float32 and std.shape == mean.shape
    np.testing.assert_allclose(std.spacing, mean.spacing)
    np.testing.assert_allclose(std.origin, mean.origin)
    assert std.array.max() > 0


@needs_data
def test_smoke_training_resumes_exactly(tmp_path):
    from ctsr_models.training import load_checkpoint, run as train

    config = REPO / "train" / "configs" / "sr_diffusion_smoke.yaml"
    fast = ["trainer.steps=3", "trainer.val_every=3", "trainer.ckpt_every=3", "data.patch_size=[16,16,16]",
            f"data.cache_dir={tmp_path / 'cache'}"]
    whole = train("sr_diffusion", config, out=tmp_path / "whole", overrides=fast)
    part = train("sr_diffusion", config, out=tmp_path / "part", overrides=fast, stop_at=1)
    assert part["step"] == 1 and part["completed"] is False
    resumed = train("sr_diffusion", None, resume=tmp_path / "part" / "checkpoints" / "last.pt")
    assert resumed["step"] == 3 and resumed["completed"] is True
    a, b = (load_checkpoint(tmp_path / name / "checkpoints" / "last.pt") for name in ("whole", "part"))
    for part_name in ("model", "ema"):
        assert a[part_name].keys() == b[part_name].keys()
        for key in a[part_name]:
            assert torch.equal(a[part_name][key], b[part_name][key]), f"{part_name}.{key} differs"
    assert not any(k.startswith("regression") for k in a["model"])  # the frozen conditioning model is not trained
    assert whole["val"] == resumed["val"]
    assert set(whole["val"]) >= {"psnr", "regression_psnr", "linear_psnr", "psnr_gain_vs_regression"}
    assert 20.0 < whole["val"]["regression_psnr"] < 80.0 and np.isfinite(whole["val"]["psnr"])
