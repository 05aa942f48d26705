"""In-plane self-supervision from one thick-slice scan: its own axial detail, degraded like its slices.

The idea behind SMORE/ECLARE: a thick-slice CT is sharp in the axial plane and blurred along z. Thin
"truth" lines taken along x or y of the axial plane, degraded with the scan's own slice profile
(thickness ``T``, spacing ``S``, profile shape), are training pairs for the through-plane problem of
that very scan. Everything here reuses the training data path: the scan is wrapped as an in-memory
:class:`~ctsr_models.data.cache.CachedVolume`, patches are cut by :func:`~ctsr_models.data.patches.cut_patch`
(degraded axis first: ``x`` gives ``(x, z, y)``, ``y`` gives ``(y, z, x)``) and degraded by
:func:`~ctsr_models.data.pairs.make_pair`.

Held-out pairs come from a band of slices in the middle of the stack that training never sees
(:func:`split_slices`), so they can stop the fine-tuning early and guard against a worse model.

:func:`estimate_profile` picks the slice profile (``rect`` or ``gaussian``) whose in-plane simulation
best matches the scan's real through-plane smoothness.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ctsr_models.io.volume import Volume
from ctsr_models.physics import PROFILES, degrade_axis

from .cache import CachedVolume
from .pairs import Degradation, DegradationRanges, ThinGrid, make_pair
from .patches import BODY_HU, SRTrainDataset, VolumeEntry, cut_patch, pair_to_tensors

log = logging.getLogger(__name__)

INPLANE_AXES = ("x", "y")
_MIN_BAND = 4  # slices of a held-out or training band at least
_PROFILE_BODY_HU = -900.0  # neighbours compared by estimate_profile lie above this (no body/air edges)


def memory_volume(volume: Volume, name: str = "scan") -> CachedVolume:
    """``volume``'s voxels as a :class:`CachedVolume` held in memory (no cache file, no copy)."""
    return CachedVolume(npy=Path(), shape=volume.shape, spacing=tuple(volume.spacing), name=name,
                        _array=volume.array)


def body_crop(volume: Volume, max_inplane: int, body_hu: float = BODY_HU) -> Volume:
    """At most ``max_inplane`` rows and columns of every slice, centred on the body's bounding box.

    The crop keeps the scan's geometry (its origin moves to the first kept voxel); the array is a view.
    The body is every voxel above ``body_hu``; a scan without one is cropped at its centre.
    """
    n_y, n_x = volume.shape[1:]
    if n_y <= max_inplane and n_x <= max_inplane:
        return volume
    rows, cols = np.nonzero((volume.array > body_hu).any(axis=0))
    starts = []
    for n, hits in ((n_y, rows), (n_x, cols)):
        size = min(n, max_inplane)
        centre = (hits.min() + hits.max() + 1) / 2 if hits.size else n / 2
        starts.append(int(np.clip(round(centre - size / 2), 0, n - size)))
    y0, x0 = starts
    array = volume.array[:, y0:y0 + min(n_y, max_inplane), x0:x0 + min(n_x, max_inplane)]
    return volume.replace(array=array, origin=tuple(float(v) for v in volume.index_to_physical([x0, y0, 0])))


def split_slices(n_slices: int, holdout_fraction: float, min_band: int = _MIN_BAND) -> tuple[list[tuple[int, int]],
                                                                                            tuple[int, int]]:
    """Split a stack into training slice ranges and one held-out band in its middle.

    Args:
        n_slices: slices of the scan.
        holdout_fraction: share of the slices held out (at least ``min_band`` slices).
        min_band: smallest band kept on either side.

    Returns:
        ``(train_ranges, held_out)``: one or two ``[start, stop)`` ranges for training, and the held-out range.

    Raises:
        ValueError: too few slices to hold some out.
    """
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    band = max(min_band, int(round(holdout_fraction * n_slices)))
    if n_slices < band + min_band:
        raise ValueError(f"the scan has {n_slices} slices; adaptation needs at least {band + min_band} "
                         f"({band} held out, {min_band} to learn from)")
    start = (n_slices - band) // 2
    held = (start, start + band)
    train = [r for r in ((0, held[0]), (held[1], n_slices)) if r[1] - r[0] >= min_band]
    if not train:  # both sides too short on their own: learn from the longer one anyway
        train = [max((0, held[0]), (held[1], n_slices), key=lambda r: r[1] - r[0])]
    return train, held


def scan_entries(volume: CachedVolume, ranges: Sequence[tuple[int, int]]) -> list[VolumeEntry]:
    """Dataset entries of the scan's in-plane axes over slice ranges (weights by range length)."""
    return [VolumeEntry(volume, INPLANE_AXES, (int(a), int(b)), float(b - a)) for a, b in ranges]


def inplane_train_dataset(entries: Sequence[VolumeEntry], patch_size: Sequence[int], grid: ThinGrid,
                          degradation: Degradation, seed: int, min_body_fraction: float = 0.2) -> SRTrainDataset:
    """Endless training pairs: the training data path with the scan's own degradation (random phase).

    Args:
        entries: the scan's training bands (:func:`scan_entries`).
        patch_size: ``(D, H, W)``: ``D`` along x or y on the thin grid, ``H`` along z (slices), ``W`` in-plane.
        grid: thin grid of the output (``s`` mm).
        degradation: the scan's slab thickness, spacing and profile (noise 0).
        seed: data seed.
        min_body_fraction: patches are redrawn while less of them than this is body.
    """
    d = degradation
    ranges = DegradationRanges(spacing_ratio=(d.spacing / grid.spacing,) * 2,
                               thickness_over_spacing=(d.thickness / d.spacing,) * 2, profiles=(d.profile,),
                               noise_hu=(d.noise_hu,) * 2)
    return SRTrainDataset(entries, patch_size, grid, ranges, seed, 0, min_body_fraction)


class InplaneHeldOut(Dataset):
    """A fixed list of held-out in-plane pairs with the scan's degradation (no phase shift, no noise).

    Sample ``i`` uses entry ``i mod n``, the axes in turn, and a patch position drawn from ``(seed, i)``.

    Args:
        entries: the held-out band(s).
        n_samples: number of pairs.
        patch_size: ``(D, H, W)`` voxels.
        grid: thin grid.
        degradation: the scan's degradation.
        seed: position seed.
    """

    def __init__(self, entries: Sequence[VolumeEntry], n_samples: int, patch_size: Sequence[int], grid: ThinGrid,
                 degradation: Degradation, seed: int) -> None:
        if not entries or n_samples < 1:
            raise ValueError("held-out pairs need at least one band and one sample")
        self.entries, self.n_samples = list(entries), int(n_samples)
        self.patch_size, self.grid, self.seed = tuple(int(n) for n in patch_size), grid, int(seed)
        self.degradation = Degradation(degradation.thickness, degradation.spacing, degradation.profile)

    def __len__(self) -> int:
        return self.n_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.n_samples:
            raise IndexError(f"held-out sample {index} out of range 0..{self.n_samples - 1}")
        entry = self.entries[index % len(self.entries)]
        axis = entry.axes[(index // len(self.entries)) % len(entry.axes)]
        rng = np.random.default_rng([self.seed, index])
        truth, spacing = cut_patch(entry, axis, self.patch_size, self.grid, rng)
        return pair_to_tensors(make_pair(truth, spacing, self.degradation), index)


def _roughness(lines: np.ndarray) -> float:
    """Mean squared difference (HU^2) of neighbours along axis 0, over neighbours that are both inside the body."""
    inside = lines > _PROFILE_BODY_HU
    both = inside[1:] & inside[:-1]
    if not both.any():
        return float("nan")
    return float(np.mean(np.diff(lines, axis=0)[both] ** 2))


def estimate_profile(volume: Volume, thickness: float, candidates: Sequence[str] = PROFILES,
                     max_lines: int = 4096, seed: int = 0) -> tuple[str, dict[str, float]]:
    """The slice profile whose in-plane simulation matches the scan's through-plane roughness best.

    The real z lines (slabs ``S`` apart) are compared with x and y lines of a few axial planes degraded
    to slabs of thickness ``T`` every ``S`` mm with each candidate profile: the profile whose lines have
    the closest mean squared neighbour difference inside the body (:func:`_roughness`) wins. Anatomy is assumed to be
    about as rough along z as in the plane (the premise of in-plane self-supervision).

    Args:
        volume: the thick-slice scan (HU).
        thickness: slab thickness ``T`` in mm (slab spacing ``S`` is the scan's slice spacing).
        candidates: profiles to choose from.
        max_lines: lines sampled per direction.
        seed: sampling seed.

    Returns:
        ``(profile, scores)``: the chosen profile and, per candidate, its roughness relative to the real
        one minus 1 (0: a perfect match).
    """
    rng = np.random.default_rng(seed)
    arr, (dx, dy, spacing) = volume.array, volume.spacing
    n_z, n_y, n_x = arr.shape
    if n_z < 3:
        return "rect", {}
    ys, xs = rng.integers(0, n_y, size=max_lines), rng.integers(0, n_x, size=max_lines)
    real = _roughness(arr[:, ys, xs].astype(np.float32))
    planes = arr[np.unique(rng.integers(0, n_z, size=min(n_z, 8)))]
    scores = {}
    for profile in candidates:
        values = []
        for axis, step in ((2, dx), (1, dy)):
            slabs, _ = degrade_axis(planes, axis, step, thickness, spacing, profile)
            lines = np.moveaxis(slabs, axis, 0).reshape(slabs.shape[axis], -1)
            if lines.shape[0] >= 3:
                values.append(_roughness(lines))
        scores[profile] = float(np.nanmean(values)) / real - 1.0 if values and real > 0 else float("inf")
    best = min(scores, key=lambda p: abs(scores[p]))
    log.info("slice profile estimated: %s (relative roughness differences %s)", best,
             ", ".join(f"{p} {v:+.3f}" for p, v in scores.items()))
    return best, scores
