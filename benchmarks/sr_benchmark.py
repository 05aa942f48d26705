"""Through-plane SR benchmark: every held-out case, x2 to x5, rect and Gaussian slabs, every method, one run.

Cases (:mod:`sr_cases`): the chest 4D-CT lower 20 %, the aorta crop (another patient), the last 25 % of the
head CT and the abdomen-pelvis (x2 only), each simulated at x2, x3, x5 with rect and Gaussian slabs. Methods
on every case, same inputs and scoring: linear, cubic B-spline, Lanczos and every model of ``--models``
(a model missing from ``ctsr_models/weights/models.json`` is skipped and said so); on the x3 rect case of
each region (x2 for the abdomen) also the last model adapted to the scan (``--adapt-seconds``) and ECLARE
(its PyPI package in its own environment through ``benchmarks/eclare_run.py``, ``--eclare-patches``; a result
already in ``--work``/eclare is reused). Per method: PSNR, SSIM, body MAE, tissue mean-HU bias, data-consistency
RMSE (HU, the output degraded again with the true profile against the slabs) and seconds; per case: the error
of :func:`~ctsr_models.physics.profile_estimate.estimate_slice_profile` against the simulated FWHM. The real
5 mm Lung1 series (512x512x48, no truth) is enhanced to 1 mm for the runtime target.

Run: ``.venv/bin/python benchmarks/sr_benchmark.py --models sr_unet_small_v3,sr_unet_small_v4 --eclare-python
/work/eclare-venv/bin/python``; it writes the ``sr_benchmark`` section of ``docs/benchmarks.md`` and
``docs/figures/sr_coronal.png``, keeps per-case rows in ``--work`` (``--resume`` reuses them) and
``--quick`` runs one small case for the smoke test.

``--adapt`` runs the per-volume adaptation benchmark instead (:mod:`adapt_bench`, section ``sr_adapt``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ctsr_models.inference import DEVICES, EnhanceOptions, enhance_detailed, pick_device, resolve_model
from ctsr_models.io import Volume, read_volume
from ctsr_models.io.errors import InputError
from ctsr_models.training.adapt import AdaptOptions, enhance_adapted

from adapt_bench import ADAPT_CASES, add_adapt_args, memory_probe, run_adapt_benchmark
from report import write_section
from sr_cases import (
    BASELINES, DATA, ECLARE_REGIONS, REGIONS, REPO, TISSUES, Case, all_cases, on_truth_grid,
    profile_error, run_eclare, score, simulate, tissue_means, truth_of, z_crop,
)

__all__ = ["z_crop", "main"]
log = logging.getLogger("sr_benchmark")
REAL_THICK = "ct/pyradiomics_lung1/lung1_image.nrrd"
WORK = REPO / "runs" / "sr_bench"
ECLARE_PATCHES = 2000  # 0.2 % of ECLARE's default 1e6: about 1 min of CPU per case (5+ min wall on a loaded 2-core box)
ADAPT_PATCHES = 32000  # the adaptation benchmark's ECLARE budget (unchanged)


def available_models(names: list[str]) -> tuple[list[str], list[str]]:
    """The models of ``names`` present in the manifest, and a note for each one that is not."""
    found, notes = [], []
    for name in names:
        try:
            found.append(resolve_model(name).name)
        except InputError as exc:
            notes.append(f"{name}: not run ({exc})")
    return list(dict.fromkeys(found)), notes


def run_method(thick: Volume, truth: Volume, thickness: float, case: Case, method: str,
               device: str) -> tuple[dict, Volume]:
    """One method on one case: scores, the raw (before projection) consistency and seconds."""
    start = time.perf_counter()
    out, details = enhance_detailed(thick, EnhanceOptions(target_spacing=truth.spacing[2], model=method,
                                                          input_thickness=thickness, input_profile=case.profile,
                                                          device=device))
    seconds = time.perf_counter() - start
    return {"method": method, "seconds": seconds, **score(out, truth, thick, thickness, case.profile),
            "raw_consistency_hu": details["data_consistency"]["rmse_before_hu"]}, out


def run_adapted(thick: Volume, truth: Volume, thickness: float, case: Case, model: str,
                args: argparse.Namespace) -> tuple[dict, Volume]:
    """``model`` adapted to the case's input for ``--adapt-seconds``, then enhanced (wall time of both)."""
    start = time.perf_counter()
    options = EnhanceOptions(target_spacing=truth.spacing[2], model=model, input_thickness=thickness,
                             input_profile=case.profile, device=args.device)
    out, details = enhance_adapted(thick, options, AdaptOptions(steps=100_000, seconds=args.adapt_seconds,
                                                                profile=case.profile))
    seconds = time.perf_counter() - start
    return {"method": adapted_name(model, args), "seconds": seconds,
            **score(out, truth, thick, thickness, case.profile),
            "raw_consistency_hu": details["data_consistency"]["rmse_before_hu"],
            "adaptation": details["adaptation"]}, out


def adapted_name(model: str, args: argparse.Namespace) -> str:
    return f"{model} + adapt {args.adapt_seconds:g} s"


def run_eclare_row(thick: Volume, truth: Volume, thickness: float, case: Case,
                   args: argparse.Namespace) -> tuple[dict, Volume | None]:
    """ECLARE on the case's input (its own environment; reused from ``--work`` when run before)."""
    info = run_eclare(case, thick, thickness, args.work, args.eclare_python, args.eclare_patches)
    if info is None:
        return {"method": "ECLARE", "skipped": "no result (give --eclare-python to run it)"}, None
    row = {"method": "ECLARE", "seconds": info["seconds"],
           **score(info["volume"], truth, thick, thickness, case.profile),
           "eclare": {k: info[k] for k in ("n_patches", "batch_size", "peak_rss_gb", "cpu_amp_patched")}}
    return row, info["volume"]


def run_case(case: Case, models: list[str], args: argparse.Namespace) -> dict:
    """Every method on one case (each row cached in ``--work``/rows, reused with ``--resume``), the profile
    estimate of its input, and the coronal slices of the figure cases (``--work``/coronal)."""
    truth = truth_of(case.region, args.inplane)
    thick, thickness = simulate(case, truth)
    jobs = [(m, lambda m=m: run_method(thick, truth, thickness, case, m, args.device)) for m in (*BASELINES, *models)]
    if (case.adapt or args.quick) and args.adapt_seconds > 0 and models:
        name = adapted_name(models[-1], args)
        jobs.append((name, lambda: run_adapted(thick, truth, thickness, case, models[-1], args)))
    if case.eclare:
        jobs.append(("ECLARE", lambda: run_eclare_row(thick, truth, thickness, case, args)))
    rows = [_cached(case, name, job, truth, args) for name, job in jobs]
    if case.adapt or case.slug == "aorta_x3_rect":
        _save_coronal(args.work, case, "thick input", _on_truth_grid_nearest(thick, truth))
        _save_coronal(args.work, case, "truth", truth.array)
    return {"case": case.name, "slug": case.slug, "region": case.region.name, "thick_mm": thickness,
            "n_slabs": thick.shape[0], "shape_zyx": list(truth.shape), "rows": rows,
            "profile": _cached_profile(case, thick, thickness, args)}


def _cached_profile(case: Case, thick: Volume, thickness: float, args: argparse.Namespace) -> dict:
    """:func:`profile_error` of the case's input, saved in ``--work`` (reused with ``--resume``)."""
    path = args.work / "rows" / case.slug / "profile_estimate.json"
    if (args.resume or args.report_only) and path.exists():
        return json.loads(path.read_text())
    if args.report_only:
        return {}
    result = profile_error(thick, case.profile, thickness)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, default=float) + "\n")
    return result


def _cached(case: Case, name: str, job, truth: Volume, args: argparse.Namespace) -> dict:  # noqa: ANN001
    """The row of ``name`` from ``--work`` (with ``--resume``), else ``job()`` run and saved."""
    path = args.work / "rows" / case.slug / f"{_safe(name)}.json"
    if (args.resume or args.report_only) and path.exists():
        log.info("%s | %s: reusing %s", case.name, name, path)
        return json.loads(path.read_text())
    if args.report_only and not (name == "ECLARE" and args.eclare_python is None):  # ECLARE: its files are reused
        return {"method": name, "skipped": "not run yet (the run was cut short; --resume completes it)"}
    row, out = job()
    if out is not None and (case.adapt or case.slug == "aorta_x3_rect"):
        _save_coronal(args.work, case, name, on_truth_grid(out, truth))
    log.info("%s | %s", case.name, json.dumps({k: v for k, v in row.items() if k != "adaptation"}, default=str))
    if "skipped" not in row:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row, default=float) + "\n")
    return row


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _save_coronal(work: Path, case: Case, name: str, array: np.ndarray) -> None:
    """The middle coronal slice (truth grid) of one panel of the figure."""
    path = work / "coronal" / case.slug / f"{_safe(name)}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(array[:, array.shape[1] // 2, :], dtype=np.float32))


def run_real(models: list[str], device: str) -> list[dict]:
    """The real 5 mm series to 1 mm: seconds, output slices and tissue mean HU per method."""
    thick = read_volume(DATA / REAL_THICK)
    rows = []
    for model in (*BASELINES, *models):
        start = time.perf_counter()
        out, _ = enhance_detailed(thick, EnhanceOptions(target_spacing=1.0, model=model, device=device))
        seconds = time.perf_counter() - start
        k = np.arange(out.shape[0])
        src = np.clip(np.rint((out.slice_positions()[k] - thick.slice_positions()[0]) / thick.spacing[2]), 0,
                      thick.shape[0] - 1).astype(int)
        rows.append({"model": model, "seconds": round(seconds, 2), "output_slices": out.shape[0],
                     "tissue_mean_hu": tissue_means(out.array, thick.array[src])})
        log.info("real series | %s", json.dumps(rows[-1]))
    return rows


def coronal_figure(cases: list[Case], models: list[str], args: argparse.Namespace, path: Path) -> None:
    """One row per case: coronal slices of thick input, Lanczos, each model, the adapted model, ECLARE (where
    they ran) and truth, from ``--work``/coronal (window -1000..400 HU; the head -100..200 HU, brain window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["thick input", "lanczos", *models, adapted_name(models[-1], args) if models else "", "ECLARE", "truth"]
    rows = []
    for case in cases:
        folder = args.work / "coronal" / case.slug
        files = [(n, folder / f"{_safe(n)}.npy") for n in names if n]
        panels = [(n, np.load(f)) for n, f in files if f.exists()]
        rows.append((case, truth_of(case.region, args.inplane), panels))
    n_cols = max(len(p) for _, _, p in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.6 * n_cols, 2.4 * len(rows)), squeeze=False)
    for ax_row, (case, truth, panels) in zip(axes, rows):
        window = (-100, 200) if case.region.slug == "head" else (-1000, 400)
        for ax, (title, array) in zip(ax_row, panels):
            ax.imshow(array[::-1], cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest",
                      aspect=truth.spacing[2] / truth.spacing[0])
            ax.set_title(f"{case.name}: {title}" if title == "thick input" else title, fontsize=7)
        for ax in ax_row:
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _on_truth_grid_nearest(thick: Volume, truth: Volume) -> np.ndarray:
    """Each truth slice shows the slab whose extent holds its centre (how a viewer shows thick slices)."""
    k = np.rint((truth.slice_positions() - thick.slice_positions()[0]) / thick.spacing[2]).astype(int)
    return thick.array[np.clip(k, 0, thick.shape[0] - 1)]


def _bias(row: dict) -> float:
    """Largest absolute tissue mean-HU difference to the truth (classes with enough voxels)."""
    diffs = [abs(row["tissue_mean_hu"][t] - row["truth_tissue_mean_hu"][t]) for t in TISSUES]
    diffs = [d for d in diffs if np.isfinite(d)]
    return max(diffs) if diffs else float("nan")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def markdown(results: list[dict], real: list[dict], env: dict, command: str, models: list[str],
             notes: list[str]) -> str:
    """The ``sr_benchmark`` section of docs/benchmarks.md."""
    lines = ["## Through-plane super-resolution (`benchmarks/sr_benchmark.py`)", "",
             f"Command: `{command}`  ", f"Machine: {env['machine']}; torch {env['torch']}; device {env['device']}; "
             f"1-minute load average at the end {env['load']:.1f}; " + (
                 f"wall time of the run {env['minutes']:.0f} min." if env['minutes'] >= 1 else
                 "rows from earlier runs (each row's seconds are its own)."), "",
             "Held-out real CT, thick inputs simulated with slab thickness = spacing = k x the truth's spacing (rect "
             "or Gaussian FWHM), enhanced back to the truth's spacing with the true profile given, scored on the truth "
             "grid over the truth slices inside the thick stack less one slab at each end. HU clipped to [-1024, 3071] "
             "-> [0, 1], data range 1; MAE in HU where truth > -500 HU. **DC**: data-consistency RMSE (HU, slabs > "
             "-500 HU) of the output degraded again with the true profile against the slabs; for networks `raw -> "
             "final` (before and after the projection every network result goes through). Tissue bias: largest "
             "|mean HU - truth| over lung / fat / soft tissue (classes on the truth, eroded 2 voxels, at least 50 "
             "voxels). Regions and crops (in-plane, centred on the body; time on a shared 2-core CPU):", "",
             *[f"- {r.slug}: {r.name}, slices {r.z_fraction[0]:.0%}-{r.z_fraction[1]:.0%} of the stack, "
               f"{r.inplane}x{r.inplane} pixels at most, factors {', '.join(f'x{k}' for k in r.factors)}"
               for r in REGIONS],
             "- Gaussian slabs at x3 only (abdomen x2); adaptation and ECLARE on the x3 rect case of "
             f"{' and '.join(ECLARE_REGIONS)} only (CPU time).",
             *[f"- {n}" for n in notes], "",
             "| case | method | PSNR dB | SSIM 3D | SSIM 2D | MAE body HU | PSNR [-1000,1000] | DC HU | tissue bias HU "
             "| seconds | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for r in res["rows"]:
            if "psnr" not in r:
                lines.append(f"| {res['case']} | {r['method']} | - | - | - | - | - | - | - | - | {r['skipped']} |")
                continue
            dc = _fmt(r["consistency_hu"])
            if r.get("raw_consistency_hu") is not None and r["method"] not in BASELINES:
                dc = f"{r['raw_consistency_hu']:.2f} -> {dc}"
            note = ""
            if "adaptation" in r:
                a = r["adaptation"]
                note = (f"{'adapted' if a['adapted'] else 'kept pretrained'}, {a['steps']} steps; held-out "
                        f"{a['heldout_psnr_pretrained']} -> {a['heldout_psnr_adapted']} dB; raw DC "
                        f"{a.get('consistency_rmse_pretrained_hu')} -> {a.get('consistency_rmse_adapted_hu')} HU")
            if "eclare" in r:
                note = f"{r['eclare']['n_patches']} patches (default 1e6), {r['eclare']['peak_rss_gb']:.1f} GB"
            lines.append(f"| {res['case']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['ssim2d']:.4f} | "
                         f"{r['mae_hu_body']:.1f} | {r['psnr_1000']:.2f} | {dc} | {_fmt(_bias(r), 1)} | "
                         f"{r['seconds']:.1f} | {note} |")
    lines += ["", "Slice-profile estimate (`estimate_slice_profile`, `line_stride=2`) on each simulated input: FWHM of "
              "the true shape's fit against the simulated FWHM; the shape it would choose.", "",
              "| case | slabs | true FWHM mm | estimated mm | error % | chosen shape |", "|---|---|---|---|---|---|"]
    for res in results:
        p = res["profile"]
        if not p:
            lines.append(f"| {res['case']} | {res['n_slabs']} | {res['thick_mm']:.2f} | - | - | not run yet |")
        elif "fwhm_mm" in p:
            lines.append(f"| {res['case']} | {res['n_slabs']} | {p['true_fwhm_mm']:.2f} | {p['fwhm_mm']:.2f} | "
                         f"{p['error_pct']:+.1f} | {p['chosen_shape']} |")
        else:
            lines.append(f"| {res['case']} | {res['n_slabs']} | {p['true_fwhm_mm']:.2f} | - | - | not estimated: "
                         f"{p['error']} |")
    if real:
        lines += ["", f"Real 5 mm chest series (`{REAL_THICK}`, 512x512x48, no thin truth) to 1 mm: seconds and mean "
                  "HU (classes from the input's nearest slab).", "",
                  "| method | seconds | output slices | lung / fat / soft-tissue mean HU |", "|---|---|---|---|"]
        for r in real:
            hu = " / ".join(_fmt(r["tissue_mean_hu"][t], 1) for t in TISSUES)
            lines.append(f"| {r['model']} | {r['seconds']:.1f} | {r['output_slices']} | {hu} |")
    lines += ["", *targets(results, real, models), "",
              "Coronal slices (middle row of each crop) of the x3 rect case of each region (x2 for the abdomen): thick "
              "input (each slab over its extent), Lanczos, the models, ECLARE where it ran, truth.", "",
              "![coronal slices per region](figures/sr_coronal.png)", ""]
    return "\n".join(lines)


def targets(results: list[dict], real: list[dict], models: list[str]) -> list[str]:
    """Issue 15's targets on this run's numbers (met or missed, never hidden)."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    if not models:
        return ["No model ran: targets not evaluated."]
    model = models[-1]
    lines = [f"**Targets of issue 15** (candidate = `{model}`, the last of `--models`; the shipped default "
             "changes only if the candidate beats it on every case):", ""]
    gains, dcs, ahead, profile = [], [], [], []
    for res in results:
        by = {r["method"]: r for r in res["rows"] if "psnr" in r}
        if model not in by or "lanczos" not in by:
            continue
        m, lz = by[model], by["lanczos"]
        gain = m["psnr"] - lz["psnr"]
        ok = gain >= 2.0 and m["ssim"] > lz["ssim"] and m["mae_hu_body"] < lz["mae_hu_body"] and not _bias(m) > 5
        gains.append((res["case"], gain, ok, m, lz))
        dcs.append((res["case"], m["consistency_hu"]))
        if "ECLARE" in by:
            mine = [r for k, r in by.items() if k == model or k.startswith(f"{model} + adapt")]
            best = max(mine, key=lambda r: r["psnr"])
            ahead.append((res["case"], best, by["ECLARE"]))
        p = res["profile"]
        if p and 2.5 <= p["true_fwhm_mm"] <= 10.0:
            profile.append((res["case"], p.get("error_pct")))
    met = sum(ok for *_, ok, _, _ in gains)
    lines.append("- >= Lanczos + 2.0 dB with better SSIM and body MAE and tissue bias within 5 HU: "
                 f"{verdict(met == len(gains))} "
                 f"({met} of {len(gains)} cases meet it); PSNR gain over Lanczos per case: "
                 + ", ".join(f"{c} {g:+.2f} dB" + ("" if ok else f" (SSIM {m['ssim']:.4f} vs {lz['ssim']:.4f}, MAE "
                             f"{m['mae_hu_body']:.1f} vs {lz['mae_hu_body']:.1f}, bias {_fmt(_bias(m), 1)} HU)")
                             for c, g, ok, m, lz in gains) + ".")
    for case, best, e in ahead:
        ratio = e["seconds"] / best["seconds"]
        lines.append(f"- {case}: best of default/adapted (`{best['method']}`) {best['psnr'] - e['psnr']:+.2f} dB vs "
                     f"ECLARE ({verdict(best['psnr'] >= e['psnr'])}) in {best['seconds']:.0f} s vs "
                     f"{e['seconds']:.0f} s = "
                     f"1/{ratio:.1f} of its time (target 1/10: {verdict(ratio >= 10)}); ECLARE ran "
                     f"{e['eclare']['n_patches']} patches, not its default 1e6.")
    if not ahead:
        lines.append("- ECLARE: no result in this run (not evaluated).")
    worst = max(dcs, key=lambda d: d[1], default=("no case", float("nan")))
    lines.append(f"- Data consistency <= 2 HU on every case run: {verdict(worst[1] <= 2.0)} (worst {worst[1]:.3f} HU, "
                 f"{worst[0]}).")
    missing = [res["case"] for res in results if not any(r["method"] == model and "psnr" in r for r in res["rows"])]
    if missing:
        lines.append(f"- Not run yet (targets not evaluated there): {', '.join(missing)}.")
    inside = [(c, e) for c, e in profile if e is not None and abs(e) <= 10]
    lines.append(f"- Profile estimate within 10 % of the true FWHM (2.5-10 mm): {verdict(len(inside) == len(profile))} "
                 f"({len(inside)} of {len(profile)} cases); misses: "
                 + (", ".join(f"{c} {_fmt(e, 1)} %" for c, e in profile if e is None or abs(e) > 10) or "none") + ".")
    timed = next((r for r in real if r["model"] == model), None)
    lines.append("- 512x512x48 -> 1 mm in <= 90 s: " + (f"{verdict(timed['seconds'] <= 90)} ({timed['seconds']:.0f} s)"
                 if timed else "not measured in this run") + "; peak memory for a 600-slice output: not measured here "
                 "(see the `sr_adapt` section's memory probe).")
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], conflict_handler="resolve")
    add_adapt_args(parser)  # --cases, --eclare-python and --eclare-patches are redefined below for both modes
    parser.add_argument("--models", default="sr_unet_small_v3,sr_unet_small_v4",
                        help="models beside the baselines, comma-separated; the last is the 'new default'")
    parser.add_argument("--adapt-seconds", type=float, default=60.0,
                        help="adaptation budget of the last model (0: off)")
    parser.add_argument("--eclare-python", type=Path, help="python of an environment with eclare installed")
    parser.add_argument("--eclare-patches", type=int, default=None,
                        help=f"ECLARE training patches (default 1e6; here {ECLARE_PATCHES}, --adapt {ADAPT_PATCHES})")
    parser.add_argument("--cases", default="", help="case or region slugs, comma-separated (default: all; --adapt: "
                        "its own cases)")
    parser.add_argument("--inplane", type=int, default=None, help="override every region's in-plane crop (pixels)")
    parser.add_argument("--real", action="store_true", help="also time the real Lung1 series to 1 mm (runtime target)")
    parser.add_argument("--quick", action="store_true", help="smoke test: aorta x3 rect, 48x48, adapted for 3 s")
    parser.add_argument("--resume", action="store_true", help="reuse the per-case, per-method rows saved in --work")
    parser.add_argument("--report-only", action="store_true",
                        help="write the section from the rows saved in --work only (missing rows: 'not run yet')")
    parser.add_argument("--work", type=Path, default=WORK, help="per-case rows, ECLARE inputs and outputs")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="where the markdown and figure go")
    args = parser.parse_args()
    if args.adapt:
        args.cases = args.cases or ",".join(c.slug for c in ADAPT_CASES)
    args.eclare_patches = args.eclare_patches or (ADAPT_PATCHES if args.adapt else ECLARE_PATCHES)
    if args.quick:
        args.cases, args.inplane, args.real = "aorta_x3_rect", args.inplane or 48, False
        args.adapt_seconds = min(args.adapt_seconds, 3.0)
    return args


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    if args.memory_probe:
        memory_probe(args.memory_probe, args.device)
        return
    if args.adapt:
        run_adapt_benchmark(args)
        return
    started = time.perf_counter()
    models, notes = available_models([m for m in args.models.split(",") if m])
    wanted = {c for c in args.cases.split(",") if c}
    cases = [c for c in all_cases() if not wanted or c.slug in wanted or c.region.slug in wanted]
    results = [run_case(case, models, args) for case in cases]
    real = run_real(models, args.device) if args.real else []
    shown = [c for c in cases if (args.work / "coronal" / c.slug / "truth.npy").exists()]
    if shown:
        coronal_figure(shown, models, args, args.out / "figures" / "sr_coronal.png")
    env = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"{torch.get_num_threads()} torch threads", "torch": torch.__version__,
           "device": pick_device(args.device).type, "load": os.getloadavg()[0],
           "minutes": (time.perf_counter() - started) / 60}
    command = (f"python benchmarks/sr_benchmark.py --models {args.models} --adapt-seconds {args.adapt_seconds:g} "
               f"--eclare-patches {args.eclare_patches} --device {args.device}"
               + (" --eclare-python ECLARE_PYTHON" if args.eclare_python else "")
               + (f" --cases {args.cases}" if args.cases else "") + (" --quick" if args.quick else "")
               + (" --real" if args.real else "") + (" --resume" if args.resume and not args.report_only else "")
               + (" --resume` (rows saved in --work by earlier runs), then `--report-only" if args.report_only else ""))
    write_section("sr_benchmark", markdown(results, real, env, command, models, notes), args.out / "benchmarks.md")
    (args.work / "results.json").write_text(json.dumps({"results": results, "real": real}, default=float) + "\n")


if __name__ == "__main__":
    main()
