"""Biplanar X-ray → CT benchmark: patient-level cross-validation and the impossible-pair checks.

1. **Cross-validation** (``benchmarks/xray2ct_cv.py``, resumable, results in ``runs/xray_cv/``): every
   patient with chest content is held out in turn; the cube model (``xray2ct``) and the implicit one
   (``xray2ct_implicit``) are trained on the other patients with the same short budget and scored on
   the held-out patient's volumes beside

   * ``mean CT``: the mean of the fold's training CTs, each placed on the same grid centred on its own
     body (the "average patient" fitted to the field);
   * ``back-projection``: every voxel gets the mean of the two normalised radiographs at the detector
     points its rays hit (the same lifting as the networks, no learning), mapped to HU by a linear fit
     on the fold's training CTs;
   * the shipped ``xray2ct_v1`` (marked "seen" on the patients it was trained on);
   * each model without and with projection-consistency refinement.

   Pairs are simulated from the held-out CT at the nominal geometry (PA + LL, SID 1800 mm, SOD 1500 mm,
   output cube 320 mm centred on the body). Scores (clean protocol): HU clipped to [-1000, 1500] → [0, 1],
   data range 1: PSNR, SSIM 3D, mean slice-wise SSIM along each axis; MAE in HU (clipped HU, whole grid);
   the legacy X2CT-GAN PSNR (HU + 1000 clipped to [0, 2500], peak 4095) to line up with papers; projection
   consistency: PSNR of the normalised input radiographs against the normalised projections of the
   reconstruction, before and after refinement.
2. **Impossible pairs**: :func:`~ctsr_models.inference.xray_pair_check.check_pair` on the real radiographs
   of ``../shared/data/xray`` (two PA chests of two people, the same image twice, noise, a photograph, a CT
   slice) and on valid simulated pairs of real CTs.

Run: ``nice -n 10 .venv/bin/python benchmarks/xray2ct_benchmark.py [--cv-steps N]``; it writes its
section of ``docs/benchmarks.md`` and ``docs/figures/xray2ct_cv_*.png``.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctsr_models.data.xray_pairs import XraySetup, ct_net_to_hu, simulate_pair
from ctsr_models.inference.xray2ct import projection_psnr
from ctsr_models.io import read_volume
from ctsr_models.io.radiograph import Radiograph
from ctsr_models.metrics import psnr, psnr_from_mse, ssim2d, ssim3d
from ctsr_models.physics.lifting import edge_coords, lift, lifting_coords

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CLEAN = (-1000.0, 1500.0)
sys.path.insert(0, str(REPO / "benchmarks"))

from report import write_section  # noqa: E402


def legacy_psnr(pred_hu: np.ndarray, ref_hu: np.ndarray) -> float:
    """X2CT-GAN's PSNR: HU + 1000 clipped to [0, 2500], peak 4095 (inflates the clean PSNR by 4.29 dB)."""
    a = np.clip(pred_hu + 1000.0, 0, 2500).astype(np.float64)
    b = np.clip(ref_hu + 1000.0, 0, 2500).astype(np.float64)
    return psnr_from_mse(max(np.mean((a - b) ** 2), 1e-12), data_range=4095.0)


def scores(pred_hu: np.ndarray, ref_hu: np.ndarray) -> dict[str, float]:
    """The metrics of the module docstring (but projection consistency)."""
    lo, hi = CLEAN
    return {"psnr": psnr(pred_hu, ref_hu, lo, hi), "ssim3d": ssim3d(pred_hu, ref_hu, lo, hi),
            **{f"ssim2d_{name}": ssim2d(pred_hu, ref_hu, lo, hi, axis) for axis, name in enumerate("zyx")},
            "mae_hu": float(np.mean(np.abs(np.clip(pred_hu, lo, hi) - np.clip(ref_hu, lo, hi)))),
            "psnr_legacy": legacy_psnr(pred_hu, ref_hu)}


def simulate(path: str, setup: XraySetup) -> dict:
    """The nominal pair (no jitter, no contrast change) of one CT, and its truth in HU."""
    ct = read_volume(DATA / path)
    pair = simulate_pair(ct, setup, np.random.default_rng(0))
    pair["truth_hu"] = ct_net_to_hu(pair["ct_net"])
    return pair


def back_projection(pair: dict, setup: XraySetup) -> np.ndarray:
    """Mean of the two normalised radiographs at each voxel's detector points (no learning): the
    network's own lifting applied to the images instead of to features."""
    coords = lifting_coords(setup.grid(pair["centre"]), pair["geometries"], setup.size)  # (2, d, h, w, 2)
    images = torch.from_numpy(np.stack([pair["frontal"], pair["lateral"]]))[:, None]
    lifted = lift(images, edge_coords(coords, (setup.detector_px, setup.detector_px)))  # (2, 1, d, h, w)
    return lifted[:, 0].mean(dim=0).numpy()


def radiographs(pair: dict) -> tuple[Radiograph, Radiograph]:
    """The simulated pair as radiographs with their geometry (log-domain line integrals)."""
    return tuple(Radiograph(image=pair["line_integrals"][i], geometry=pair["geometries"][i], kind="line_integral",
                            meta={}, findings=[]) for i in range(2))  # type: ignore[return-value]


def consistency(hu: np.ndarray, pair: dict, setup: XraySetup) -> float:
    """Mean projection PSNR of a reconstruction against the pair's normalised inputs."""
    inputs = torch.from_numpy(np.stack([pair["frontal"], pair["lateral"]]))
    return float(np.mean(projection_psnr(torch.from_numpy(hu.astype(np.float32)), setup.grid(pair["centre"]),
                                         pair["geometries"], inputs)))


# ------------------------------------------------------------------------------------------ impossible pairs
PA_A, PA_B = "xray/torchxrayvision/00000001_000.png", "xray/torchxrayvision/16747_3_1.jpg"
TAGGED_PA = "xray/fodicom/CR-MONO1-10-chest"


def _drr_pair(path: str, views: tuple[str, str] = ("pa", "ll")) -> tuple[Radiograph, Radiograph]:
    """A nominal simulated pair (96 px, 4 mm pixels) of a real CT centred on its box, as the pair tests make it."""
    from ctsr_models.physics import ProjectionGeometry, VolumeGrid, drr

    ct = read_volume(DATA / path)
    centre = ct.index_to_physical((np.asarray(ct.shape[::-1]) - 1) / 2)
    hu = np.asarray(ct.array, dtype=np.float32)
    rads = []
    for view in views:
        g = ProjectionGeometry.standard(view, shape=(96, 96), pixel_mm=4.0, isocentre=tuple(centre))
        rads.append(Radiograph(drr(hu, VolumeGrid.of(ct), g, step_mm=3.0), g, "line_integral"))
    return rads[0], rads[1]


def pair_cases() -> list[dict[str, str]]:
    """Every impossible pair of issue 16 on real images, and valid simulated pairs: expected and answered."""
    from ctsr_models.inference.xray_pair_check import PairError, check_pair
    from ctsr_models.io.radiograph import read_radiograph
    from ctsr_models.physics import ProjectionGeometry

    lung = _drr_pair("ct/pyradiomics_lung1/lung1_image.nrrd")
    chest = _drr_pair("ct/chest_4dct_phase00_dicom")
    abdomen = _drr_pair("ct/totalseg/example_ct_sm.nii.gz", ("ap", "rl"))
    pa_a = read_radiograph(DATA / PA_A, fallback_view="pa")
    pa_b = read_radiograph(DATA / PA_B, fallback_view="lateral")
    tagged = read_radiograph(DATA / TAGGED_PA, fallback_view="lateral")
    noise = Radiograph(np.random.default_rng(0).uniform(0, 255, lung[1].image.shape), lung[1].geometry)
    ct = read_volume(DATA / "ct/totalseg/example_ct_sm.nii.gz")
    axial = np.asarray(ct.array[ct.shape[0] // 2], dtype=np.float32)
    ct_slice = Radiograph(axial, ProjectionGeometry.standard("ll", shape=axial.shape))
    cases = [("two PA chest radiographs of two people (PNG, second given as lateral)", pa_a, pa_b, "refuse"),
             ("a PA chest PNG and a PA chest CR (DICOM) of another person", pa_a, tagged, "refuse"),
             ("the same radiograph twice", pa_a, pa_a, "refuse"),
             ("Lung1 frontal DRR and uniform noise", lung[0], noise, "refuse"),
             ("Lung1 frontal DRR and an axial CT slice in HU", lung[0], ct_slice, "refuse"),
             ("Lung1 frontal DRR and an abdomen's lateral DRR (different bodies)", lung[0], abdomen[1], "refuse"),
             ("Lung1 PA + LL DRRs (valid)", lung[0], lung[1], "accept"),
             ("4D-CT chest PA + LL DRRs (valid)", chest[0], chest[1], "accept"),
             ("abdomen AP + RL DRRs (valid)", abdomen[0], abdomen[1], "accept")]
    out = []
    for name, frontal, lateral, expected in cases:
        try:
            check_pair(frontal, lateral)
            answer = "accepted"
        except PairError as exc:
            answer = f"refused: {exc}"
        ok = answer.startswith("accepted") == (expected == "accept")
        out.append({"case": name, "expected": expected, "answer": answer, "ok": ok})
    return out


# ------------------------------------------------------------------------------------------ tables
def _method_order(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def fold_means(rows: list[dict]) -> list[dict]:
    """Per method: the mean over folds of each held-out patient's mean over its volumes (64³ grid rows)."""
    keys = ("psnr", "ssim3d", "mae_hu", "psnr_legacy", "proj_psnr", "seconds")
    out = []
    for method in _method_order(rows):
        per_patient = {}
        for r in rows:
            if r["method"] == method:
                per_patient.setdefault(r["held_out"], []).append(r)
        means = {k: float(np.mean([np.mean([r[k] for r in rs]) for rs in per_patient.values()])) for k in keys}
        out.append({"method": method, "folds": len(per_patient), **means})
    return out


def volume_name(case: str) -> str:
    """A volume's file name without its image suffix."""
    return case.removesuffix(".nii.gz").removesuffix(".nrrd")


def cv_table(rows: list[dict]) -> list[str]:
    lines = ["| held out | volume | method | PSNR dB | SSIM 3D | SSIM ax/cor/sag | MAE HU | legacy PSNR dB | "
             "projection PSNR dB before → after | s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seen = " (seen in training)" if r["seen_in_training"] else ""
        proj = f"{r['proj_before']:.1f} → {r['proj_psnr']:.1f}" if "refine" in r["method"] else f"{r['proj_psnr']:.1f}"
        lines.append(f"| {r['held_out']} | {volume_name(r['case'])} | {r['method']}{seen} | {r['psnr']:.2f} | "
                     f"{r['ssim3d']:.3f} | {r['ssim2d_z']:.3f}/{r['ssim2d_y']:.3f}/{r['ssim2d_x']:.3f} | "
                     f"{r['mae_hu']:.0f} | {r['psnr_legacy']:.2f} | {proj} | {r['seconds']:.1f} |")
    return lines


def mean_table(rows: list[dict]) -> list[str]:
    lines = ["| method | folds | PSNR dB | SSIM 3D | MAE HU | legacy PSNR dB | projection PSNR dB | s |",
             "|---|---|---|---|---|---|---|---|"]
    grid = [r for r in rows if r["grid"] == 64]
    for m in fold_means(grid):
        seen = len({r["held_out"] for r in grid if r["method"] == m["method"] and r["seen_in_training"]})
        note = f" (seen in training in {seen} of {m['folds']} folds)" if seen else ""
        lines.append(f"| {m['method']}{note} | {m['folds']} | {m['psnr']:.2f} | {m['ssim3d']:.3f} | {m['mae_hu']:.0f} | "
                     f"{m['psnr_legacy']:.2f} | {m['proj_psnr']:.1f} | {m['seconds']:.1f} |")
    return lines


def pair_table(cases: list[dict]) -> list[str]:
    lines = ["| pair | expected | answer | as expected |", "|---|---|---|---|"]
    lines += [f"| {c['case']} | {c['expected']} | {c['answer']} | {'yes' if c['ok'] else '**no**'} |" for c in cases]
    return lines


def targets(rows: list[dict], cases: list[dict], refine: int) -> list[str]:
    """The issue's targets checked on this run, per held-out patient, for the implicit fold model."""
    out = []
    for patient in dict.fromkeys(r["held_out"] for r in rows):
        by = {}
        for r in rows:
            if r["held_out"] == patient and r["grid"] == 64:
                by.setdefault(r["method"], []).append(r)
        final = float(np.mean([r["psnr"] for r in by[f"xray2ct_implicit (fold) + {refine} refine"]]))
        bp = float(np.mean([r["psnr"] for r in by["back-projection"]]))
        proj = float(np.mean([r["proj_psnr"] for r in by[f"xray2ct_implicit (fold) + {refine} refine"]]))
        checks = [(f"PSNR {final:.2f} dB >= back-projection {bp:.2f} + 2 dB", final >= bp + 2),
                  (f"PSNR {final:.2f} dB >= 22 dB", final >= 22), (f"projection PSNR {proj:.1f} dB >= 35", proj >= 35)]
        out.append(f"- held out {patient} (implicit, refined): "
                   + "; ".join(f"{t}: **{'met' if ok else 'missed'}**" for t, ok in checks))
    refused = [c for c in cases if c["expected"] == "refuse"]
    accepted = [c for c in cases if c["expected"] == "accept"]
    sims = [r for r in rows if r["pair_check"]]
    out.append(f"- impossible pairs refused: {sum(c['ok'] for c in refused)}/{len(refused)}; valid pairs accepted: "
               f"{sum(c['ok'] for c in accepted)}/{len(accepted)} here and "
               f"{len({(r['case']) for r in sims if r['pair_check'] == 'accepted'})}/{len({r['case'] for r in sims})} "
               f"CV pairs: **{'met' if all(c['ok'] for c in cases) else 'missed'}**")
    hires = [r for r in rows if r["grid"] != 64 and "refine" in r["method"]]
    for r in hires:
        out.append(f"- {r['method']} on {volume_name(r['case'])}: {r['seconds']:.1f} s <= 30 s on this loaded CPU: "
                   f"**{'met' if r['seconds'] <= 30 else 'missed'}**")
    out.append("- <= 1 s without refinement on an H200: not measured (no GPU was lent to this task)")
    return out


# ------------------------------------------------------------------------------------------ figures
FIGURE_METHODS = ("truth", "back-projection", "xray2ct_v1", "xray2ct (fold)", "xray2ct_implicit (fold)")


def save_figure(slices: dict[str, np.ndarray], case: str, title: str, path: Path, refine: int) -> None:
    """Coronal (top) and axial (bottom) mid-slices of the truth, back-projection and each model (refined)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m if m in ("truth", "back-projection") else f"{m} + {refine} refine" for m in FIGURE_METHODS]
    names = [n for n in names if f"{case}|{n}|coronal" in slices]
    fig, axes = plt.subplots(2, len(names), figsize=(2.3 * len(names), 5.0))
    for col, name in enumerate(names):
        for row, plane in enumerate(("coronal", "axial")):
            axes[row, col].imshow(slices[f"{case}|{name}|{plane}"], cmap="gray", vmin=-1000, vmax=600)
            axes[row, col].axis("off")
        axes[0, col].set_title(name.replace(" + ", "\n+ "), fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figures(out_dir: Path, refine: int) -> list[str]:
    """Figures of the held-out Lung1 chest, torso and 4D-CT chest; markdown lines that show them."""
    from xray2ct_cv import V1_SEEN

    lines = []
    for patient, case in (("lung1", "lung1_image.nrrd"), ("torso", "torso_ct_2.5mm.nii.gz"),
                          ("chest_4dct", "chest_4dct_phase00_dicom")):
        npz = out_dir / patient / "slices.npz"
        if not npz.is_file():
            continue
        slices = dict(np.load(npz))
        name = f"xray2ct_cv_{patient}.png"
        seen = "; xray2ct_v1 was trained on this patient" if patient in V1_SEEN else ""
        save_figure(slices, case, f"held out: {patient} (5 mm grid, HU window [-1000, 600]{seen})",
                    REPO / "docs" / "figures" / name, refine)
        lines += [f"![X-ray to CT, held-out {patient}](figures/{name})", ""]
    return lines


# ------------------------------------------------------------------------------------------ report
def markdown(rows: list[dict], cases: list[dict], command: str, env: str, run: dict[str, Any]) -> str:
    """The section; ``run``: the CV run's ``steps``, ``batch``, ``refine_steps``, ``anatomy``, ``models`` and ``out``."""
    from xray2ct_cv import PATIENTS, V1_SEEN

    patients = "; ".join(f"`{p}` ({', '.join(Path(v).name for v in vols)})" for p, vols in PATIENTS.items())
    models = " and ".join(f"`{m}`" for m in run["models"])
    augment = ("pose, centre, size, contrast and anatomical augmentation (habitus, rotation, elastic, breathing, "
               "table removal, contrast HU)" if run["anatomy"] else "pose, centre, size and contrast augmentation")
    unseen = [p for p in PATIENTS if p not in V1_SEEN]
    lines = ["## X-ray → CT, patient-level cross-validation (`benchmarks/xray2ct_benchmark.py`)", "",
             f"Command: `{command}` ({env}; no GPU was lent). Patient-level cross-validation over the {len(PATIENTS)} "
             f"patients with chest content: {patients}. The two TotalSegmentator crops are two crops of one scan "
             f"(identical HU where they overlap), so they are one patient. Each fold trains {models} on the other "
             f"patients for {run['steps']} steps of {run['batch']} pairs ({augment}; 64³ over 320 mm, 64 px detectors, "
             "radiographs always projected from the augmented CT) on the 2-core CPU. `xray2ct_v1` is the previous "
             f"model (cube decoder, 1400 steps), trained on {', '.join(sorted(V1_SEEN))} (\"seen in training\"): "
             f"only the folds {', '.join(unseen)} compare it fairly. Refinement: {run['refine_steps']} steps. "
             "Nominal PA + LL pairs simulated from the held-out CT; clean protocol (HU [-1000, 1500] -> [0, 1]); "
             "`legacy` = X2CT-GAN's 4095-peak PSNR; `s` = reconstruction wall time (network + consistency + "
             f"refinement) after a warm-up. Fold checkpoints: `{run['out']}/<patient>/<model>/`. The same recipe trained "
             "on every patient (`benchmarks/xray2ct_cv.py --final`) is the shipped model; these folds estimate how it "
             "does on a patient it has not seen (`docs/models/xray2ct_v2.md`).", "",
             "Mean over folds (each held-out patient weighs 1; 64³ grid):", "", *mean_table(rows), "",
             f"Mean over the folds `xray2ct_v1` never saw ({', '.join(unseen)}):", "",
             *mean_table([r for r in rows if r["held_out"] in unseen]), "",
             "Per held-out patient and volume:", "", *cv_table(rows), "",
             "Impossible and valid pairs (`ctsr_models.inference.xray_pair_check.check_pair`; real radiographs from "
             "`../shared/data/xray`, DRRs of real CTs; the CV pairs' verdicts are in the run's `scores.json`):", "",
             *pair_table(cases), "", "Targets (issue 16, checked by the script):", "",
             *targets(rows, cases, run["refine_steps"]), ""]
    return "\n".join(lines)


def main() -> None:
    from xray2ct_cv import MODELS, OUT, run_cv

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cv-steps", type=int, default=20, help="training steps per fold and model")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--refine-steps", type=int, default=50)
    parser.add_argument("--hires", type=int, default=128)
    parser.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--anatomy", action="store_true", help="anatomical augmentation in the folds' training")
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the fold runs (benchmarks/xray2ct_cv.py)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = run_cv(args.cv_steps, args.batch, args.refine_steps, args.hires or None, models=tuple(args.models),
                  anatomy=args.anatomy, out=args.out)
    cases = pair_cases()
    env = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread, torch {torch.__version__}"
    out = args.out.resolve().relative_to(REPO) if args.out.resolve().is_relative_to(REPO) else args.out
    command = (f"nice -n 10 python benchmarks/xray2ct_benchmark.py --cv-steps {args.cv_steps} --batch {args.batch} "
               f"--refine-steps {args.refine_steps} --hires {args.hires} --models {' '.join(args.models)}"
               + (" --anatomy" if args.anatomy else "") + f" --out {out}")
    run = {"steps": args.cv_steps, "batch": args.batch, "refine_steps": args.refine_steps, "anatomy": args.anatomy,
           "models": args.models, "out": out}
    text = markdown(rows, cases, command, env, run)
    text += "\n" + "\n".join(figures(args.out, args.refine_steps))
    print(text)
    write_section("xray2ct", text)


if __name__ == "__main__":
    main()
