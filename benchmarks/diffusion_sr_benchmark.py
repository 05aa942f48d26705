"""Diffusion SR benchmark: interpolation, the regression model and the diffusion model in one run.

Held-out real CT, never used to train either shipped model (``docs/models/``): thin truth crops are
degraded with :func:`ctsr_models.physics.simulate_thick_slices` (rect slabs, thickness = spacing, 4x) and
enhanced back to the truth's spacing by linear, cubic B-spline and Lanczos interpolation, the regression
model ``sr_unet_small_v3`` (with its data-consistency projection, as the product returns it), one
diffusion sample and the mean of K diffusion samples (with the calibrated std map), each through
:func:`ctsr_models.inference.enhance_detailed`. Scored on the truth slices inside the thick stack less one
slab at each end (DESIGN.md), per crop, then per case (mean over crops; LAA and coverage pooled over voxels).

Also: runtime and PSNR of one sample against the number of steps on one crop, and the speed of the
regression model and of one 4-step diffusion sample on a real 5 mm chest series (512x512x48 -> 1 mm for
the regression model, a sub-block for the diffusion sample, extrapolated by sliding-window count).

Run: ``OMP_NUM_THREADS=1 python benchmarks/diffusion_sr_benchmark.py [--device cpu] [--quick] [--out-md MD]
[--fig PNG] [--work DIR]`` (defaults: ``docs/benchmarks.md``, ``docs/figures/diffusion_sr_coronal.png``).
``--work`` keeps each finished unit's numbers (JSON) and the figure's slices (npz): a rerun resumes.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from ctsr_models.inference import DEVICES, EnhanceOptions, enhance_detailed, resolve_model
from ctsr_models.inference.predictor import n_windows
from ctsr_models.io import Volume, read_volume
from ctsr_models.metrics import compare_volumes
from ctsr_models.metrics.calibration import block_spearman, normal_z
from ctsr_models.metrics.texture import LAA_THRESHOLD_HU, body_mask, lung_mask, restored_band_ratio
from ctsr_models.physics import simulate_thick_slices

from report import write_section
from sr_cases import TISSUES, on_truth_grid, tissue_means

log = logging.getLogger("diffusion_sr_benchmark")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
REGRESSION = "sr_unet_small_v3"
REAL_THICK = "ct/pyradiomics_lung1/lung1_image.nrrd"


@dataclass(frozen=True)
class Case:
    """A held-out truth volume, the slices used and the simulated slabs."""

    name: str  # label in the tables
    path: str  # under ../shared/data
    slices: tuple[int, int]  # truth slices [k0, k1), a whole number of slabs
    slab_mm: float  # slab thickness = slab spacing, mm
    crop: int  # in-plane crop edge, voxels
    n_crops: int  # crops, chosen where the most lung (chest) or body voxels are
    chest: bool  # LAA-950 is scored


@dataclass(frozen=True)
class Config:
    """One benchmark configuration (full or ``--quick``)."""

    cases: tuple[Case, ...]
    samples: int
    steps: int | None  # diffusion steps of the case runs (None: the model's default)
    sweep_steps: tuple[int, ...]
    sweep_slices: int  # truth slices of the sweep crop (24: one diffusion window along z)
    speed_block: tuple[int, int]  # (slabs, in-plane edge) of the diffusion speed sub-block of the 5 mm series
    speed_steps: int
    speed_full: bool  # also time the regression model on the whole 512x512x48 series
    figure_case: int


CHEST = Case("chest 4D-CT, held-out lower 20 % (2 mm truth), 8 mm slabs (4x)", "ct/chest_4dct_phase00_dicom",
             (113, 137), 8.0, 96, 1, True)
TORSO = Case("torso CT, lung slices (2.5 mm truth), 10 mm slabs (4x)",
             "ct/tcia_cc_tumor_het_torso/torso_ct_2.5mm.nii.gz",
             (160, 184), 10.0, 96, 1, True)
AORTA = Case("aorta CT crop (1.5 mm truth), 6 mm slabs (4x)",
             "ct/totalseg/aorta_report__test_result__models__ct_cropped.nii.gz", (20, 44), 6.0, 96, 1, False)
FULL = Config((CHEST, TORSO, AORTA), samples=8, steps=None, sweep_steps=(1, 2, 4, 8, 15), sweep_slices=24,
              speed_block=(8, 144), speed_steps=4, speed_full=True, figure_case=1)
QUICK = Config((Case("chest 4D-CT, last slices (2 mm truth), 8 mm slabs (quick)", CHEST.path, (113, 137), 8.0, 48, 1,
                     True),), samples=2, steps=1, sweep_steps=(1, 2), sweep_slices=24, speed_block=(4, 48),
               speed_steps=1, speed_full=False, figure_case=0)


def crop_volume(volume: Volume, k0: int, k1: int, y0: int = 0, x0: int = 0, edge: int | None = None) -> Volume:
    """Slices ``[k0, k1)`` and the in-plane square at ``(y0, x0)`` with their true origin (float32 HU)."""
    ny, nx = volume.shape[1:]
    y1, x1 = (ny, nx) if edge is None else (y0 + edge, x0 + edge)
    array = np.asarray(volume.array[k0:k1, y0:y1, x0:x1], dtype=np.float32)
    return volume.replace(array=array, origin=tuple(float(v) for v in volume.index_to_physical([x0, y0, k0])))


def pick_corners(score: np.ndarray, edge: int, n: int, stride: int = 8) -> list[tuple[int, int]]:
    """Greedy choice of ``n`` non-overlapping ``edge``-squares of ``score`` ``(y, x)`` with the largest sums."""
    integral = np.pad(score.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    cands = [(integral[y + edge, x + edge] - integral[y, x + edge] - integral[y + edge, x] + integral[y, x], y, x)
             for y in range(0, score.shape[0] - edge + 1, stride) for x in range(0, score.shape[1] - edge + 1, stride)]
    chosen: list[tuple[int, int]] = []
    for _, y, x in sorted(cands, reverse=True):
        if all(abs(y - cy) >= edge or abs(x - cx) >= edge for cy, cx in chosen):
            chosen.append((y, x))
        if len(chosen) == n:
            break
    return chosen


def scored_slices(truth: Volume, z_range_mm: tuple[float, float]) -> slice:
    """The truth slices :func:`compare_volumes` scored (centres inside its ``z_range_mm``)."""
    pos = truth.slice_positions()
    idx = np.flatnonzero((pos >= z_range_mm[0] - 1e-3) & (pos <= z_range_mm[1] + 1e-3))
    return slice(int(idx[0]), int(idx[-1]) + 1)


def nearest_slab(thick: Volume, truth: Volume) -> np.ndarray:
    """Each truth slice shows the slab whose extent holds its centre (how a viewer shows thick slices)."""
    k = np.rint((truth.slice_positions() - thick.slice_positions()[0]) / thick.spacing[2]).astype(int)
    return thick.array[np.clip(k, 0, thick.shape[0] - 1)]


def methods(samples: int, steps: int | None) -> list[tuple[str, dict[str, Any]]]:
    """Method label and the enhance options that make it."""
    diffusion = {"model": "diffusion", "seed": 0, "steps": steps}
    return [("linear", {"model": "linear"}), ("cubic", {"model": "cubic"}), ("lanczos", {"model": "lanczos"}),
            (REGRESSION, {"model": REGRESSION}), ("diffusion, 1 sample", {**diffusion, "samples": 1}),
            (f"diffusion, mean of {samples}", {**diffusion, "samples": samples})]


def run_method(thick: Volume, truth: Volume, slab_mm: float, options: dict[str, Any], device: str
               ) -> tuple[Volume, dict[str, Any], float]:
    """Enhance ``thick`` back to the truth's spacing: result, details, seconds."""
    start = time.perf_counter()
    out, details = enhance_detailed(thick, EnhanceOptions(target_spacing=truth.spacing[2], input_thickness=slab_mm,
                                                          device=device, **options))
    return out, details, time.perf_counter() - start


def score(out: Volume, details: dict[str, Any], truth: Volume, body: np.ndarray, lung: np.ndarray, slab_mm: float
          ) -> dict[str, Any]:
    """All per-crop numbers of one method (``details``: what :func:`enhance_detailed` returned with ``out``)."""
    s = truth.spacing[2]
    scores = compare_volumes(out, truth, border_mm=slab_mm - s / 2)
    keep = scored_slices(truth, scores["z_range_mm"])
    ref, pred, bm, lm = truth.array[keep], on_truth_grid(out, truth)[keep], body[keep], lung[keep]
    classes = gaussian_filter(truth.array, 1.0)[keep]  # tissue classes of the truth less its noise (1 voxel)
    truth_hu, pred_hu = tissue_means(ref, classes), tissue_means(pred, classes)
    dc = [details["data_consistency"]["rmse_after_hu"], details.get("diffusion", {}).get("consistency_rmse_hu_max")]
    row = {key: scores[key] for key in ("psnr", "ssim", "ssim2d", "mae_hu_body", "psnr_1000")}
    row.update(band_ratio=restored_band_ratio(pred, ref, s, slab_mm, columns=bm.any(axis=0)),
               tissue_bias_hu={t: pred_hu[t] - truth_hu[t] for t in TISSUES},
               dc_rmse_hu=max(x for x in (*dc, 0.0) if x is not None),
               n_lung=int(lm.sum()), n_laa_pred=int((pred[lm] < LAA_THRESHOLD_HU).sum()),
               n_laa_truth=int((ref[lm] < LAA_THRESHOLD_HU).sum()))
    if "uncertainty" in details and details["diffusion"]["samples"] > 1:
        std = on_truth_grid(details["uncertainty"], truth)[keep]
        row.update(calibration(ref, pred, std, bm, details["diffusion"]["uncertainty"]))
    return row


def calibration(ref: np.ndarray, mean: np.ndarray, std: np.ndarray, body: np.ndarray,
                stated: dict[str, Any]) -> dict[str, Any]:
    """Coverage counts of the stated interval ``mean +- z c std`` and of the 95 % one, and block Spearman.

    ``std`` is already calibrated (raw spread x the shipped ``c``, fitted for ``stated["coverage"]`` with
    ``stated["z"]``); the 95 % interval is ``mean +- 1.96 c std``, i.e. ``c`` rescaled by 1.96 / z.
    """
    err, half = np.abs(ref - mean)[body], std[body]
    return {"n_body": int(body.sum()), "n_cov_stated": int((err <= stated["z"] * half).sum()),
            "n_cov95": int((err <= normal_z(0.95) * half).sum()), "stated_coverage": stated["coverage"],
            "scale": stated["scale"], "spearman": block_spearman(ref, mean, std, 8, body)[0],
            "mean_std_hu": float(half.mean())}


def cached(work: Path | None, key: str, make: Callable[[], Any]) -> Any:
    """``make()``'s JSON result, stored as ``work/key.json`` and read back on a rerun."""
    path = None if work is None else work / f"{key}.json"
    if path is not None and path.exists():  # resume
        return json.loads(path.read_text())
    result = make()
    if path is not None:
        path.write_text(json.dumps(result, indent=1, default=float))
    return result


def case_inputs(case: Case) -> tuple[Volume, np.ndarray, list[tuple[int, int]]]:
    """The case's slices, their body mask (from whole slices) and the in-plane crop corners."""
    vol = read_volume(DATA / case.path)
    part = crop_volume(vol, *case.slices)
    body = body_mask(part.array)
    inside = lung_mask(part.array, body, erosion=0) if case.chest else body
    return part, body, pick_corners(inside.sum(axis=0), case.crop, case.n_crops)


def run_crop(part: Volume, body: np.ndarray, corner: tuple[int, int], case: Case, cfg: Config, device: str,
             figure_path: Path | None) -> list[dict[str, Any]]:
    """Every method on one crop; saves the figure slices to ``figure_path`` when given."""
    y0, x0 = corner
    truth = crop_volume(part, 0, part.shape[0], y0, x0, case.crop)
    bm = body[:, y0:y0 + case.crop, x0:x0 + case.crop]
    lung = lung_mask(truth.array, bm) if case.chest else np.zeros(bm.shape, bool)
    thick = simulate_thick_slices(truth, case.slab_mm, case.slab_mm, "rect")
    rows, panels = [], {"thick input": nearest_slab(thick, truth), "truth": truth.array}
    for label, options in methods(cfg.samples, cfg.steps):
        out, details, seconds = run_method(thick, truth, case.slab_mm, options, device)
        row = score(out, details, truth, bm, lung, case.slab_mm)
        rows.append({"case": case.name, "crop": [y0, x0], "method": label, "seconds": seconds, **row})
        log.info("%s %s: PSNR %.2f dB, %.1f s", case.name, label, row["psnr"], seconds)
        panels[label] = on_truth_grid(out, truth)
        if "uncertainty" in details and details["diffusion"]["samples"] > 1:
            panels["std"] = on_truth_grid(details["uncertainty"], truth)
    if figure_path is not None:
        y = case.crop // 2
        np.savez_compressed(figure_path, aspect=truth.spacing[2] / truth.spacing[0],
                            **{name: np.nan_to_num(a[:, y, :], nan=-1024.0) for name, a in panels.items()})
    return rows


def steps_sweep(case: Case, cfg: Config, device: str) -> list[dict[str, Any]]:
    """One diffusion sample on the first ``cfg.sweep_slices`` slices of the case's first crop at each number of
    steps: seconds and PSNR."""
    part, body, corners = case_inputs(case)
    truth = crop_volume(part, 0, cfg.sweep_slices, *corners[0], case.crop)
    thick = simulate_thick_slices(truth, case.slab_mm, case.slab_mm, "rect")
    rows = []
    for steps in cfg.sweep_steps:
        out, _, seconds = run_method(thick, truth, case.slab_mm, {"model": "diffusion", "samples": 1, "seed": 0,
                                                                  "steps": steps}, device)
        psnr = compare_volumes(out, truth, border_mm=case.slab_mm - truth.spacing[2] / 2)["psnr"]
        rows.append({"steps": steps, "seconds": seconds, "psnr": psnr, "load": os.getloadavg()[0]})
        log.info("steps %d: %.1f s, PSNR %.2f dB", steps, seconds, psnr)
    return rows


def speed(cfg: Config, device: str) -> dict[str, Any]:
    """Regression on the whole real 5 mm series -> 1 mm (full config), and regression and one diffusion sample
    (``cfg.speed_steps`` steps) on a central sub-block of it; the diffusion time for the whole series is
    extrapolated by the number of sliding windows (the sampling cost is per window)."""
    vol = read_volume(DATA / REAL_THICK)
    (n_slabs, edge), (nz, ny, nx) = cfg.speed_block, vol.shape
    k0, y0, x0 = (nz - n_slabs) // 2, (ny - edge) // 2, (nx - edge) // 2
    block = crop_volume(vol, k0, k0 + n_slabs, y0, x0, edge)
    result: dict[str, Any] = {"full_shape": list(vol.shape), "block_shape": list(block.shape)}
    timed = [("block", block, REGRESSION, {}),
             ("block", block, "diffusion", {"samples": 1, "steps": cfg.speed_steps, "seed": 0})]
    if cfg.speed_full:
        timed.append(("full", vol, REGRESSION, {}))
    for where, volume, model, extra in timed:
        load, start = os.getloadavg()[0], time.perf_counter()
        out, _ = enhance_detailed(volume, EnhanceOptions(target_spacing=1.0, model=model, device=device, **extra))
        seconds = time.perf_counter() - start
        result.update({f"{where}_{model}_s": seconds, f"{where}_{model}_load": load, f"{where}_output_shape":
                       list(out.shape)})
        log.info("speed %s %s: %s -> %s in %.1f s (load %.2f)", where, model, volume.shape, out.shape, seconds, load)
    roi = resolve_model("diffusion").roi_size
    full_out = (round(vol.shape[0] * vol.spacing[2]), vol.shape[1], vol.shape[2])
    windows = [n_windows(shape, roi, 0.25, 1) for shape in (full_out, tuple(result["block_output_shape"]))]
    result.update(speed_steps=cfg.speed_steps, full_windows=windows[0], block_windows=windows[1],
                  diffusion_full_extrapolated_s=result["block_diffusion_s"] * windows[0] / windows[1])
    return result


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (case, method): the mean over crops, LAA and coverage pooled over voxels, the worst DC RMSE."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["case"], r["method"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        a: dict[str, Any] = {k: float(np.nanmean([r[k] for r in rs]))
                             for k in ("psnr", "ssim", "ssim2d", "mae_hu_body", "band_ratio", "seconds")}
        a["tissue_bias_hu"] = {t: _nanmean([r["tissue_bias_hu"][t] for r in rs]) for t in TISSUES}
        a["dc_rmse_hu"], a["n_lung"] = max(r["dc_rmse_hu"] for r in rs), (n_lung := sum(r["n_lung"] for r in rs))
        a["laa"] = 100 * sum(r["n_laa_pred"] for r in rs) / n_lung if n_lung else float("nan")
        a["laa_truth"] = 100 * sum(r["n_laa_truth"] for r in rs) / n_lung if n_lung else float("nan")
        a["laa_bias"] = a["laa"] - a["laa_truth"]
        if "n_body" in rs[0]:
            n_body = sum(r["n_body"] for r in rs)
            a["cov_stated"] = sum(r["n_cov_stated"] for r in rs) / n_body
            a["cov95"] = sum(r["n_cov95"] for r in rs) / n_body
            a["spearman"] = _nanmean([r["spearman"] for r in rs])
            a["mean_std_hu"] = _nanmean([r["mean_std_hu"] for r in rs])
            a["stated_coverage"], a["scale"] = rs[0]["stated_coverage"], rs[0]["scale"]
        out[key] = a
    return out


def _nanmean(values: list[float]) -> float:
    return float(np.mean(finite)) if (finite := [v for v in values if v is not None and np.isfinite(v)]) else np.nan


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None or not np.isfinite(value) else format(value, spec)


def case_table(case: dict[str, Any], agg: dict[tuple[str, str], dict[str, Any]], labels: list[str]) -> list[str]:
    """The markdown table of one case."""
    first = agg[(case["name"], labels[0])]
    laa_note = (f"truth LAA-950 {first['laa_truth']:.2f} % of {first['n_lung']:,} lung voxels" if case["chest"]
                else "no lung: LAA not scored")
    lines = [f"**{case['name']}** (`{case['path']}`, truth slices {case['slices'][0]}–{case['slices'][1] - 1}, "
             f"{case['n_crops']} crop(s) of {case['crop']}×{case['crop']} voxels; {laa_note})", "",
             "| method | PSNR dB | SSIM 3D | SSIM 2D | MAE body HU | band power ratio | LAA-950 % (bias pp) | "
             "lung / fat / soft-tissue bias HU | DC RMSE HU | coverage stated / 95 % | Spearman | s per crop |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label in labels:
        a = agg[(case["name"], label)]
        laa = f"{_fmt(a['laa'])} ({_fmt(a['laa_bias'], '+.2f')})" if case["chest"] else "–"
        bias = " / ".join(_fmt(a["tissue_bias_hu"][t], "+.1f") for t in TISSUES)
        cov = (f"{a['cov_stated']:.3f} / {a['cov95']:.3f}" if "cov95" in a else "–")
        lines.append(f"| {label} | {a['psnr']:.2f} | {a['ssim']:.4f} | {a['ssim2d']:.4f} | {a['mae_hu_body']:.1f} | "
                     f"{a['band_ratio']:.3f} | {laa} | {bias} | {_fmt(a['dc_rmse_hu'])} | {cov} | "
                     f"{_fmt(a.get('spearman', float('nan')))} | {a['seconds']:.1f} |")
    return [*lines, ""]


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def targets(env: dict[str, Any], agg: dict[tuple[str, str], dict[str, Any]], timing: dict[str, Any],
            one: str, mean: str) -> list[str]:
    """Each issue-13 target, checked on this run's numbers."""
    lines = ["**Targets of issue 13** (checked on the numbers above):", ""]
    for case in env["cases"]:
        name = case["name"]
        m, r, o = agg[(name, mean)], agg[(name, REGRESSION)], agg[(name, one)]
        dp, ds = m["psnr"] - r["psnr"], m["ssim"] - r["ssim"]
        lines.append(f"- {name}: {mean} vs regression PSNR {dp:+.2f} dB (≥ −0.2: {_verdict(dp >= -0.2)}), SSIM "
                     f"{ds:+.4f} (≥ −0.005: {_verdict(ds >= -0.005)}).")
        lines.append(f"  One sample: band power ratio {o['band_ratio']:.3f} (regression {r['band_ratio']:.3f}; "
                     f"target 0.8–1.25: {_verdict(0.8 <= o['band_ratio'] <= 1.25)}).")
        if case["chest"]:
            lines.append(f"  One sample LAA-950 bias {o['laa_bias']:+.2f} pp (regression {r['laa_bias']:+.2f} pp, "
                         f"linear {agg[(name, 'linear')]['laa_bias']:+.2f} pp; |bias| ≤ 0.5: "
                         f"{_verdict(abs(o['laa_bias']) <= 0.5)}).")
        worst = max((abs(v) for v in o["tissue_bias_hu"].values() if np.isfinite(v)), default=float("nan"))
        verdict = _verdict(bool(worst <= 5)) if np.isfinite(worst) else "not measurable, no tissue-class voxels"
        lines.append(f"  One sample largest tissue mean-HU bias {_fmt(worst, '.1f')} HU (±5: {verdict}; "
                     "empty classes skipped).")
        lines.append(f"  {mean}: 95 % coverage {m['cov95']:.3f} (0.92–0.98: {_verdict(0.92 <= m['cov95'] <= 0.98)}); "
                     f"Spearman(std, block RMSE) {_fmt(m['spearman'])} (≥ 0.6: "
                     f"{_verdict(bool(m['spearman'] >= 0.6))}).")
    worst_dc = max(a["dc_rmse_hu"] for (_, label), a in agg.items() if label in (one, mean))
    lines.append(f"- Data consistency, every diffusion sample: worst RMSE {worst_dc:.3f} HU (≤ 2: "
                 f"{_verdict(worst_dc <= 2)}).")
    ratio, steps = timing["block_diffusion_s"] / timing[f"block_{REGRESSION}_s"], timing["speed_steps"]
    lines.append(f"- Speed, one {steps}-step sample vs the regression model on the same sub-block "
                 f"({'×'.join(map(str, timing['block_shape'][::-1]))} slabs → 1 mm, measured): {ratio:.1f}× "
                 f"(≤ 4×: {_verdict(ratio <= 4)}).")
    if f"full_{REGRESSION}_s" in timing:
        full = timing["diffusion_full_extrapolated_s"] / timing[f"full_{REGRESSION}_s"]
        lines.append(f"  Whole 512×512×48 series: {full:.1f}× (diffusion extrapolated by window count, regression "
                     f"measured; ≤ 4×: {_verdict(full <= 4)}).")
    eight = 8 * timing["diffusion_full_extrapolated_s"] / 60
    lines.append(f"- Speed, 8 samples with the std map on 512×512×48 → 1 mm: about {eight:.0f} min, extrapolated "
                 f"by window count from the {steps}-step sub-block sample (≤ 15 min: {_verdict(eight <= 15)}).")
    lines.append(f"- Peak memory for a 512×512×600 output: not measured (this run's process peak RSS: "
                 f"{_fmt(env['peak_rss_gb'])} GB at the sizes above). H200 target (512×512×300, 15 steps ≤ 20 s): "
                 "not measured, no GPU in this run.")
    return [*lines, ""]


def markdown(rows: list[dict[str, Any]], sweep: list[dict[str, Any]], timing: dict[str, Any],
             env: dict[str, Any]) -> str:
    """The ``diffusion_sr`` section of the benchmarks page."""
    agg = aggregate(rows)
    labels = list(dict.fromkeys(r["method"] for r in rows))
    (one, mean), lines = labels[-2:], ["## Diffusion super-resolution (`benchmarks/diffusion_sr_benchmark.py`)", "",
             f"Command: `{env['command']}`  ", f"Machine: {env['machine']}; load average (1/5/15 min) at start and "
             f"end: {', '.join(f'{x:.2f}' for x in env['load'])}; {env['minutes']:.1f} min in all; process peak RSS "
             f"{_fmt(env['peak_rss_gb'])} GB.", ""]
    lines += ["**Quick smoke run** (tiny crop, K = 2, steps 1 and 2): not a result.", ""] if env["quick"] else []
    lines += [f"Model `{env['model']}` at {env['steps']} steps, seed 0, beside the baselines and "
              f"`{REGRESSION}` (the model it is conditioned on) in the same run, on held-out data no shipped SR "
              "model was trained on. Thick inputs: rect slabs, thickness = spacing, simulated from the thin truth "
              "(`ctsr_models.physics`); every method goes through `enhance_detailed` (networks with their "
              "data-consistency projection). Scored on the truth slices inside the thick stack less one slab at "
              "each end; HU clipped to [−1024, 3071] → [0, 1], data range 1; MAE where truth > −500 HU. "
              "Crops are chosen where the most lung (chest cases) or body is. Per case: mean over crops; LAA-950 "
              "and coverage pooled over voxels.", "",
              "Definitions ([diffusion.md](diffusion.md#benchmark)): *band power ratio* = through-plane power "
              "between the slabs' and the output's Nyquist, method over truth; *LAA-950* on the truth's lung "
              "(≤ −500 HU inside the filled body, eroded 2 voxels), bias in percentage points; *tissue bias* = "
              "mean HU minus the truth's in lung / fat / soft-tissue classes of the truth smoothed by 1 voxel; "
              "*DC RMSE* = slabs against the result re-degraded (HU, body; diffusion: worst sample); *coverage* of "
              "|truth − mean| ≤ z·c·std in the body: stated 90 % (z = 1.645, shipped c) / 95 % (z = 1.96, c "
              "rescaled by 1.96/1.645); *Spearman* of per-8³-block std against block RMSE.", ""]
    for case in env["cases"]:
        lines += case_table(case, agg, labels)
    lines += ["Runtime against steps: one diffusion sample on the first crop of "
              f"'{env['figure_case']}' (seconds include the regression conditioning pass).", "",
              "| steps | seconds | PSNR dB | load (1 min) |", "|---|---|---|---|"]
    lines += [f"| {r['steps']} | {r['seconds']:.1f} | {r['psnr']:.2f} | {r['load']:.2f} |" for r in sweep]
    full = "×".join(map(str, timing["full_shape"][::-1]))
    lines += ["", f"Speed on the real 5 mm chest series `{REAL_THICK}` ({full}, "
              "x×y×slabs) → 1 mm:", "", "| input | method | output (z, y, x) | seconds | load (1 min) |",
              "|---|---|---|---|---|"]
    for key, label in ((f"block_{REGRESSION}", REGRESSION),
                       ("block_diffusion", f"diffusion, 1 sample, {timing['speed_steps']} steps"),
                       (f"full_{REGRESSION}", REGRESSION)):
        if f"{key}_s" in timing:
            where = key.split("_")[0]
            shape = timing[f"{where}_output_shape"]
            src = timing["block_shape"] if where == "block" else timing["full_shape"]
            lines.append(f"| {where} {src} | {label} | {shape} | {timing[f'{key}_s']:.1f} | "
                         f"{timing[f'{key}_load']:.2f} |")
    lines += ["", f"Whole series, one {timing['speed_steps']}-step diffusion sample, extrapolated from the sub-block "
              "by "
              f"the number of {resolve_model('diffusion').roi_size} sliding windows ({timing['full_windows']} vs "
              f"{timing['block_windows']}): {timing['diffusion_full_extrapolated_s'] / 60:.1f} min (not measured "
              "directly: longer than this benchmark's time budget on the loaded CPU).", ""]
    lines += targets(env, agg, timing, one, mean)
    lines += [f"Coronal slice through the centre of the first crop of '{env['figure_case']}': thick input (each slab "
              f"over its extent), {REGRESSION}, one diffusion sample, the mean of {env['samples']}, truth (window "
              "−1000..400 HU) and the calibrated std map (own colour bar, HU).", "",
              f"![coronal: thick input, regression, diffusion sample, mean, truth, std]({env['figure']})", ""]
    return "\n".join(lines)


def figure(npz: Path, path: Path, samples: int) -> None:
    """The coronal panels saved by :func:`run_crop`, same window (−1000..400 HU), std with its colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.load(npz)
    names = ["thick input", REGRESSION, "diffusion, 1 sample", f"diffusion, mean of {samples}", "truth", "std"]
    fig, axes = plt.subplots(1, 6, figsize=(19, 4.2))
    for ax, name in zip(axes, names):
        window = (0, float(np.percentile(data[name], 99.5)) or 1.0) if name == "std" else (-1000, 400)
        im = ax.imshow(data[name][::-1], cmap="magma" if name == "std" else "gray", vmin=window[0], vmax=window[1],
                       aspect=float(data["aspect"]), interpolation="nearest")
        ax.set_title("calibrated std (HU)" if name == "std" else name, fontsize=10)
        ax.axis("off")
    fig.colorbar(im, ax=axes[5], fraction=0.05, pad=0.03)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    parser.add_argument("--quick", action="store_true", help="tiny crops, K=2, steps 1 and 2 (the smoke test)")
    parser.add_argument("--out-md", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--fig", type=Path, default=REPO / "docs" / "figures" / "diffusion_sr_coronal.png")
    parser.add_argument("--work", type=Path, default=None, help="folder of finished units (resume)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else FULL
    load_start, started = os.getloadavg(), time.perf_counter()
    rows: list[dict[str, Any]] = []
    scratch = tempfile.TemporaryDirectory()  # the figure's slices when there is no --work
    (folder := args.work or Path(scratch.name)).mkdir(parents=True, exist_ok=True)
    fig_npz, record, n_before = folder / "diffusion_sr_figure.npz", folder / "run.json", len(list(folder.glob("*")))
    for i, case in enumerate(cfg.cases):
        part, body, corners = case_inputs(case)
        for j, corner in enumerate(corners):
            fig = fig_npz if (i == cfg.figure_case and j == 0) else None
            rows += cached(args.work, f"case{i}_crop{j}",
                           lambda: run_crop(part, body, corner, case, cfg, args.device, fig))
    sweep = cached(args.work, "sweep", lambda: steps_sweep(cfg.cases[cfg.figure_case], cfg, args.device))
    timing = cached(args.work, "speed", lambda: speed(cfg, args.device))
    figure(fig_npz, args.fig, cfg.samples)
    spec = resolve_model("diffusion")
    if len(list(folder.glob("*"))) > n_before or not record.exists():  # else keep the computing run's stats
        record.write_text(json.dumps({"load": [*load_start, *os.getloadavg()], "peak_rss_gb": resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss / 2**20, "minutes": (time.perf_counter() - started) / 60}))
    env = {"command": "OMP_NUM_THREADS=1 python benchmarks/diffusion_sr_benchmark.py --device "
                      f"{args.device}{' --quick' if args.quick else ''}",
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                      f"{torch.__version__}, {args.threads} torch thread(s), device {args.device}",
           **json.loads(record.read_text()), "model": spec.name, "steps": cfg.steps or spec.diffusion.steps,
           "samples": cfg.samples, "quick": args.quick, "figure": os.path.relpath(args.fig, args.out_md.parent),
           "cases": [c.__dict__ for c in cfg.cases], "figure_case": cfg.cases[cfg.figure_case].name}
    write_section("diffusion_sr", markdown(rows, sweep, timing, env), args.out_md)
    scratch.cleanup()
    log.info("wrote %s and %s", args.out_md, args.fig)


if __name__ == "__main__":
    main()
