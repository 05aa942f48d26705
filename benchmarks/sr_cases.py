"""Cases and scoring of the through-plane SR benchmark (``sr_benchmark.py``).

A case is a held-out real thin CT (cropped in-plane to the body), a factor ``k`` and a slab profile: the thick
input is simulated with :func:`ctsr_models.physics.simulate_thick_slices` (slab thickness = spacing =
``k`` x the truth's slice spacing, DESIGN.md convention, rect or Gaussian), enhanced back to the truth's
spacing by every method, and scored by :func:`score` (the one evaluator, on the truth grid, over the truth
slices whose centres lie inside the thick stack less one slab at each end), with the data-consistency RMSE
(HU inside the body) of each output against the simulated slabs and the tissue mean-HU bias.

Held-out regions (never trained on, see the model cards): the chest 4D-CT lower 20 % (2 mm truth), the
TotalSegmentator aorta crop (another patient, 1.5 mm), the LAST 25 % of the slices of the head CT (1.25 mm;
the head model's training holds that end out), and the TotalSegmentator abdomen-pelvis (3 mm: only x2 gives
a slab, 6 mm, in the range the models serve).
"""
from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctsr_models.data.inplane import body_crop
from ctsr_models.inference import through_plane_grid
from ctsr_models.io import Volume, read_volume, write_volume
from ctsr_models.metrics import compare_volumes
from ctsr_models.physics import simulate_thick_slices
from ctsr_models.physics.consistency import SlabOperator, consistency_rmse
from ctsr_models.physics.profile_estimate import EstimateOptions, estimate_slice_profile

log = logging.getLogger("sr_benchmark")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TISSUES = {"lung": (-950.0, -700.0), "fat": (-150.0, -50.0), "soft tissue": (20.0, 80.0)}
BASELINES = ("linear", "cubic", "lanczos")


@dataclass(frozen=True)
class Region:
    """A held-out thin volume: which part of it, how much in-plane, which factors.

    Attributes:
        slug: short name (file names, ``--cases``).
        name: what it is, for the table.
        path: under ``../shared/data``.
        z_fraction: ``[lo, hi)`` fraction of the stack kept (the held-out part).
        inplane: rows and columns kept, centred on the body (bounds the run time).
        factors: slab thickness / truth spacing ratios simulated.
    """

    slug: str
    name: str
    path: str
    z_fraction: tuple[float, float]
    inplane: int
    factors: tuple[int, ...]


REGIONS = (
    Region("chest", "chest 4D-CT, lower 20 % (2 mm truth)", "ct/chest_4dct_phase00_dicom", (0.8, 1.0), 128, (2, 3, 5)),
    Region("aorta", "aorta CT crop, other patient, middle half of its slices (1.5 mm truth)",
           "ct/totalseg/aorta_report__test_result__models__ct_cropped.nii.gz", (0.25, 0.75), 80, (2, 3, 5)),
    Region("head", "head CT, last 25 % of the slices (1.25 mm truth)", "ct/tcia_cptac_gbm_head/head_ct_1.25mm.nii.gz",
           (0.75, 1.0), 160, (2, 3, 5)),
    Region("abdomen", "abdomen-pelvis (3 mm truth; x2 only)", "ct/totalseg/example_ct.nii.gz", (0.0, 1.0), 80, (2,)),
)
PROFILES = ("rect", "gaussian")
ECLARE_REGIONS = ("chest", "head")  # adaptation and ECLARE: a chest and a non-chest region (CPU time)


@dataclass(frozen=True)
class Case:
    """One simulated acquisition of a region: factor and profile, and what runs on it beyond the baselines."""

    region: Region
    factor: int
    profile: str
    adapt: bool
    eclare: bool

    @property
    def slug(self) -> str:
        return f"{self.region.slug}_x{self.factor}_{self.profile}"

    @property
    def name(self) -> str:
        return f"{self.region.slug} x{self.factor} {self.profile}"


def all_cases(adapt_factor: int = 3) -> list[Case]:
    """Every region x factor with rect slabs, and Gaussian slabs at the region's main factor ``adapt_factor``
    (the abdomen's only factor, 2, for the abdomen); adaptation and ECLARE on the main rect case of the
    :data:`ECLARE_REGIONS`. Main cases come first (a run cut short still covers every region)."""
    cases = []
    for region in REGIONS:
        main = adapt_factor if adapt_factor in region.factors else region.factors[0]
        for factor in region.factors:
            for profile in PROFILES:
                if profile == "gaussian" and factor != main:
                    continue
                chosen = factor == main and profile == "rect" and region.slug in ECLARE_REGIONS
                cases.append(Case(region, factor, profile, chosen, chosen))
    return sorted(cases, key=lambda c: (c.factor != (adapt_factor if adapt_factor in c.region.factors
                                                     else c.region.factors[0]), c.profile != "rect"))


def z_crop(volume: Volume, fraction: tuple[float, float]) -> Volume:
    """The slices in a ``[lo, hi)`` fraction of the stack, with their true origin."""
    k0, k1 = (int(round(f * volume.shape[0])) for f in fraction)
    return volume.replace(array=volume.array[k0:k1].copy(), origin=tuple(volume.index_to_physical([0, 0, k0])))


_TRUTHS: dict[str, Volume] = {}


def truth_of(region: Region, inplane: int | None = None) -> Volume:
    """The held-out part of the region, cropped in-plane to ``inplane`` (default the region's) around the body."""
    key = f"{region.slug}:{inplane}"
    if key not in _TRUTHS:
        vol = z_crop(read_volume(DATA / region.path), region.z_fraction)
        crop = body_crop(vol, inplane or region.inplane)
        _TRUTHS[key] = crop.replace(array=np.ascontiguousarray(crop.array, dtype=np.float32))
    return _TRUTHS[key]


def simulate(case: Case, truth: Volume) -> tuple[Volume, float]:
    """The thick input of ``case`` and its slab thickness (= spacing) in mm."""
    thickness = case.factor * truth.spacing[2]
    return simulate_thick_slices(truth, thickness, thickness, case.profile), thickness


def tissue_means(hu: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Mean HU of ``hu`` inside the tissue classes defined on ``ref`` (same grid), each class mask
    eroded by 2 voxels so that the means measure intensity drift, not blur at tissue edges."""
    from scipy.ndimage import binary_erosion

    means = {}
    for name, (lo, hi) in TISSUES.items():
        mask = binary_erosion((ref >= lo) & (ref <= hi), iterations=2) & np.isfinite(hu)
        means[name] = float(hu[mask].mean()) if mask.sum() >= 50 else float("nan")
    return means


def on_truth_grid(out: Volume, truth: Volume) -> np.ndarray:
    """The output's slices at the truth's slice positions (linear along z; NaN outside the output)."""
    return _resample_z(out.array, out.slice_positions(), truth.slice_positions())


def _resample_z(array: np.ndarray, positions: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``array`` ``(z, y, x)`` with slices at ``positions`` (increasing, mm) linearly resampled at ``wanted``."""
    index = np.interp(wanted, positions, np.arange(len(positions)), left=np.nan, right=np.nan)
    out = np.full((len(wanted),) + array.shape[1:], np.nan, dtype=np.float32)
    for i, f in enumerate(index):
        if np.isfinite(f):
            k = min(int(f), len(positions) - 2) if len(positions) > 1 else 0
            w = f - k
            out[i] = array[k] if len(positions) == 1 else (1 - w) * array[k] + w * array[k + 1]
    return out


def score(out: Volume, truth: Volume, thick: Volume, thickness: float, profile: str) -> dict:
    """PSNR/SSIM/MAE on the truth grid, tissue mean HU, and the data-consistency RMSE (HU) of ``out``.

    The consistency is measured on the DESIGN.md output grid of ``thick`` (``out`` resampled onto it
    when it lies elsewhere, e.g. ECLARE's own grid): the output degraded again with the true slab
    profile against the simulated slabs, inside the body (slabs > -500 HU).
    """
    s = truth.spacing[2]
    scores = compare_volumes(out, truth, border_mm=thickness - s / 2)
    pos = truth.slice_positions()
    lo, hi = scores["z_range_mm"]
    idx = np.flatnonzero((pos >= lo - 1e-3) & (pos <= hi + 1e-3))
    scored = slice(int(idx[0]), int(idx[-1]) + 1)
    ref = truth.array[scored]
    grid = through_plane_grid(thick, s)
    grid_pos = thick.slice_positions()[0] + grid.first_offset_mm + s * np.arange(grid.n_slices)
    on_grid = _resample_z(out.array, out.slice_positions(), grid_pos)
    on_grid = np.where(np.isfinite(on_grid), on_grid, _nearest_slab(thick, grid_pos))
    operator = SlabOperator.for_grid(grid, thickness, profile)
    keys = ("psnr", "ssim", "ssim2d", "mae_hu_body", "psnr_1000", "n_slices_scored")
    return {**{k: scores[k] for k in keys},
            "tissue_mean_hu": tissue_means(on_truth_grid(out, truth)[scored], ref),
            "truth_tissue_mean_hu": tissue_means(ref, ref),
            "consistency_hu": consistency_rmse(on_grid, thick.array, operator)}


def _nearest_slab(thick: Volume, positions: np.ndarray) -> np.ndarray:
    k = np.rint((positions - thick.slice_positions()[0]) / thick.spacing[2]).astype(int)
    return thick.array[np.clip(k, 0, thick.shape[0] - 1)]


def profile_error(thick: Volume, profile: str, thickness: float) -> dict:
    """:func:`estimate_slice_profile` on the simulated input: the true shape's FWHM fit against the truth."""
    try:
        estimate = estimate_slice_profile(thick, EstimateOptions(line_stride=2))
    except ValueError as exc:
        return {"true_fwhm_mm": thickness, "error": str(exc)}
    fit = estimate.fit_for(profile)
    return {"true_fwhm_mm": thickness, "fwhm_mm": fit.fwhm_mm, "error_pct": 100 * (fit.fwhm_mm / thickness - 1),
            "chosen_shape": estimate.shape, "confidence": estimate.confidence}


def run_eclare(case: Case, thick: Volume, thickness: float, work: Path, python: Path | None,
               patches: int) -> dict | None:
    """ECLARE's output and report for ``case`` (reused from ``work/eclare`` when present, else run with
    ``python``: ``benchmarks/eclare_run.py`` in ECLARE's own environment); ``None`` with a log line if neither."""
    folder = work / "eclare"
    report = folder / f"{case.slug}_eclare.json"
    if not report.exists() and python is not None:
        path = work / "inputs" / f"{case.slug}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_volume(thick, path)
        rel = thickness / min(thick.spacing[0], thick.spacing[1])
        cmd = [str(python), str(REPO / "benchmarks" / "eclare_run.py"), str(path), str(folder), "--n-patches",
               str(patches), "--slice-thickness", f"{rel:.6g}", "--profile", case.profile]
        log.info("running ECLARE: %s", " ".join(cmd))
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            log.warning("ECLARE failed on %s: %s", case.slug, done.stderr.strip().splitlines()[-1:])
    if not report.exists():
        return None
    info = json.loads(report.read_text())
    out = read_volume(folder / info["output"])
    info["volume"] = out.replace(array=out.array.astype(np.float32))
    return info
