"""Low-dose CT denoising benchmark (issue 14, item 5): every method in one run on held-out real CT.

Cases (held out from training, ``train/configs/denoise.yaml``): the chest ``pyradiomics_lung1`` at heart level
and the head ``tcia_cptac_gbm_head``: a few axial slices, one neighbour on each side for the 2.5D networks and a
separate slice to tune the Gaussian filter on. Low-contrast spheres go into the standard dose, each dose is then
simulated on whole slices (:func:`ctsr_models.physics.dose.simulate_low_dose`, fixed seed), then all is cropped.
Methods: low-dose input, Gaussian, non-local means, BM3D, every ``denoise`` model of the manifest (diffusion
ones with 1 sample and the mean of K). :data:`NOTES` (written into the report) says how each number is made.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/denoise_benchmark.py [--quick]`` (writes the ``denoise_benchmark``
section of ``docs/benchmarks.md`` and ``docs/figures/denoise_benchmark.png``, or ``--out-md``/``--fig``).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import io
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt, gaussian_filter

from ctsr_models.inference import DenoiseOptions, denoise, pick_device
from ctsr_models.inference.models import ModelKind, ModelSpec, read_manifest
from ctsr_models.io import Volume, read_volume
from ctsr_models.metrics import HU_MAX, HU_MIN, mae_body, psnr, ssim2d
from ctsr_models.metrics.noise import (homogeneous_mask, insert_spheres, mean_frequency, noise_power_spectrum,
                                       noise_std, peak_frequency, sphere_cnr, sphere_fraction)
from ctsr_models.physics.dose import DEFAULT_VIEWS, DoseSettings, simulate_low_dose

from report import write_section
from sr_benchmark import TISSUES, tissue_means

log = logging.getLogger("denoise_benchmark")
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SEED = 14
DOSES = (0.25, 0.10)
GAUSS_SIGMAS_PX = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5)
SPHERES = ((10.0, 20.0), (10.0, 10.0), (5.0, 20.0), (5.0, 10.0))  # (diameter mm, contrast HU), largest first
SAMPLES_K = 4  # diffusion models: the mean of K samples beside one sample
NPS_PATCHES = (32, 24, 16)  # the largest patch that gives at least MIN_PATCHES patches is used
MIN_PATCHES = 16
WINDOW = (-160.0, 240.0)
MODEL_KINDS = ("regression", "diffusion")  # timed on whole slices for the runtime target (diffusion: 1 sample)
Sphere = tuple[tuple[float, float, float], float, float]  # (z, y, x) centre in the scored crop, radius mm, HU


@dataclass(frozen=True)
class Case:
    """A held-out volume: its first scored slice, a tuning slice elsewhere and the crop centre ``(y, x)``."""

    name: str
    path: str
    first: int
    tuning: int
    centre: tuple[int, int]


CASES = (Case("chest (lung1, heart level)", "ct/pyradiomics_lung1/lung1_image.nrrd", 5, 1, (320, 290)),
         Case("head (CPTAC-GBM)", "ct/tcia_cptac_gbm_head/head_ct_1.25mm.nii.gz", 88, 100, (285, 228)))


@dataclass
class Prepared:
    """One case at one dose: cropped ``(n, h, w)`` arrays; ``low``/``standard`` hold one neighbour slice at each end."""

    case: Case
    dose: float
    spacing: tuple[float, float, float]
    low: Volume
    standard: np.ndarray
    spheres: list[Sphere]
    mask: np.ndarray
    known_sd: np.ndarray  # (n - 2,) HU
    full_low: Volume  # the whole low-dose slices before the crop (for the runtime target)
    gauss_sigma: float  # tuned on the tuning slice
    blank_cnr: list[float]  # CNR of the standard dose at the sphere sites before the spheres went in


@dataclass(frozen=True)
class Method:
    """A denoiser: ``run(prepared)`` gives the scored slices. ``kind``: ``""`` (classical), ``regression``,
    ``diffusion`` (one sample) or ``diffusion mean``; models also denoise the two neighbour slices."""

    run: Callable[[Prepared], np.ndarray]
    kind: str = ""


def _crop(array: np.ndarray, centre: tuple[int, int], size: int) -> tuple[np.ndarray, int, int]:
    y0, x0 = (int(np.clip(c - size // 2, 0, n - size)) for c, n in zip(centre, array.shape[-2:]))
    return array[..., y0:y0 + size, x0:x0 + size], y0, x0


def place_spheres(standard: np.ndarray, spacing: tuple[float, float, float]) -> list[Sphere]:
    """Centres of :data:`SPHERES` in flat soft tissue of the scored slices ``(n, h, w)``: config ``i`` on slice
    ``i mod n``, where its background annulus is deepest inside the flat region and away from earlier spheres."""
    placed = []
    dist_mm = [distance_transform_edt(m, sampling=spacing[1::-1]) for m in
               homogeneous_mask(standard, hu_range=(0.0, 100.0), max_std_hu=15.0)]
    yy, xx = np.mgrid[:standard.shape[1], :standard.shape[2]]
    for i, (diameter, contrast) in enumerate(SPHERES):
        k, r = i % standard.shape[0], diameter / 2
        score = dist_mm[k].copy()
        for (_, cy, cx), r_prev, _ in placed:
            score[np.hypot((yy - cy) * spacing[1], (xx - cx) * spacing[0]) < 2.5 * (r_prev + r)] = -1.0
        border = int(np.ceil(2.5 * r / spacing[0])) + 1
        score[:border], score[-border:], score[:, :border], score[:, -border:] = -1.0, -1.0, -1.0, -1.0
        cy, cx = np.unravel_index(int(np.argmax(score)), score.shape)
        placed.append(((float(k), float(cy), float(cx)), r, contrast))
    return placed


def _sphere_zone(shape: tuple[int, ...], spacing: tuple[float, float, float], spheres: list[Sphere]) -> np.ndarray:
    """Voxels within 2.5 radii (the CNR annulus) plus 2 pixels of a sphere's centre: kept out of the noise regions."""
    zone = np.zeros(shape, bool)
    for centre, r, _ in spheres:
        box, fraction = sphere_fraction(shape, spacing, centre, 2.5 * r + 2 * spacing[0])
        zone[box] |= fraction > 0
    return zone


def _simulate(volume: Volume, settings: DoseSettings, cache: Path, tag: str) -> np.ndarray:
    """Low-dose slices (cached as float32 ``.npy``: the simulation is a pure function of its inputs)."""
    path = cache / f"{tag}_d{settings.dose:g}_v{settings.views}_s{SEED}.npy"
    if path.exists():
        return np.load(path)
    low = simulate_low_dose(volume, settings, seed=SEED).array
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, low)
    return low


def prepare(case: Case, doses: tuple[float, ...], crop: int, n_scored: int, cache: Path,
            views: int = DEFAULT_VIEWS) -> list[Prepared]:
    """Spheres into the standard dose, then each dose simulated on whole slices, then the crop."""
    volume = read_volume(DATA / case.path)
    stop = case.first + n_scored
    block = volume.array[case.first - 1:stop + 1].astype(np.float32)
    scored_std, y0, x0 = _crop(block[1:-1], case.centre, crop)
    spheres = place_spheres(scored_std, volume.spacing)
    full_centres = [(cz + 1, cy + y0, cx + x0) for (cz, cy, cx), _, _ in spheres]
    for (_, r, contrast), centre in zip(spheres, full_centres):
        block = insert_spheres(block, volume.spacing, [centre], r, contrast)
    mask = homogeneous_mask(scored_std) & ~_sphere_zone(scored_std.shape, volume.spacing, spheres)
    block_vol = volume.replace(array=block, origin=tuple(volume.index_to_physical([0, 0, case.first - 1])))
    tune_vol = volume.replace(array=volume.array[case.tuning:case.tuning + 1].astype(np.float32))
    standard = _crop(block, case.centre, crop)[0]
    ref_sd = noise_std(standard[1:-1], mask)
    out, tag = [], f"{Path(case.path).name.split('.')[0]}_{case.first}_{stop}_crop{crop}"
    for dose in doses:
        low = _simulate(block_vol, DoseSettings(dose=dose, views=views), cache, tag)
        inserted = [float((lo - st)[st > -500.0].std()) for lo, st in zip(low[1:-1], block[1:-1])]
        low_vol = block_vol.replace(array=_crop(low, case.centre, crop)[0].copy(),
                                    origin=tuple(block_vol.index_to_physical([x0, y0, 0])))
        tune = _simulate(tune_vol, DoseSettings(dose=dose, views=views), cache, f"{tag}_tune{case.tuning}")
        sigma = tune_gaussian(_crop(tune, case.centre, crop)[0][0], _crop(tune_vol.array, case.centre, crop)[0][0])
        out.append(Prepared(case, dose, volume.spacing, low_vol, standard, spheres, mask,
                            np.hypot(np.asarray(inserted), ref_sd), block_vol.replace(array=low), sigma,
                            [sphere_cnr(scored_std, volume.spacing, c, r) for c, r, _ in spheres]))
    return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measured(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float, float, float]:
    """``fn()`` as float32, its wall seconds, and the peak resident memory (MB) above the level before it and
    of the whole process, sampled every 10 ms from ``/proc/self/statm`` (torch and C libraries included)."""
    base, peak, done = _rss_bytes(), [0], threading.Event()

    def watch() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], _rss_bytes())

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    start = time.perf_counter()
    out = np.asarray(fn(), dtype=np.float32)
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    top = max(peak[0], _rss_bytes(), base)
    return out, seconds, (top - base) / 2 ** 20, top / 2 ** 20


def tune_gaussian(low: np.ndarray, standard: np.ndarray) -> float:
    """The sigma (pixels) of :data:`GAUSS_SIGMAS_PX` with the best PSNR on the tuning slice ``(h, w)``."""
    return max(GAUSS_SIGMAS_PX, key=lambda s: psnr(gaussian_filter(low, s), standard))


def _nlm(p: Prepared) -> np.ndarray:
    from skimage.restoration import denoise_nl_means, estimate_sigma

    out = []
    for s in p.low.array[1:-1].astype(np.float64):
        sigma = float(estimate_sigma(s))
        out.append(denoise_nl_means(s, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True))
    return np.stack(out).astype(np.float32)


def _bm3d(p: Prepared) -> np.ndarray:
    import bm3d

    span = HU_MAX - HU_MIN
    out = [bm3d.bm3d((s - HU_MIN) / span, sigma_psd=sd / span) * span + HU_MIN
           for s, sd in zip(p.low.array[1:-1].astype(np.float64), p.known_sd)]
    return np.stack(out).astype(np.float32)


def _model(spec: ModelSpec, device: str, samples: int | None) -> Callable[[Prepared], np.ndarray]:
    """``ctsr-denoise``'s function: :func:`denoise` for a regression model (what ``denoise_detailed`` runs for
    one), ``ldm_denoise.denoise_detailed`` with ``samples`` and the seed for a diffusion model."""
    def run(p: Prepared) -> np.ndarray:
        if samples is None:
            return denoise(p.low, DenoiseOptions(model=spec.name, device=device)).array[1:-1]
        from ctsr_models.inference.ldm_denoise import LDMDenoiseOptions, denoise_detailed

        options = LDMDenoiseOptions(model=spec.name, device=device, samples=samples, seed=SEED)
        return denoise_detailed(p.low, options)[0].array[1:-1]
    return run


def methods(device: str, bm3d_on: bool) -> dict[str, Method]:
    """The methods of this run: classical ones and every shipped ``denoise`` model (diffusion: 1 and K samples)."""
    table = {"low-dose input": Method(lambda p: p.low.array[1:-1]),
             "Gaussian": Method(lambda p: gaussian_filter(p.low.array[1:-1], (0, p.gauss_sigma, p.gauss_sigma))),
             "NLM": Method(_nlm)}
    if bm3d_on:
        table["BM3D"] = Method(_bm3d)
    for name, spec in sorted(read_manifest(task="denoise")[0].items()):
        if spec.kind is not ModelKind.DIFFUSION:
            table[name] = Method(_model(spec, device, None), "regression")
        elif importlib.util.find_spec("ctsr_models.inference.ldm_denoise") is None:
            log.warning("%s is a diffusion model but ctsr_models.inference.ldm_denoise is missing: skipped", name)
        else:
            table[f"{name} (1 sample)"] = Method(_model(spec, device, 1), "diffusion")
            table[f"{name} (mean of {SAMPLES_K})"] = Method(_model(spec, device, SAMPLES_K), "diffusion mean")
    return table


def nps_summary(noise: np.ndarray, mask: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """Peak and mean frequency (cycles/mm) of the radial NPS, with the patch size that was used."""
    for patch in NPS_PATCHES:
        try:
            nps = noise_power_spectrum(noise, mask, spacing[:2], patch=patch, step=patch // 4, detrend="quadratic")
        except ValueError:
            continue
        if nps.n_patches >= MIN_PATCHES or patch == NPS_PATCHES[-1]:
            f, values = nps.radial()
            return {"nps_peak": peak_frequency(f, values), "nps_mean": mean_frequency(f, values),
                    "nps_patch": patch, "nps_patches": nps.n_patches}
    return {"nps_peak": float("nan"), "nps_mean": float("nan"), "nps_patch": 0, "nps_patches": 0}


def score(out: np.ndarray, p: Prepared) -> dict:
    """Every metric of one method's scored slices against the standard dose."""
    ref = p.standard[1:-1]
    pairs = [(tissue_means(o, r), tissue_means(r, r)) for o, r in zip(out, ref)]
    bias = {t: np.array([got[t] - want[t] for got, want in pairs]) for t in TISSUES}
    return {"psnr": psnr(out, ref), "ssim2d": ssim2d(out, ref), "mae_hu_body": mae_body(out, ref),
           "psnr_1000": psnr(out, ref, -1000.0, 1000.0), "noise_sd": noise_std(out, p.mask),
           **nps_summary(out - ref, p.mask, p.spacing),
           "bias": {t: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for t, v in bias.items()},
           "cnr": [sphere_cnr(out, p.spacing, c, r) for c, r, _ in p.spheres]}


def run_prepared(p: Prepared, table: dict[str, Method]) -> tuple[list[dict], dict[str, np.ndarray]]:
    """All methods on one case and dose; returns the rows and the outputs (for the figure)."""
    ref = p.standard[1:-1]
    ref_nps = nps_summary(ref, p.mask, p.spacing)
    rows = [{"case": p.case.name, "dose": p.dose, "method": "standard dose", "noise_sd": noise_std(ref, p.mask),
             **ref_nps, "cnr": [sphere_cnr(ref, p.spacing, c, r) for c, r, _ in p.spheres],
             "blank_cnr": p.blank_cnr}]
    outputs = {"standard dose": ref}
    for name, method in table.items():
        out, seconds, peak_mb, rss_mb = measured(lambda: method.run(p))
        slices = p.low.shape[0] if method.kind else out.shape[0]
        shown = f"Gaussian (sigma {p.gauss_sigma:g} px)" if name == "Gaussian" else name
        row = {"case": p.case.name, "dose": p.dose, "method": shown, "kind": method.kind, **score(out, p),
               "seconds": seconds, "s_per_slice": seconds / slices if name != "low-dose input" else 0.0,
               "peak_mb": peak_mb, "rss_mb": rss_mb}
        row["nps_shift_pct"] = 100.0 * (row["nps_peak"] / ref_nps["nps_peak"] - 1.0)
        rows.append(row)
        outputs[row["method"]] = out
        log.info("%s %g %s: PSNR %.2f dB, %.1f s", p.case.name, p.dose, shown, row["psnr"], seconds)
    return rows, outputs


def figure(outputs: dict[str, np.ndarray], p: Prepared, path: Path) -> None:
    """Low dose, each method and the standard dose (window -160..240 HU), and each minus the standard dose."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    k = int(p.spheres[0][0][0])
    ref = outputs["standard dose"][k]
    names = [n for n in outputs if n != "standard dose"] + ["standard dose"]
    fig, axes = plt.subplots(2, len(names), figsize=(2.6 * len(names), 5.6), squeeze=False)
    for j, name in enumerate(names):
        image = outputs[name][k]
        axes[0, j].imshow(image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], interpolation="nearest")
        axes[0, j].set_title(name, fontsize=8)
        if name != "standard dose":
            axes[1, j].imshow(image - ref, cmap="RdBu_r", vmin=-100, vmax=100, interpolation="nearest")
            axes[1, j].set_xlabel(f"{name} - standard", fontsize=7)
    plt.setp(axes, xticks=[], yticks=[])
    axes[1, -1].axis("off")
    fig.suptitle(f"{p.case.name}, {p.dose:.0%} dose, scored slice {k + 1} of {len(p.standard) - 2}: "
                 f"window {WINDOW[0]:g}..{WINDOW[1]:g} HU; differences -100..100 HU", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=80)
    plt.close(fig)
    Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)  # noise compresses badly: 256 colours


def _fmt(value: float, spec: str = ".1f") -> str:
    return "n/a" if value is None or not np.isfinite(value) else format(value, spec)


def tables(rows: list[dict]) -> list[str]:
    """Two markdown tables: fidelity and noise; bias, low-contrast spheres and cost."""
    one = ["| case | dose | method | PSNR dB | SSIM 2D | MAE body HU | PSNR [-1000,1000] dB | noise SD HU | "
           "NPS peak c/mm (shift) | NPS mean c/mm |", "|---|---|---|---|---|---|---|---|---|---|"]
    two = ["| case | dose | method | bias lung / fat / soft HU | "
           + " | ".join(f"CNR {d:g} mm {c:+g}" for d, c in SPHERES) + " | s per slice | peak MB (process) |",
           "|---|---|---|---|" + "---|" * len(SPHERES) + "---|---|"]
    for r in rows:
        key = f"| {r['case']} | {r['dose']:.0%} | {r['method']} |"
        shift = f" ({_fmt(r['nps_shift_pct'], '+.0f')} %)" if "nps_shift_pct" in r else ""
        one.append(f"{key} {_fmt(r.get('psnr'), '.2f')} | {_fmt(r.get('ssim2d'), '.4f')} | "
                   f"{_fmt(r.get('mae_hu_body'))} | {_fmt(r.get('psnr_1000'), '.2f')} | {_fmt(r['noise_sd'])} | "
                   f"{_fmt(r['nps_peak'], '.3f')}{shift} | {_fmt(r['nps_mean'], '.3f')} |")
        bias = " / ".join(_fmt(r["bias"][t], "+.1f") for t in TISSUES) if "bias" in r else "(reference)"
        cost = f"{r['s_per_slice']:.2f} | {r['peak_mb']:.0f} ({r['rss_mb']:.0f})" if "seconds" in r else "- | -"
        blank = [f" ({b:+.2f} without)" for b in r.get("blank_cnr", [])] or [""] * len(SPHERES)
        cnr = " | ".join(_fmt(c, ".2f") + b for c, b in zip(r["cnr"], blank))
        two.append(f"{key} {bias} | {cnr} | {cost} |")
    return [*one, "", *two]


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _case_targets(name: str, r: dict, bm3d: dict | None, diffusion: bool) -> str:
    bias = max((abs(v) for v in r["bias"].values() if np.isfinite(v)), default=float("nan"))
    parts = [f"NPS peak {_fmt(r['nps_shift_pct'], '+.1f')} % vs standard dose (within 10 %: "
             f"{_verdict(abs(r['nps_shift_pct']) <= 10)})", f"largest tissue bias {bias:.1f} HU (within 3: "
             f"{_verdict(bias <= 3)})"]
    if bm3d is not None and r is not bm3d:
        gain, wins = r["psnr"] - bm3d["psnr"], sum(a >= b for a, b in zip(r["cnr"], bm3d["cnr"]))
        parts.insert(0, f"PSNR {gain:+.2f} dB vs BM3D" + (f" (+1 dB: {_verdict(gain >= 1)})" if diffusion else ""))
        parts.append(f"CNR >= BM3D's for {wins} of {len(SPHERES)} spheres ({_verdict(wins == len(SPHERES))})")
    return f"- {r['case']}, {name}: " + "; ".join(parts)


def targets(rows: list[dict], timing: dict[str, tuple[float, float, float]], n_slices: int) -> list[str]:
    """Issue 14's benchmark targets on this run's numbers (25 % dose), met or missed; ``timing``: seconds, MB
    above entry and process MB of each model (diffusion: one sample) on ``n_slices`` whole 512x512 slices."""
    lines = ["**Targets (issue 14), at 25 % dose** (the autoencoder's target belongs to its model card):", ""]
    at25 = [r for r in rows if abs(r["dose"] - 0.25) < 1e-9 and "seconds" in r]
    names = {kind: list(dict.fromkeys(r["method"] for r in at25 if r["kind"] == kind))
             for kind in ("diffusion", "diffusion mean", "regression")}
    if not names["diffusion mean"]:
        lines.append("- Latent diffusion denoiser (`ldm_denoise_v1`): **not yet shipped** at the time of this run (no "
                     "`denoise` model of kind `diffusion` in `ctsr_models/weights/models.json`): its targets are not "
                     "measured; BM3D and the regression model are reported as the targets ask.")
    for case in dict.fromkeys(r["case"] for r in at25):
        by = {r["method"]: r for r in at25 if r["case"] == case}
        for name in [*names["diffusion mean"], *(["BM3D"] if "BM3D" in by else []), *names["regression"]]:
            lines.append(_case_targets(name, by[name], by.get("BM3D"), name in names["diffusion mean"]))
    for name, (seconds, _, rss) in timing.items():
        minutes, peak = seconds / n_slices * 100 / 60, max([rss] + [r["rss_mb"] for r in rows if r["method"] == name])
        lines.append(f"- {name}: {n_slices} whole 512x512 slices in {seconds:.1f} s, so 512x512x100 in about "
                     f"{minutes:.1f} min (5 min: {_verdict(minutes <= 5)}); process peak {peak:.0f} MB (8 GB: "
                     f"{_verdict(peak <= 8192)})")
    untimed = [m for m in dict.fromkeys(r["method"] for r in rows if r.get("kind") == "diffusion") if m not in timing]
    lines += [f"- {name}: not timed on whole slices in this run (`--quick` times the regression models only)"
              for name in untimed]
    return lines


NOTES = f"""How each number is made:

- PSNR / SSIM / MAE: DESIGN.md's convention (HU clipped to [-1024, 3071] -> [0, 1], data range 1; mean axial 2D SSIM;
  MAE where the standard dose > -500 HU) over the scored slices of the crop, against the standard dose *with* the
  spheres (inserted before the dose simulation, so every method sees them under the same noise). No 3D SSIM: the few
  slices are fewer than its 11-voxel support.
- Noise SD: root mean of the local variance (15x15-pixel windows) over the homogeneous regions of the standard dose
  (local SD < 10 HU, local mean -150..100 HU, eroded 2 pixels, sphere surroundings excluded); the standard-dose row is
  the scan's own noise.
- NPS: of `method - standard dose` in square patches wholly inside those regions (patch {NPS_PATCHES[0]} px, or smaller
  when fewer than {MIN_PATCHES} fit; stride a quarter patch), each detrended by a fitted quadratic surface, radially
  averaged; peak = largest ring refined by a parabola; mean = NPS-weighted mean frequency of the radial profile. The
  standard-dose row is the NPS of the standard-dose image itself (its own noise, same patches and detrending); the
  shift is against its peak. The difference also holds the standard dose's own noise (SD in the table), small next to
  the low-dose noise. The simulator reconstructs the inserted noise with the ramp filter, sharper than these scanners'
  kernels (see dose.md), so the low-dose NPS peaks about twice as high as the standard dose's: a method that keeps the
  low-dose texture lands far above it, one that over-smooths below it.
- Bias: mean HU of the method minus the standard dose's in the lung (-950..-700), fat (-150..-50) and soft-tissue
  (20..80 HU) classes of the standard dose, eroded 2 pixels in-plane (`sr_benchmark.tissue_means`), per slice, then
  averaged over slices; n/a where a class is absent from the crop.
- CNR: in the axial slice through each sphere's centre, mean of the central disc (0.6 of the cross-section radius)
  minus the mean of a 1.5r..2.5r annulus, over the annulus SD. Spheres are placed where flat soft tissue (local SD < 15
  HU, mean 0..100 HU) is deepest around them, one configuration per scored slice. One sphere per configuration: a
  single CNR is uncertain by about ±0.3, and the tissue at a site offsets it (the standard-dose rows show in
  parentheses the CNR there before the sphere went in).
- Gaussian: `scipy.ndimage.gaussian_filter` in-plane, sigma tuned on the separate tuning slice (never on the scored
  slices). NLM: `skimage.restoration.denoise_nl_means` (5x5 patches, distance 6, fast mode), h = 0.8 sigma, sigma =
  `estimate_sigma` of the slice. BM3D: PyPI `bm3d` (profile `np`, white-noise model) on each slice, HU mapped linearly
  by the metric window to [0, 1] without clipping, `sigma_psd` = sqrt(inserted-noise SD in the body^2 + standard-dose
  noise SD^2) / 4095 per slice: the known noise level (the inserted noise is really ramp-coloured).
- Seconds per slice: wall time of a method over its slices (models also denoise the two neighbour slices), one
  torch/OpenMP thread; peak MB: largest resident memory above the process's level before the method (in parentheses: of
  the whole process; a first call allocates, later ones reuse what the process holds), sampled every 10 ms from
  `/proc/self/statm`. The runtime target times each model (diffusion: one sample) once more on the chest's whole
  512x512 low-dose slices.
"""


def _case_line(p: Prepared, prepared: list[Prepared]) -> str:
    sigmas = ", ".join(f"{q.dose:.0%}: {q.gauss_sigma:g} px" for q in prepared if q.case is p.case)
    spheres = "; ".join(f"{2 * r:g} mm {c:+g} HU on scored slice {int(z) + 1} at (y {int(y)}, x {int(x)})"
                        for (z, y, x), r, c in p.spheres)
    last = p.case.first + len(p.standard) - 3
    return (f"- {p.case.name}: `{p.case.path}`, scored slices {p.case.first}-{last} (0-based, {p.spacing[2]:g} mm "
            f"apart, {p.spacing[0]:.3f} mm pixels; slices {p.case.first - 1} and {last + 1} only feed the 2.5D "
            f"networks), crop centre (y, x) {p.case.centre}; Gaussian sigma tuned on slice {p.case.tuning} over "
            f"{', '.join(f'{s:g}' for s in GAUSS_SIGMAS_PX)} px: {sigmas}; spheres (crop pixels): {spheres}; "
            f"{int(p.mask.sum())} homogeneous-region pixels.")


def markdown(rows: list[dict], prepared: list[Prepared], env: dict, command: str, timing: dict, figure_rel: str) -> str:
    """The ``denoise_benchmark`` section of docs/benchmarks.md."""
    crop = prepared[0].low.shape[1]
    p0 = prepared[0]
    lines = ["## Low-dose CT denoising (`benchmarks/denoise_benchmark.py`)", "", f"Command: `{command}`  ",
             f"Machine: {env['machine']}; torch {env['torch']}; device {env['device']}; {env['date']}; load average "
             f"{env['load']} at the start (runtimes are under that load).", "",
             "Held-out real CT, never used in training. Low dose simulated with `ctsr_models.physics.dose` "
             f"(`DoseSettings(dose=d)`: 1e5 photons per ray at standard dose, {env['views']} views, ramp FBP, no "
             f"electronic noise; seed {SEED}) on whole 512-pixel slices, then cropped to {crop}x{crop} pixels:", ""]
    lines += [_case_line(p, prepared) for p in {id(q.case): q for q in prepared}.values()]
    lines += ["", *tables(rows), "", *targets(rows, timing, prepared[0].full_low.shape[0]), "",
              f"![{p0.case.name}, {p0.dose:.0%} dose: low dose, each method, standard dose; differences]({figure_rel})",
              "", NOTES]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: one case, 25 %% dose, two slices, 96-pixel crop, 90 views, no BM3D")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out-md", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--fig", type=Path, default=REPO / "docs" / "figures" / "denoise_benchmark.png")
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "denoise_benchmark",
                        help="simulated low-dose slices are kept here (the run is resumable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    cases, doses, crop, n_scored, views = (CASES[:1], DOSES[:1], 96, 2, 90) if args.quick else \
        (CASES, DOSES, 256, 4, DEFAULT_VIEWS)
    env = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"{torch.get_num_threads()} torch thread(s)", "torch": torch.__version__,
           "device": pick_device(args.device).type, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "load": " / ".join(f"{v:.1f}" for v in os.getloadavg()), "views": views}
    table = methods(args.device, not args.quick)
    log.info("methods: %s", ", ".join(table))
    prepared = [p for case in cases for p in prepare(case, doses, crop, n_scored, args.cache, views)]
    results = [run_prepared(p, table) for p in prepared]
    rows = [row for case_rows, _ in results for row in case_rows]
    whole = dataclasses.replace(prepared[0], low=prepared[0].full_low)  # the runtime target's 512x512 slices
    # a --quick run times the regression models only (a diffusion model takes about 25 s per whole slice on the CPU)
    timed = ("regression",) if args.quick else MODEL_KINDS
    timing = {name: measured(lambda m=m: m.run(whole))[1:] for name, m in table.items() if m.kind in timed}
    figure(results[0][1], prepared[0], args.fig)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    command = "OMP_NUM_THREADS=1 python benchmarks/denoise_benchmark.py" + (" --quick" if args.quick else "")
    figure_rel = os.path.relpath(args.fig, args.out_md.parent)
    write_section("denoise_benchmark", markdown(rows, prepared, env, command, timing, figure_rel), args.out_md)


if __name__ == "__main__":
    main()
