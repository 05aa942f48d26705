"""Low-dose denoising, regression baseline: the dose-pair cache (deterministic, simulated once, noisier at
lower dose), the ``denoise`` training task (smoke config on real CT: runs, validates, resumes exactly), the
whole-volume pipeline (geometry, dtype, input untouched, sliding window equal to one network pass) and
``ctsr-denoise`` (JSON out, bad input one line and exit 2).

The model used here is the smoke run's checkpoint shipped into a temporary ``$CTSR_WEIGHTS_DIR``, so these
tests check the pipeline, not the model's quality (that is ``docs/models/denoise_unet_v1.md``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import shared
from ctsr_models.data import VolumeCache, VolumeRef
from ctsr_models.data.dose_pairs import DoseSlabSettings, build_dose_slabs, slab_starts
from ctsr_models.inference import DenoiseOptions, ModelKind, denoise
from ctsr_models.inference.denoise import denoise_array, neighbour_stack
from ctsr_models.inference.models import ship_model
from ctsr_models.io import read_volume
from ctsr_models.training import load_checkpoint, run
from test_training_resume import _assert_same_state

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "train" / "configs" / "denoise_smoke.yaml"
CROP = "ct/totalseg/aorta_report__test_result__models__ct_cropped.nii.gz"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """The smoke run (6 steps) on real CT crops, its cache, and its EMA weights shipped as ``tiny_denoise``."""
    shared(CROP)
    root = tmp_path_factory.mktemp("denoise")
    cache = root / "cache"
    summary = run("denoise", SMOKE, out=root / "whole", overrides=[f"data.cache_dir={cache}"])
    assert summary["completed"] and summary["step"] == 6
    models = root / "models"
    models.mkdir()
    ship_model(root / "whole" / "checkpoints" / "last.pt", "tiny_denoise", description="smoke run", card="",
               roi_size=(1, 48, 48), folder=models, task="denoise", kind=ModelKind.REGRESSION)
    return {"root": root, "cache": cache, "models": models, "summary": summary}


def test_dose_cache_is_deterministic_simulated_once_and_noisier_at_lower_dose(tmp_path):
    volume = VolumeCache(tmp_path / "vol").load(VolumeRef(shared(CROP)))
    settings = DoseSlabSettings(doses=(0.1, 0.5), slabs_per_volume=1, slab_slices=3, seed=7)
    assert slab_starts((0, 100), 3, 7) == [0, 46, 93] and slab_starts((0, 5), 2, 7) == []
    [slab] = build_dose_slabs(volume, (40, 60), settings, tmp_path / "pairs")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "pairs").iterdir()}
    assert len(stamps) == 3  # standard + two doses
    [again] = build_dose_slabs(volume, (40, 60), settings, tmp_path / "pairs")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "pairs").iterdir()} == stamps  # not simulated again
    [other] = build_dose_slabs(volume, (40, 60), DoseSlabSettings((0.1, 0.5), 1e5, 1, 3, seed=8), tmp_path / "b")
    std = slab.load().astype(np.float64)
    assert np.array_equal(std, np.asarray(volume.array[40:43], dtype=np.float64))
    assert np.array_equal(again.load(0.1), slab.load(0.1)) and not np.array_equal(other.load(0.1), slab.load(0.1))
    body = std > -500
    noise = {d: slab.load(d).astype(np.float64) - std for d in (0.1, 0.5)}
    sd = {d: noise[d][body].std() for d in noise}
    assert 10 < sd[0.5] < sd[0.1] < 200, sd
    assert sd[0.1] / sd[0.5] == pytest.approx(3.0, rel=0.25)  # sqrt((1-d)/d): sqrt(9) / sqrt(1) = 3
    assert abs(noise[0.1][body].mean()) < 3.0  # zero-mean noise: HU kept


def test_smoke_training_validates_against_the_low_dose_input(trained):
    val = trained["summary"]["val"]
    assert set(val) == {"psnr", "ssim2d", "input_psnr", "input_ssim2d", "psnr_gain"}
    assert 25 < val["input_psnr"] < 70 and 0 < val["ssim2d"] <= 1
    assert val["psnr_gain"] == pytest.approx(val["psnr"] - val["input_psnr"])


def test_stop_and_resume_equals_the_uninterrupted_run(trained):
    root = trained["root"]
    over = [f"data.cache_dir={trained['cache']}"]
    part = run("denoise", SMOKE, out=root / "part", overrides=over, stop_at=3)
    assert part["step"] == 3 and part["completed"] is False
    resumed = run("denoise", None, resume=root / "part" / "checkpoints" / "last.pt")
    assert resumed["step"] == 6 and resumed["completed"] is True
    _assert_same_state(load_checkpoint(root / "whole/checkpoints/last.pt"),
                       load_checkpoint(root / "part/checkpoints/last.pt"))
    assert resumed["val"] == trained["summary"]["val"]


def test_sliding_window_equals_one_network_pass_and_edges_repeat_slices():
    from ctsr_models.nets import build_net

    torch.manual_seed(0)
    net = build_net("denoise_unet", in_slices=3, features=[4, 8]).eval()
    with torch.no_grad():
        net.head.weight.normal_(0, 0.1)
    hu = np.random.default_rng(0).normal(0, 50, (5, 20, 24)).astype(np.float32)
    stack = neighbour_stack(hu, 0, 5, 3)
    assert stack.shape == (5, 3, 20, 24)
    np.testing.assert_array_equal(stack[0, 0], stack[0, 1])  # slice -1 repeats slice 0
    np.testing.assert_array_equal(stack[4, 2], stack[4, 1])
    whole = denoise_array(hu, net, torch.device("cpu"), (20, 24), DenoiseOptions(slices_per_chunk=2))
    with torch.no_grad():
        direct = net(torch.from_numpy(stack))[:, 0].numpy() * 1000.0
    np.testing.assert_allclose(whole, direct, atol=1e-3)
    assert np.abs(whole - hu).max() > 1.0  # the network changed the slices


def test_denoise_keeps_geometry_and_input_and_says_ai(trained, monkeypatch):
    monkeypatch.setenv("CTSR_WEIGHTS_DIR", str(trained["models"]))
    volume = read_volume(shared(CROP))
    volume = volume.replace(array=volume.array[50:62])
    before = volume.array.copy()
    result = denoise(volume, DenoiseOptions(device="cpu"))
    assert np.array_equal(volume.array, before) and result.array.dtype == np.float32
    assert result.shape == volume.shape and result.geometry_dict() == volume.geometry_dict()
    assert result.findings[-1].startswith("denoised by AI model tiny_denoise")
    diff = np.abs(result.array - volume.array)
    assert 0 < diff.mean() < 100  # a few steps of training: a small change, not a different image


def cli(*args: str | Path, models: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "CTSR_WEIGHTS_DIR": str(models)}
    return subprocess.run([str(BIN / "ctsr-denoise"), *map(str, args), "--quiet"], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


def test_cli_writes_the_pipeline_voxels_and_reports_json(trained, tmp_path, monkeypatch):
    src = read_volume(shared(CROP))
    sitk_img = sitk.ReadImage(str(shared(CROP)))[:, :, 50:58]
    sitk.WriteImage(sitk_img, str(tmp_path / "in.nii.gz"))
    proc = cli(tmp_path / "in.nii.gz", tmp_path / "out.nrrd", "--device", "cpu", "--dtype", "float32",
               models=trained["models"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["model"] == "tiny_denoise" and "denoised by AI model tiny_denoise" in report["findings"][-1]
    out = sitk.ReadImage(str(tmp_path / "out.nrrd"))
    np.testing.assert_allclose(out.GetSpacing(), sitk_img.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(out.GetOrigin(), sitk_img.GetOrigin(), atol=1e-4)
    monkeypatch.setenv("CTSR_WEIGHTS_DIR", str(trained["models"]))
    expected = denoise(src.replace(array=src.array[50:58]), DenoiseOptions(device="cpu")).array
    np.testing.assert_allclose(sitk.GetArrayFromImage(out), expected, atol=1e-3)


@pytest.mark.parametrize("case, words", [
    ("missing", "not found"),
    ("model", "unknown denoise model 'nope'"),
    ("text", ""),
])
def test_bad_input_is_one_line_exit_2_and_nothing_is_written(trained, tmp_path, case, words):
    inp = tmp_path / "in.nii.gz"
    args: list[str | Path] = [inp, tmp_path / "out.nrrd"]
    if case == "model":
        sitk.WriteImage(sitk.ReadImage(str(shared(CROP)))[:, :, :4], str(inp))
        args += ["--model", "nope"]
    elif case == "text":
        inp = tmp_path / "notes.nii.gz"
        inp.write_text("not an image")
        args[0] = inp
    proc = cli(*args, models=trained["models"])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("ctsr-denoise: error:"), proc.stderr
    assert words in lines[0]
    assert not (tmp_path / "out.nrrd").exists()


def test_shipped_denoiser_loads_and_lowers_noise_on_the_held_out_chest():
    """``denoise_unet_v1`` (default of task ``denoise``): checksum-verified, and on two slices of the held-out
    chest at a simulated 25 % dose its output is closer to standard dose than the low-dose input."""
    from ctsr_models.inference.models import read_manifest
    from ctsr_models.metrics.image_metrics import psnr
    from ctsr_models.physics.dose import DoseSettings, simulate_low_dose

    specs, default = read_manifest(task="denoise")
    assert default == "denoise_unet_v1" and specs[default].kind is ModelKind.REGRESSION
    ref = read_volume(shared("ct/pyradiomics_lung1/lung1_image.nrrd"))
    ref = ref.replace(array=ref.array[24:26].astype(np.float32))
    low = simulate_low_dose(ref, DoseSettings(dose=0.25), seed=5)
    out = denoise(low, DenoiseOptions(device="cpu"))
    assert psnr(out.array, ref.array) > psnr(low.array, ref.array) + 0.5
    body = ref.array > -500
    assert (out.array - ref.array)[body].std() < 0.9 * (low.array - ref.array)[body].std()
