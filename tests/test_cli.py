"""The console scripts, run as a user runs them, on real CT."""
from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import run_cli, shared
from ctsr_models.io import read_volume, write_volume

SCRIPTS = ["ctsr-info", "ctsr-degrade", "ctsr-metrics", "ctsr-sample"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_help(script):
    proc = run_cli(script, "--help")
    assert proc.returncode == 0 and "usage:" in proc.stdout


def test_info_on_real_dicom_series():
    report = json.loads(run_cli("ctsr-info", shared("ct/chest_4dct_phase00_dicom"), check=True).stdout)
    assert report["regular"] is True
    geo = report["geometry"]
    assert geo["size_xyz"] == [512, 512, 141]
    np.testing.assert_allclose(geo["spacing_xyz_mm"], [0.9765625, 0.9765625, 2.0], atol=1e-6)
    assert report["hu"]["min"] <= -1000 and report["hu"]["max"] > 1000
    assert len(report["series"]) == 1


def test_info_reports_a_tilted_series_instead_of_guessing():
    report = json.loads(run_cli("ctsr-info", shared("dicom_edge/dcm_qa_ct/GE_head_tilt18.5_varspacing"),
                                check=True).stdout)
    assert report["regular"] is False
    assert "tilt" in report["message"] and "--resample-irregular" in report["message"]
    assert "geometry" not in report


@pytest.fixture(scope="module")
def chest_crop(tmp_path_factory):
    """A 160x128x60 crop of the real chest CT (2 mm slices), as NIfTI, with its true geometry."""
    chest = read_volume(shared("ct/chest_4dct_phase00_dicom"))
    k0, j0, i0 = 40, 150, 180
    crop = chest.replace(array=chest.array[k0:k0 + 60, j0:j0 + 128, i0:i0 + 160].copy(),
                         origin=tuple(chest.index_to_physical([i0, j0, k0])))
    path = tmp_path_factory.mktemp("chest") / "thin.nii.gz"
    write_volume(crop, path)
    return path


def test_degrade_then_metrics_reproduce_by_hand(chest_crop, tmp_path):
    thick_path = tmp_path / "thick.nii.gz"
    proc = run_cli("ctsr-degrade", chest_crop, thick_path, "--thickness", "6", check=True)
    assert json.loads(proc.stdout)["geometry"]["spacing_xyz_mm"][2] == pytest.approx(6.0)
    thin, thick = read_volume(chest_crop), read_volume(thick_path)

    # 6 mm rect slabs at 6 mm from 2 mm slices: each slab is the mean of 3 thin slices,
    # centred on the middle one.
    by_hand = thin.array.reshape(20, 3, 128, 160).mean(axis=1)
    assert np.abs(thick.array - by_hand).max() <= 0.5 + 1e-3
    np.testing.assert_allclose(thick.origin, thin.index_to_physical([0, 0, 1]), atol=1e-4)
    assert thick.slice_thickness == pytest.approx(6.0)

    metrics = json.loads(run_cli("ctsr-metrics", thick_path, chest_crop, "--border-mm", "6", check=True).stdout)
    # By hand: linear interpolation along z between slab centres (thin slices 1, 4, ..., 58),
    # scoring thin slices 4..55 (centres inside the stack, 6 mm border at each end).
    z_thin, z_thick = np.arange(60) * 2.0, 2.0 + np.arange(20) * 6.0
    scored = (z_thin >= z_thick[0] + 6 - 1e-6) & (z_thin <= z_thick[-1] - 6 + 1e-6)
    w = np.interp(z_thin[scored], z_thick, np.arange(20))
    lo, frac = np.floor(w).astype(int), (w - np.floor(w))[:, None, None]
    interp = thick.array[lo] * (1 - frac) + thick.array[np.minimum(lo + 1, 19)] * frac
    pred01 = np.clip((interp + 1024) / 4095, 0, 1)
    ref01 = np.clip((thin.array[scored] + 1024) / 4095, 0, 1)
    assert metrics["n_slices_scored"] == int(scored.sum())
    assert metrics["psnr"] == pytest.approx(peak_signal_noise_ratio(ref01, pred01, data_range=1.0), abs=1e-3)
    ssim = structural_similarity(ref01, pred01, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)
    assert metrics["ssim"] == pytest.approx(ssim, abs=1e-4)
    assert 20 < metrics["psnr"] < metrics["psnr_1000"] + 20
    assert set(metrics) >= {"psnr", "ssim", "ssim2d", "mae_hu_body", "psnr_1000"}


@pytest.mark.parametrize("script, extra", [("ctsr-info", []), ("ctsr-degrade", ["--thickness", "5"]),
                                           ("ctsr-metrics", [])])
def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, script, extra):
    corrupt = tmp_path / "scan.nii.gz"
    corrupt.write_bytes(b"this is not a scan" * 10)
    out = tmp_path / "out.nii.gz"
    args = {"ctsr-info": [corrupt], "ctsr-degrade": [corrupt, out], "ctsr-metrics": [corrupt, corrupt]}[script]
    proc = run_cli(script, *args, *extra)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "corrupt" in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz"]


def test_debug_shows_the_traceback(tmp_path):
    proc = run_cli("ctsr-info", tmp_path / "missing.nii.gz", "--debug")
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "input not found" in proc.stderr


def test_degrade_refuses_to_overwrite_its_input_and_bad_numbers(chest_crop):
    proc = run_cli("ctsr-degrade", chest_crop, chest_crop, "--thickness", "5")
    assert proc.returncode == 2 and "is the input" in proc.stderr
    proc = run_cli("ctsr-degrade", chest_crop, chest_crop.with_name("x.nii.gz"), "--thickness", "-5")
    assert proc.returncode == 2 and "greater than 0" in proc.stderr
    assert not chest_crop.with_name("x.nii.gz").exists()


def test_degrade_writes_a_dicom_series_to_a_folder(chest_crop, tmp_path):
    out = tmp_path / "thick_dicom"
    run_cli("ctsr-degrade", chest_crop, out, "--thickness", "4", check=True)
    back, ref = read_volume(out), read_volume(chest_crop)
    assert back.shape == (30, 128, 160)
    np.testing.assert_allclose(back.spacing, (*ref.spacing[:2], 4.0), atol=1e-4)
    np.testing.assert_allclose(back.origin, ref.index_to_physical([0, 0, 0.5]), atol=1e-3)
