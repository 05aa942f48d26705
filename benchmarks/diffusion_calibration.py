"""Calibrate a trained ``sr_diffusion`` checkpoint's uncertainty and score it beside regression and linear.

What ``docs/models/sr_diffusion_resshift_v1.md`` reports comes from this script:
    1. The checkpoint is shipped as a diffusion model into a scratch weights folder (calibration scale 1).
    2. Calibration: three 24x96x96 crops of the chest 4D-CT's held-out slices (113-140, 2 mm), simulated
       6 mm rect slabs, enhanced back to 2 mm with K samples; one conformal scale factor ``c`` is fitted on
       the body voxels (:func:`ctsr_models.metrics.calibration.fit_scale`) for the stated coverage.
    3. Test: two 48x96x96 crops of the aorta CT (another patient, 1.5 mm), 6 mm slabs: coverage of
       ``mean +- z * c * std``, block Spearman of std against error, PSNR/SSIM/MAE of the diffusion mean, the
       regression model it conditions on, and linear interpolation, one slab left out at each end.

Usage::

    python benchmarks/diffusion_calibration.py CHECKPOINT OUT_DIR [--samples 3] [--steps 2] [--coverage 0.9]

``OUT_DIR/calibration.json`` receives the numbers; ship the model with the printed ``calibration_scale``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ctsr_models.inference import DiffusionSettings, EnhanceOptions, ModelKind, enhance_detailed
from ctsr_models.inference.models import SHIPPED_WEIGHTS, ship_model
from ctsr_models.io import Volume, read_volume
from ctsr_models.metrics import evaluate_arrays
from ctsr_models.metrics.calibration import Calibration, block_spearman, coverage, fit_scale
from ctsr_models.physics.thick_slice import simulate_thick_slices

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CHEST = DATA / "ct" / "chest_4dct_phase00_dicom"
AORTA = DATA / "ct" / "totalseg" / "aorta_report__test_result__models__ct_cropped.nii.gz"
METHODS = ("diffusion", "sr_unet_small_v3", "linear")
SETTINGS = dict(scheduler="resshift", scheduler_kwargs={"num_train_timesteps": 15, "kappa": 0.2}, steps=2, samples=3,
                regression_model="sr_unet_small_v3")
SLAB_MM = 6.0
BODY_HU = -500.0


def ship_for_calibration(checkpoint: Path, folder: Path) -> None:
    """A weights folder with the shipped models plus the checkpoint as the diffusion model ``cal``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("models.json", "sr_unet_small_v3.pt"):
        shutil.copy(SHIPPED_WEIGHTS / name, folder / name)
    ship_model(checkpoint, "cal", description="calibration run", card="-", roi_size=(24, 96, 96), folder=folder,
               kind=ModelKind.DIFFUSION, diffusion=DiffusionSettings(**SETTINGS))
    os.environ["CTSR_WEIGHTS_DIR"] = str(folder)


def crops(volume: Volume, z0: int, nz: int, corners: list[tuple[int, int]]) -> Iterator[Volume]:
    """96x96 in-plane crops of ``nz`` slices from slice ``z0`` (same spacing; geometry not needed here)."""
    for y0, x0 in corners:
        array = volume.array[z0:z0 + nz, y0:y0 + 96, x0:x0 + 96].astype(np.float32)
        yield Volume(array, volume.spacing, volume.origin, volume.direction)


def enhance_all(truth: Volume, samples: int, steps: int) -> dict[str, tuple[np.ndarray, Volume | None, float, Any]]:
    """Every method on the simulated slabs of ``truth``: array, uncertainty volume, seconds, diffusion report."""
    slabs = simulate_thick_slices(truth, thickness=SLAB_MM, profile="rect")
    out = {}
    for model in METHODS:
        extra = {"samples": samples, "steps": steps, "seed": 0} if model == "diffusion" else {}
        start = time.perf_counter()
        options = EnhanceOptions(target_spacing=truth.spacing[2], model=model, device="cpu", **extra)
        result, details = enhance_detailed(slabs, options)
        out[model] = (result.array, details.get("uncertainty"), time.perf_counter() - start, details.get("diffusion"))
    return out


def collect(volumes: Iterator[Volume], samples: int, steps: int) -> dict[str, Any]:
    """Truth, mean and std of the scored voxels of every crop, with per-method scores and block Spearman."""
    truth, mean, std, rho = [], [], [], []
    scores: dict[str, list[dict]] = {m: [] for m in METHODS}
    for vol in volumes:
        out = enhance_all(vol, samples, steps)
        n = int(round(SLAB_MM / vol.spacing[2]))
        scored = slice(n, -n)  # one slab in from each end (DESIGN.md)
        for model, (array, _, seconds, _) in out.items():
            scores[model].append({**evaluate_arrays(array[scored], vol.array[scored]), "seconds": seconds})
        array, unc = out["diffusion"][0], out["diffusion"][1].array
        truth.append(vol.array[scored].ravel())
        mean.append(array[scored].ravel())
        std.append(unc[scored].ravel())
        rho.append(block_spearman(vol.array, array, unc, 8, vol.array > BODY_HU)[0])
    summary = {m: {k: float(np.nanmean([d[k] for d in v])) for k in ("psnr", "ssim", "mae_hu_body", "seconds")}
               for m, v in scores.items()}
    return {"truth": np.concatenate(truth), "mean": np.concatenate(mean), "std": np.concatenate(std),
            "summary": summary, "block_spearman": rho}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="training checkpoint of python -m train sr_diffusion")
    parser.add_argument("out", type=Path, help="scratch folder (weights copy and calibration.json)")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--coverage", type=float, default=0.9)
    args = parser.parse_args()
    ship_for_calibration(args.checkpoint, args.out)
    cal_set = collect(crops(read_volume(CHEST), 113, 24, [(200, 150), (200, 270), (280, 200)]), args.samples,
                      args.steps)
    body = cal_set["truth"] > BODY_HU
    cal = fit_scale(cal_set["truth"], cal_set["mean"], cal_set["std"], coverage=args.coverage, mask=body)
    test = collect(crops(read_volume(AORTA), 20, 48, [(20, 12), (20, 40)]), args.samples, args.steps)
    body2 = test["truth"] > BODY_HU
    raw = Calibration(1.0, cal.z, args.coverage, 0)
    result = {"calibration": asdict(cal), "samples": args.samples, "steps": args.steps,
              "calibration_set": cal_set["summary"], "calibration_block_spearman": cal_set["block_spearman"],
              "test_set": test["summary"], "test_block_spearman": test["block_spearman"],
              "test_coverage_calibrated": coverage(test["truth"], test["mean"], test["std"], cal, mask=body2),
              "test_coverage_uncalibrated": coverage(test["truth"], test["mean"], test["std"], raw, mask=body2),
              "test_mean_std_hu": float(test["std"][body2].mean()),
              "test_mean_abs_err_hu": float(np.abs(test["truth"] - test["mean"])[body2].mean())}
    text = json.dumps(result, indent=1)
    print(text)
    (args.out / "calibration.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
