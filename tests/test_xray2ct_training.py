"""The ``xray2ct`` training task: the smoke config end to end, the X2CT-GAN LIDC reader, refusals."""
from __future__ import annotations

import json
import math
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, shared
from ctsr_models.data.lidc_h5 import LidcCase, LidcConfig, read_split
from ctsr_models.io import InputError
from ctsr_models.nets import build_net
from ctsr_models.physics import ProjectionGeometry, VolumeGrid, drr
from ctsr_models.training import load_checkpoint, run
from sr_fixtures import synthetic_ct

SMOKE = REPO / "train" / "configs" / "xray2ct_smoke.yaml"
METRICS = ("psnr", "ssim", "mae_hu", "mae_hu_body", "proj_psnr", "mean_psnr", "mean_proj_psnr")


def test_smoke_config_trains_writes_a_checkpoint_and_validates(tmp_path):
    shared("ct/totalseg/aorta_report__test_result__models__ct_cropped.nii.gz")
    out = tmp_path / "run"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "train", "xray2ct", "--config", str(SMOKE), "--out", str(out),
                           f"data.cache_dir={tmp_path / 'cache'}"], cwd=REPO, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds, not wall time: the bound holds however busy the shared machine is (~15 s when idle)
    assert (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime) < 100
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] and summary["step"] == 6 and summary["val_sample_ids_per_rank"] == [[0]]
    assert all(math.isfinite(summary["val"][k]) for k in METRICS)
    assert 5 < summary["val"]["mean_psnr"] < 40 and summary["val"]["mean_proj_psnr"] < 60
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["task"] == "xray2ct" and state["config"]["setup"]["size"] == 32
    kwargs = state["config"]["model"]["kwargs"]
    assert kwargs["size"] == kwargs["detector_px"] == 32  # the kwargs alone rebuild the network
    net = build_net("xray2ct", **kwargs)
    net.load_state_dict(torch.load(out / "checkpoints" / "model_ema.pt", weights_only=True))
    assert json.loads(proc.stdout)["step"] == 6


def test_bad_configs_stop_with_one_line(tmp_path, capfd):
    from train.__main__ import main

    missing = tmp_path / "missing.nii.gz"
    assert main(["xray2ct", "--config", str(SMOKE), "--out", str(tmp_path / "a"), f"data.train.0.path={missing}"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: data.train[0]: data not found: {missing}"
    args = ["xray2ct", "--config", str(SMOKE), "--out", str(tmp_path / "b")]
    assert main([*args, "lidc_h5.root=/nonexistent/lidc"]) == 2
    assert capfd.readouterr().err.strip().splitlines()[-1] == "error: lidc_h5.root: data not found: /nonexistent/lidc"
    assert main(["xray2ct", "--config", str(SMOKE), "--out", str(tmp_path / "c"), "setup.sod=2000"]) == 2
    assert "need fov_mm > 0 and 0 < sod < sid" in capfd.readouterr().err
    assert main(["xray2ct", "--config", str(SMOKE), "--out", str(tmp_path / "d"), "model.kwargs.size=64"]) == 2
    assert "model.kwargs.size = 64 differs from setup.size = 32" in capfd.readouterr().err


# ----------------------------------------------------------------------------------------- LIDC files
FOV, N_CT, N_XRAY = 320.0, 40, 48


def _write_case(root, name: str, seed: int) -> np.ndarray:
    """A case in the X2CT-GAN layout: ct as (y, z, x) HU + 1024, DRRs of it at the LIDC geometry in 0..255."""
    import h5py

    hu = synthetic_ct((N_CT, N_CT, N_CT), seed=seed).astype(np.float32)
    hu[:, :, : N_CT // 3] = np.where(hu[:, :, : N_CT // 3] > -500, 400.0, -1000.0)  # break the left-right symmetry
    spacing = FOV / N_CT
    grid = VolumeGrid((N_CT,) * 3, (spacing,) * 3, (-(N_CT - 1) * spacing / 2,) * 3)
    folder = root / name
    folder.mkdir(parents=True)
    with h5py.File(folder / "ct_xray_data.h5", "w") as f:
        f["ct"] = np.clip(np.transpose(hu, (1, 0, 2)) + 1024, 0, 2500).astype(np.uint16)
        for key, view in (("xray1", "pa"), ("xray2", "ll")):
            g = ProjectionGeometry.standard(view, 949.0, 541.0, (N_XRAY, N_XRAY), 500.0 / N_XRAY)
            p = drr(hu, grid, g)
            f[key] = np.round(p / p.max() * 255).astype(np.uint8)
    return hu


@pytest.fixture(scope="module")
def lidc(tmp_path_factory):
    root = tmp_path_factory.mktemp("lidc")
    hu = _write_case(root / "data", "LIDC-IDRI-0001.2000.1", 7)
    _write_case(root / "data", "LIDC-IDRI-0002.2000.1", 8)
    (root / "train.txt").write_text("LIDC-IDRI-0001.2000.1\n")
    (root / "test.txt").write_text("LIDC-IDRI-0002.2000.1\n\n")
    return root, hu


def test_lidc_reader_orients_the_ct_and_agrees_with_its_xrays(lidc):
    root, hu = lidc
    cfg = LidcConfig(root=root / "data", train_split=root / "train.txt")
    (path,) = read_split(cfg.root, cfg.train_split)
    case = LidcCase(path, cfg)
    vol = case.volume()
    assert vol.shape == (N_CT,) * 3 and vol.spacing == pytest.approx((FOV / N_CT,) * 3)
    np.testing.assert_allclose(vol.array, np.clip(hu, -1024, 1476))
    assert np.mean(vol.origin) == pytest.approx(-(N_CT - 1) * FOV / N_CT / 2)
    frontal, lateral = case.radiographs(32)
    assert frontal.shape == lateral.shape == (32, 32)
    good = case.consistency(32)
    assert min(good.values()) > 25
    wrong = LidcCase(path, LidcConfig(root=cfg.root, train_split=cfg.train_split, xray_flip=["cols"])).consistency(32)
    assert wrong["frontal"] < good["frontal"] - 5
    with pytest.raises(InputError, match="split file not found"):
        read_split(cfg.root, root / "nope.txt")
    (root / "bad.txt").write_text("LIDC-IDRI-9999\n")
    with pytest.raises(InputError, match="1 of 1 cases of bad.txt have no ct_xray_data.h5"):
        read_split(cfg.root, root / "bad.txt")


def test_training_on_lidc_files_uses_their_xrays(lidc, tmp_path):
    root, _ = lidc
    cfg = {
        "trainer": {"steps": 2, "batch_size": 1, "device": "cpu", "num_workers": 0, "val_every": 2,
                    "ckpt_every": 2, "tensorboard": False, "warmup_steps": 1},
        "data": {"cache_dir": str(tmp_path / "cache")},
        "setup": {"size": 16, "detector_px": 16},
        "model": {"name": "xray2ct", "kwargs": {"features_2d": [4, 8], "features_3d": [4, 8]}},
        "loss": {"proj_px": 8},
        "lidc_h5": {"root": str(root / "data"), "train_split": str(root / "train.txt"),
                    "val_split": str(root / "test.txt")},
    }
    path = tmp_path / "lidc.yaml"
    path.write_text(yaml.safe_dump(cfg))
    summary = run("xray2ct", path, out=tmp_path / "run")
    assert summary["completed"] and all(math.isfinite(summary["val"][k]) for k in METRICS)
    assert summary["val_sample_ids_per_rank"] == [[0]]
