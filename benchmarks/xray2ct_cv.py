"""Patient-level cross-validation of biplanar X-ray → CT (issue 16, item 1).

Every patient with chest content in ``../shared/data/ct`` is held out in turn. For each fold, the cube
model (``xray2ct``, the architecture of ``xray2ct_v1``) and the implicit one (``xray2ct_implicit``) are
trained on the other patients with the same short budget (``--steps`` steps of ``--batch`` pairs, the
same augmentations), and the held-out patient's volumes are scored with the scoring of
``benchmarks/xray2ct_benchmark.py`` beside the mean CT and back-projection baselines (both fitted on the
fold's training patients) and the shipped ``xray2ct_v1`` (rows marked where v1 saw that patient).

Patients (one patient = every volume of one person, never split across training and test):
    * ``chest_4dct``: the 4D-CT chest, phase 00;
    * ``totalseg_chest``: the TotalSegmentator aorta and pulmonary crops, two crops of ONE contrast chest
      CT (same origin in x and y, same 1.5 mm grid; where they overlap, 55 % of the aorta crop, their
      HU agree to 0.11 HU mean absolute difference, correlation 0.9999998);
    * ``lung1``: the pyradiomics Lung1 chest;
    * ``torso``: the neck-to-pelvis torso of CC-Tumor-Heterogeneity (its body centre lies low in the
      chest, so its 320 mm cube holds the lower chest and the upper abdomen).

Resumable: training resumes from a fold's last checkpoint, a finished training is not repeated, and
a fold whose ``scores.json`` exists is not scored again. Everything goes to ``runs/xray_cv/``.

Run: ``nice -n 10 .venv/bin/python benchmarks/xray2ct_cv.py [--steps N] [--batch B]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from xray2ct_benchmark import DATA, back_projection, consistency, radiographs, scores, simulate  # noqa: E402

from ctsr_models.data.xray_pairs import XraySetup, ct_net_to_hu  # noqa: E402
from ctsr_models.inference.models import load_network, resolve_model  # noqa: E402
from ctsr_models.inference.xray2ct import XrayOptions, model_setup, reconstruct_with  # noqa: E402
from ctsr_models.inference.xray_pair_check import PairError, check_pair  # noqa: E402
from ctsr_models.nets import build_net  # noqa: E402

log = logging.getLogger("xray2ct_cv")

OUT = REPO / "runs" / "xray_cv"
PATIENTS: dict[str, tuple[str, ...]] = {
    "chest_4dct": ("ct/chest_4dct_phase00_dicom",),
    "totalseg_chest": ("ct/totalseg/aorta_report__test_result__models__ct_cropped.nii.gz",
                       "ct/totalseg/pulmonary_report__models__ct_cropped.nii.gz"),
    "lung1": ("ct/pyradiomics_lung1/lung1_image.nrrd",),
    "torso": ("ct/tcia_cc_tumor_het_torso/torso_ct_2.5mm.nii.gz",),
}
#: the pseudo-fold that holds nobody out: the final model of a recipe, trained on every patient
ALL = "all"
#: patients whose volumes trained the shipped xray2ct_v1 (its model card)
V1_SEEN = frozenset({"chest_4dct", "totalseg_chest"})
#: the two architectures and their configs; the fold set-up overrides grid, data and schedule
MODELS = {"xray2ct": "train/configs/xray2ct.yaml", "xray2ct_implicit": "train/configs/xray2ct_implicit.yaml"}
#: the fold whose implicit model is also scored at the finer grid (refinement there costs minutes on a busy CPU)
HIRES_PATIENT = "lung1"
#: the CV grid: the shipped v1's (64^3 over 320 mm, 64 px detectors), so all rows share one truth
CV_SETUP = XraySetup(size=64, fov_mm=320.0, detector_px=64)


def fold_split(held_out: str, patients: dict[str, tuple[str, ...]] = PATIENTS) -> tuple[list[tuple[str, float]], list[str]]:
    """Training volumes (path, weight) of every other patient, and the held-out patient's volumes.

    Each training patient weighs 1 in total (its volumes share it), so a patient with two crops is not
    drawn twice as often.

    ``held_out`` = :data:`ALL` holds nobody out (the final model of the recipe; no test volumes).

    Raises:
        ValueError: unknown patient, or a volume listed under two patients.
    """
    if held_out not in patients and held_out != ALL:
        raise ValueError(f"unknown patient {held_out!r}; known: {', '.join(patients)}")
    owners: dict[str, str] = {}
    for patient, paths in patients.items():
        for p in paths:
            if owners.setdefault(p, patient) != patient:
                raise ValueError(f"volume {p} is listed under {owners[p]} and {patient}")
    train = [(p, 1.0 / len(paths)) for patient, paths in patients.items() if patient != held_out for p in paths]
    return train, list(patients.get(held_out, ()))


def fold_config(model: str, held_out: str, steps: int, batch: int, anatomy: bool = False) -> dict[str, Any]:
    """The resolved YAML config of one fold's training (the model's config, CV grid, fold data).

    ``anatomy``: keep the config's anatomical augmentation (habitus, rotation, elastic, breathing, table,
    contrast); it costs about twice the CPU time of a step.
    """
    cfg = yaml.safe_load((REPO / MODELS[model]).read_text())
    train, _ = fold_split(held_out)
    cfg["data"]["train"] = [{"path": str(DATA / p), "weight": w} for p, w in train]
    cfg["data"]["val"] = []
    cfg["setup"].update(size=CV_SETUP.size, fov_mm=CV_SETUP.fov_mm, detector_px=CV_SETUP.detector_px)
    cfg["loss"]["proj_px"] = 32 if model == "xray2ct" else 16
    # pose, centre, size and contrast augmentation stay on; the anatomical one doubles the CPU cost of a
    # pair, which in a budget of a few dozen steps buys fewer, not better, samples
    if not anatomy:
        cfg["anatomy"] = None
    if model == "xray2ct_implicit":
        cfg["loss"]["points"] = 4096
    cfg["trainer"].update(steps=steps, batch_size=batch, lr=1.0e-3, warmup_steps=max(steps // 20, 1),
                          ema_decay=max(0.97, 1.0 - 10.0 / steps), num_workers=0, log_every=max(steps // 20, 1), val_every=steps,
                          ckpt_every=max(steps // 4, 1), keep_checkpoints=1, image_panels=0, device="cpu")
    return cfg


def train_fold(model: str, held_out: str, steps: int, batch: int, anatomy: bool = False, out: Path = OUT) -> Path:
    """Train (or resume, or skip when finished) one model of one fold; returns its run folder."""
    from ctsr_models.training import run

    folder = out / held_out / model
    summary = folder / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("completed"):
        log.info("fold %s, %s: trained already", held_out, model)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "fold_config.yaml"
    config.write_text(yaml.safe_dump(fold_config(model, held_out, steps, batch, anatomy), sort_keys=False))
    last = folder / "checkpoints" / "last.pt"
    t0 = time.perf_counter()
    run("xray2ct", config=None if last.is_file() else config, out=folder, resume=last if last.is_file() else None)
    log.info("fold %s, %s: trained in %.0f s", held_out, model, time.perf_counter() - t0)
    return folder


def fold_network(folder: Path) -> tuple[torch.nn.Module, XraySetup]:
    """The EMA network of a finished fold run and its set-up."""
    state = torch.load(folder / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    cfg = state["config"]
    net = build_net(cfg["model"]["name"], **cfg["model"]["kwargs"])
    net.load_state_dict(torch.load(folder / "checkpoints" / "model_ema.pt", map_location="cpu", weights_only=True))
    setup = dict(cfg["setup"])
    setup["views"] = tuple(setup["views"])
    return net.eval(), XraySetup(**setup)


def fold_baselines(held_out: str, setup: XraySetup) -> tuple[np.ndarray, tuple[float, float]]:
    """Mean CT (HU) and back-projection HU fit of the fold's training patients (each patient weighs 1)."""
    train, _ = fold_split(held_out)
    mean, total, xs, ys = 0.0, 0.0, [], []
    for path, weight in train:
        pair = simulate(path, setup)
        mean = mean + weight * pair["ct_net"].astype(np.float64)
        total += weight
        xs.append(back_projection(pair, setup).ravel())
        ys.append(pair["truth_hu"].ravel())
    slope, intercept = np.polyfit(np.concatenate(xs), np.concatenate(ys), 1)
    return ct_net_to_hu((mean / total).astype(np.float32)), (float(slope), float(intercept))


def pair_verdict(pair: dict) -> str:
    """``accepted`` or ``refused: <reason>`` from the pair check on the simulated radiographs."""
    try:
        check_pair(*radiographs(pair))
    except PairError as exc:
        return f"refused: {exc}"
    return "accepted"


def _timed(net: torch.nn.Module, setup: XraySetup, name: str, pair: dict, steps: int,
           output_size: int | None = None) -> tuple[np.ndarray, float, dict]:
    """One reconstruction of the simulated pair (pair check off: :func:`pair_verdict` reports it), timed."""
    frontal, lateral = radiographs(pair)
    options = XrayOptions(refine_steps=steps, check_pair=False, output_size=output_size)
    t0 = time.perf_counter()
    result = reconstruct_with(net, setup, name, frontal, lateral, options)
    return result.volume.array, time.perf_counter() - t0, result.consistency


def score_fold(held_out: str, refine_steps: int, hires: int | None, models: tuple[str, ...] = tuple(MODELS),
               out: Path = OUT) -> dict[str, Any]:
    """Score every method on each held-out volume; mid-slices for the figures go to ``slices.npz``."""
    setup = CV_SETUP
    mean_hu, (slope, intercept) = fold_baselines(held_out, setup)
    v1 = resolve_model("xray2ct_v1", task="xray2ct")
    nets = {"xray2ct_v1": (load_network(v1, torch.device("cpu")), model_setup(v1))}
    for model in models:
        nets[f"{model} (fold)"] = fold_network(out / held_out / model)
    rows, slices = [], {}
    for path in fold_split(held_out)[1]:
        case = Path(path).name
        pair = simulate(path, setup)
        verdict = pair_verdict(pair)
        methods = {"mean CT": (mean_hu, 0.0, None),
                   "back-projection": (back_projection(pair, setup) * slope + intercept, 0.0, None)}
        for name, (net, net_setup) in nets.items():
            _timed(net, net_setup, name, pair, 0)  # warm-up
            for steps in (0, refine_steps):
                hu, seconds, cons = _timed(net, net_setup, name, pair, steps)
                methods[name + (f" + {steps} refine" if steps else "")] = (hu, seconds, cons)
        for name, (hu, seconds, cons) in methods.items():
            row = {"held_out": held_out, "case": case, "method": name, **scores(hu, pair["truth_hu"]),
                   "proj_psnr": consistency(hu, pair, setup), "seconds": seconds, "grid": setup.size,
                   "seen_in_training": name.startswith("xray2ct_v1") and held_out in V1_SEEN, "pair_check": verdict}
            if cons is not None:
                row["proj_before"] = cons["before"]["mean"]
            rows.append(row)
            log.info("%s %s %s: PSNR %.2f dB, SSIM %.3f", held_out, case, name, row["psnr"], row["ssim3d"])
        mid = setup.size // 2
        slices.update({f"{case}|{k}|coronal": v[0][::-1, mid, :] for k, v in methods.items()})
        slices.update({f"{case}|{k}|axial": v[0][mid] for k, v in methods.items()})
        slices[f"{case}|truth|coronal"] = pair["truth_hu"][::-1, mid, :]
        slices[f"{case}|truth|axial"] = pair["truth_hu"][mid]
        if hires and held_out == HIRES_PATIENT and "xray2ct_implicit" in models:
            rows += _hires_rows(held_out, path, nets["xray2ct_implicit (fold)"][0], refine_steps, hires, slices)
    np.savez_compressed(out / held_out / "slices.npz", **{k: np.asarray(v, np.float32) for k, v in slices.items()})
    return {"held_out": held_out, "rows": rows}


def _hires_rows(held_out: str, path: str, net: torch.nn.Module, refine_steps: int, size: int,
                slices: dict) -> list[dict]:
    """The implicit fold model at ``size``³ over the same cube, scored on the truth at that grid."""
    setup = XraySetup(size=size, fov_mm=CV_SETUP.fov_mm, detector_px=CV_SETUP.detector_px)
    pair = simulate(path, setup)
    case, rows = Path(path).name, []
    for steps in (0, refine_steps):
        hu, seconds, cons = _timed(net, CV_SETUP, "xray2ct_implicit", pair, steps, output_size=size)
        name = f"xray2ct_implicit (fold) @ {size}^3" + (f" + {steps} refine" if steps else "")
        rows.append({"held_out": held_out, "case": case, "method": name, **scores(hu, pair["truth_hu"]),
                     "proj_psnr": consistency(hu, pair, setup), "seconds": seconds, "grid": size,
                     "seen_in_training": False, "pair_check": "", "proj_before": cons["before"]["mean"]})
        slices[f"{case}|{name}|coronal"] = hu[::-1, size // 2, :]
        slices[f"{case}|{name}|axial"] = hu[size // 2]
    slices[f"{case}|truth @ {size}^3|coronal"] = pair["truth_hu"][::-1, size // 2, :]
    return rows


def run_cv(steps: int, batch: int, refine_steps: int, hires: int | None, patients: list[str] | None = None,
           models: tuple[str, ...] = tuple(MODELS), anatomy: bool = False, out: Path = OUT) -> list[dict]:
    """Train and score every fold (resumable); returns every row of every fold."""
    rows = []
    for held_out in patients or list(PATIENTS):
        for model in models:
            train_fold(model, held_out, steps, batch, anatomy, out)
        scores_json = out / held_out / "scores.json"
        if not scores_json.is_file():
            t0 = time.perf_counter()
            result = score_fold(held_out, refine_steps, hires, models, out)
            result.update(steps=steps, batch=batch, refine_steps=refine_steps, anatomy=anatomy, models=list(models),
                          score_seconds=time.perf_counter() - t0)
            scores_json.write_text(json.dumps(result, indent=1))
        rows += json.loads(scores_json.read_text())["rows"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per fold and model")
    parser.add_argument("--batch", type=int, default=2, help="pairs per step")
    parser.add_argument("--refine-steps", type=int, default=50)
    parser.add_argument("--hires", type=int, default=128,
                        help=f"also score the implicit model of the {HIRES_PATIENT} fold at this grid (0: no)")
    parser.add_argument("--patients", nargs="*", choices=list(PATIENTS), help="folds to run (default all)")
    parser.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS), help="architectures to train per fold")
    parser.add_argument("--anatomy", action="store_true", help="anatomical augmentation on (about 2x the CPU time per step)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the fold runs and scores")
    parser.add_argument("--final", action="store_true",
                        help=f"instead of the folds, train the recipe on every patient (folder {ALL}/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.final:
        for model in args.models:
            train_fold(model, ALL, args.steps, args.batch, args.anatomy, args.out)
        return
    rows = run_cv(args.steps, args.batch, args.refine_steps, args.hires or None, args.patients, tuple(args.models),
                  args.anatomy, args.out)
    log.info("%d rows in %s", len(rows), args.out)


if __name__ == "__main__":
    main()
