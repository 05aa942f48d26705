"""Latent diffusion denoiser: the network contract, two-phase training on real CT (autoencoder bitwise frozen
through phase 1 then moving, its smaller learning rate, exact resume across the switch), the whole-volume
pipeline (seeded determinism, K = 1 gives std 0, geometry), ``ctsr-denoise`` with the diffusion options and
their refusals.

The model used is the smoke run's checkpoint shipped into a temporary ``$CTSR_WEIGHTS_DIR``: these tests check
the machinery, not the model's quality (that is ``docs/models/ldm_denoise_v1.md``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared
from ctsr_models.inference import DiffusionSettings, ModelKind
from ctsr_models.inference.ldm_denoise import LDMDenoiseOptions, denoise_detailed, ldm_denoise
from ctsr_models.inference.models import SHIPPED_WEIGHTS, ship_model
from ctsr_models.io import InputError, Volume, read_volume, write_volume
from ctsr_models.nets import build_net
from ctsr_models.training import load_checkpoint, run
from ctsr_models.training.optim import WarmupCosine
from ctsr_models.training.trainer import seed_everything
from test_training_resume import _assert_same_state

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "train" / "configs" / "ldm_denoise_smoke.yaml"
CROP = "ct/totalseg/aorta_report__test_result__models__ct_cropped.nii.gz"
AE_KWARGS = {"channels": [8, 16], "latent_channels": 4, "latent_momentum": 0.0}
N = 3  # the autoencoder is frozen for optimizer steps 0 .. N-1 (the smoke config)
STEPS = 6
SCHEDULER = {"num_train_timesteps": 15, "kappa": 0.1}


def _autoencoder_state() -> dict[str, torch.Tensor]:
    seed_everything(7)
    net = build_net("autoencoder_kl", **AE_KWARGS)
    net.latent_scale.fill_(1.5)  # a scale other than the default 1 must survive training too
    return net.state_dict()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, object]:
    """An autoencoder file, the uninterrupted smoke run (a checkpoint after every step), its EMA weights
    shipped as ``tiny_ldm`` (diffusion, task denoise) into a temporary weights folder."""
    shared(CROP)
    root = tmp_path_factory.mktemp("ldm")
    torch.save(_autoencoder_state(), root / "ae.pt")
    overrides = [f"data.cache_dir={root / 'cache'}", f"init.autoencoder={root / 'ae.pt'}", "trainer.ckpt_every=1",
                 f"trainer.keep_checkpoints={STEPS}"]
    summary = run("ldm_denoise", SMOKE, out=root / "whole", overrides=overrides)
    assert summary["completed"] and summary["step"] == STEPS
    models = root / "models"
    models.mkdir()
    shutil.copy(SHIPPED_WEIGHTS / "models.json", models / "models.json")  # the regression denoiser, for refusals
    shutil.copy(SHIPPED_WEIGHTS / "denoise_unet_v1.pt", models / "denoise_unet_v1.pt")
    settings = DiffusionSettings(scheduler="resshift", scheduler_kwargs=SCHEDULER, steps=2, samples=2,
                                 regression_model=None)
    ship_model(root / "whole" / "checkpoints" / "last.pt", "tiny_ldm", description="smoke run", card="",
               roi_size=(4, 32, 32), folder=models, task="denoise", kind=ModelKind.DIFFUSION, diffusion=settings)
    return {"root": root, "overrides": overrides, "summary": summary, "models": models}


def _ckpt(trained: dict, step: int) -> dict:
    return load_checkpoint(trained["root"] / "whole" / "checkpoints" / f"step_{step:07d}.pt")


# ---------------------------------------------------------------- the network
def test_untrained_denoiser_returns_the_low_dose_latent_and_checks_shapes():
    net = build_net("ldm_denoiser", autoencoder=AE_KWARGS, channels=[8, 16])
    assert (net.latent_channels, net.factor, net.multiple) == (4, 2, 4)
    x = torch.randn(2, 1, 4, 16, 16) * 0.3
    z = net.encode(x)
    assert z.shape == (2, 4, 2, 8, 8) and net.decode(z).shape == x.shape
    t = torch.tensor([0, 14])
    assert torch.equal(net(torch.randn_like(z), t, z), z)  # MONAI zero-initialises the last convolution
    with pytest.raises(ValueError, match="multiples of 2"):
        net(torch.zeros(1, 4, 3, 8, 8), torch.zeros(1, dtype=torch.long), torch.zeros(1, 4, 3, 8, 8))
    with pytest.raises(ValueError, match="must be multiples of norm_num_groups"):
        build_net("ldm_denoiser", autoencoder=AE_KWARGS, channels=[12, 16])


# ---------------------------------------------------------------- two-phase training
def test_smoke_run_validates_sample_input_and_reconstruction(trained):
    val = trained["summary"]["val"]
    assert set(val) == {"psnr", "input_psnr", "psnr_gain", "recon_psnr"}
    assert all(np.isfinite(v) for v in val.values())
    assert 25.0 < val["input_psnr"] < 70.0 and val["psnr_gain"] == pytest.approx(val["psnr"] - val["input_psnr"])


def test_autoencoder_is_bitwise_frozen_through_phase_1_then_moves(trained):
    init = _autoencoder_state()
    states = {step: _ckpt(trained, step) for step in range(1, STEPS + 1)}
    for step in range(1, N + 1):
        for key, value in init.items():
            assert torch.equal(states[step]["model"][f"autoencoder.{key}"], value), f"{key} moved at step {step}"
            assert torch.equal(states[step]["ema"][f"module.autoencoder.{key}"], value), f"EMA {key} at step {step}"
        assert not torch.equal(states[step]["model"]["denoiser.out.2.conv.weight"],
                               states[step - 1]["model"]["denoiser.out.2.conv.weight"] if step > 1 else
                               torch.zeros_like(states[step]["model"]["denoiser.out.2.conv.weight"]))
    weights = [k for k, v in init.items() if v.ndim >= 2]
    still = [k for k in weights if torch.equal(states[N + 1]["model"][f"autoencoder.{k}"], init[k])]
    assert still == ["net.quant_conv_log_sigma.conv.weight"]  # every weight but the unused posterior spread trains
    assert float(states[STEPS]["model"]["autoencoder.latent_scale"]) == 1.5  # a buffer, not trained


def test_autoencoder_group_runs_at_a_tenth_of_the_learning_rate(trained):
    state = _ckpt(trained, N + 1)
    groups = state["optimizer"]["param_groups"]
    assert [(g["name"], g["lr_mult"]) for g in groups] == [("default", 1.0)] * 2 + [("autoencoder", 0.1)] * 2
    factor = WarmupCosine(1, STEPS, 0.05)(N + 1)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3 * factor] * 2 + [1e-4 * factor] * 2, rel=1e-12)
    n_denoiser = len(build_net("ldm_denoiser", autoencoder=AE_KWARGS, channels=[8, 16]).denoiser.state_dict())
    assert sum(len(g["params"]) for g in groups[:2]) == n_denoiser


@pytest.mark.parametrize("stop", [N - 1, N + 1])
def test_resume_across_the_phase_switch_equals_the_uninterrupted_run(trained, tmp_path, stop):
    part = run("ldm_denoise", SMOKE, out=tmp_path / "part", overrides=trained["overrides"], stop_at=stop)
    assert part["step"] == stop and not part["completed"]
    resumed = run("ldm_denoise", None, resume=tmp_path / "part" / "checkpoints" / "last.pt")
    assert resumed["step"] == STEPS and resumed["completed"]
    whole = load_checkpoint(trained["root"] / "whole" / "checkpoints" / "last.pt")
    _assert_same_state(whole, load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt"))
    assert resumed["param_sha256_per_rank"] == trained["summary"]["param_sha256_per_rank"]
    assert resumed["val"] == trained["summary"]["val"]


# ---------------------------------------------------------------- whole-volume inference, CLI, server
@pytest.fixture(scope="module")
def weights(trained):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CTSR_WEIGHTS_DIR", str(trained["models"]))
        yield trained["models"]


@pytest.fixture(scope="module")
def low_dose(tmp_path_factory) -> tuple[Volume, Path]:
    """A real CT crop (6 x 40 x 40 voxels: z not a multiple of the 4-slice window) and its file."""
    ct = read_volume(shared(CROP))
    crop = Volume(ct.array[40:46, 30:70, 28:68].astype(np.float32), ct.spacing, ct.origin, ct.direction)
    return crop, write_volume(crop, tmp_path_factory.mktemp("low") / "low.nii.gz", dtype="int16")


def _denoise(volume: Volume, **options) -> tuple[Volume, Volume, dict]:
    return ldm_denoise(volume, LDMDenoiseOptions(model="diffusion", device="cpu", **options))


def test_seeded_samples_mean_std_and_geometry(weights, low_dose):
    volume, _ = low_dose
    before = volume.array.copy()
    mean, std, details = _denoise(volume, samples=2, steps=2, seed=3)
    again, std_again, _ = _denoise(volume, samples=2, steps=2, seed=3)
    other, _, _ = _denoise(volume, samples=2, steps=2, seed=4)
    np.testing.assert_array_equal(mean.array, again.array)
    np.testing.assert_array_equal(std.array, std_again.array)
    assert np.abs(mean.array - other.array).max() > 0.1  # another seed, other samples
    assert mean.shape == std.shape == volume.shape and mean.geometry_dict() == volume.geometry_dict()
    assert std.geometry_dict() == volume.geometry_dict() and std.array.dtype == np.float32
    assert 0.01 < float(std.array.mean()) and std.array.min() >= 0
    np.testing.assert_array_equal(volume.array, before)  # input untouched
    assert details["ai_generated"] and details["samples"] == 2 and details["steps"] == 2 and details["seed"] == 3
    assert any("contains AI-generated detail (diffusion model tiny_ldm, 2 samples, 2 steps); uncertainty = std "
               "over samples (not calibrated)" in f for f in mean.findings)
    one, std_one, _ = _denoise(volume, samples=1, steps=2, seed=3)
    assert float(np.abs(std_one.array).max()) == 0.0 and np.isfinite(one.array).all()


def test_sampling_options_are_checked_and_refused_for_a_regression_model(weights, low_dose):
    volume, _ = low_dose
    with pytest.raises(InputError, match="steps must be a whole number from 1 to 50"):
        _denoise(volume, steps=0)
    with pytest.raises(InputError, match="num_inference_steps"):
        _denoise(volume, steps=20)  # more than the scheduler's 15 timesteps
    with pytest.raises(InputError, match="samples applies to diffusion models only"):
        denoise_detailed(volume, LDMDenoiseOptions(model="denoise_unet_v1", device="cpu", samples=2))
    result, details = denoise_detailed(volume, LDMDenoiseOptions(model="default", device="cpu"))
    assert details == {"model": "denoise_unet_v1"} and result.shape == volume.shape


def test_cli_is_deterministic_writes_the_std_on_the_input_grid_and_refuses_misuse(weights, low_dose, tmp_path,
                                                                                 capsys):
    from ctsr_models.cli.denoise import main

    volume, path = low_dose
    out, std_out = tmp_path / "out.nii.gz", tmp_path / "std.nii.gz"
    argv = [str(path), str(out), "--device", "cpu", "--quiet"]
    assert main([*argv, "--model", "denoise_unet_v1", "--samples", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--samples applies to diffusion models only" in err[0]
    assert main([*argv, "--uncertainty", str(std_out)]) == 2  # the default model is the regression one
    assert "--uncertainty applies to diffusion models only" in capsys.readouterr().err
    assert main([*argv, "--model", "diffusion", "--uncertainty", str(tmp_path / "std.txt")]) == 2
    assert "unknown format '.txt'" in capsys.readouterr().err
    assert main([*argv, "--model", "diffusion", "--uncertainty", str(out)]) == 2
    assert "must name another file than OUT" in capsys.readouterr().err
    assert not out.exists()  # refused before any work
    run_args = [*argv, "--model", "tiny_ldm", "--samples", "2", "--steps", "2", "--seed", "5", "--dtype", "float32"]
    assert main([*run_args, "--uncertainty", str(std_out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "tiny_ldm" and report["uncertainty"] == str(std_out)
    assert report["diffusion"]["seed"] == 5 and report["diffusion"]["ai_generated"] is True
    first = read_volume(out).array.copy()
    assert main([*run_args, "--overwrite"]) == 0
    capsys.readouterr()
    np.testing.assert_array_equal(read_volume(out).array, first)  # same seed, same voxels
    mean, std = read_volume(out), read_volume(std_out, allow_non_ct=True)
    assert std.array.dtype == np.float32 and std.shape == volume.shape
    assert std.geometry_dict() == mean.geometry_dict() == read_volume(path).geometry_dict()
    assert std.array.max() > 0 and std.array.min() >= 0


def test_server_round_trip_returns_the_mean_and_the_uncertainty(weights, low_dose, tmp_path):
    import requests
    from server_fixture import running_server

    _, path = low_dose
    studies = tmp_path / "studies"
    studies.mkdir()

    def infer(url: str, params: dict) -> requests.Response:
        with path.open("rb") as f:
            return requests.post(f"{url}/infer/ct_denoise", params={"output": "image"},
                                 data={"params": json.dumps(params)}, files={"file": ("low.nii.gz", f)}, timeout=300)

    with running_server(studies, env={"CTSR_WEIGHTS_DIR": str(weights)}) as server:
        base = {"model": "diffusion", "device": "cpu"}
        assert infer(server.url, {**base, "steps": 0}).status_code == 422
        assert infer(server.url, {**base, "samples": 99}).status_code == 422
        assert infer(server.url, {**base, "seed": -1}).status_code == 422
        refused = infer(server.url, {"model": "denoise_unet_v1", "samples": 2})
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
    mean, std = read_volume(tmp_path / "mean.nrrd"), read_volume(tmp_path / "std.nrrd", allow_non_ct=True)
    cli_mean, cli_std, _ = _denoise(read_volume(path), samples=2, steps=2, seed=5)
    assert std.array.dtype == np.float32 and std.shape == mean.shape == cli_mean.shape
    np.testing.assert_allclose(std.spacing, mean.spacing)
    np.testing.assert_allclose(std.origin, mean.origin)
    np.testing.assert_allclose(std.array, cli_std.array, atol=1e-3)  # the same inference as the CLI
    np.testing.assert_array_equal(mean.array, np.round(cli_mean.array).astype(np.int16))
