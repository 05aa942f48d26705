"""Patch sampling from cached volumes and the SR datasets built on it.

A patch is cut with its degraded axis first: ``"z"`` keeps ``(z, y, x)``, ``"y"`` gives ``(y, z, x)``,
``"x"`` gives ``(x, z, y)``. Only the voxels of the patch are read from the memory-mapped cache, so no
full volume is loaded per step. Where a volume is smaller than the patch, the patch is padded with air
(-1024 HU) at the far end.

Training examples are a pure function of ``(seed, rank, index)``: any worker can make any example,
and a resumed run that restarts the index stream where it stopped sees exactly the same data.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .cache import CachedVolume
from .intensity import hu_to_net
from .pairs import DegradationRanges, SRPair, ThinGrid, fixed_degradation, make_pair, resample_truth, truth_length

PERMUTATIONS = {"z": (0, 1, 2), "y": (1, 0, 2), "x": (2, 0, 1)}
AIR_HU = -1024.0
BODY_HU = -500.0


@dataclass
class VolumeEntry:
    """A cached volume as a dataset member: which axes it may degrade and its z range (slices)."""

    volume: CachedVolume
    axes: tuple[str, ...]
    z_range: tuple[int, int]
    weight: float


def z_range_of(n_slices: int, fraction: Sequence[float]) -> tuple[int, int]:
    """Slice range ``[start, stop)`` of a ``[lo, hi)`` fraction of ``n_slices`` (at least one slice)."""
    start = int(round(fraction[0] * n_slices))
    stop = max(start + 1, int(round(fraction[1] * n_slices)))
    return start, min(stop, n_slices)


def _window(lo: int, hi: int, length: int, rng: np.random.Generator | None) -> slice:
    room = (hi - lo) - length
    start = lo + (int(rng.integers(0, room + 1)) if (rng is not None and room > 0) else max(room, 0) // 2)
    return slice(start, min(start + length, hi))


def cut_patch(entry: VolumeEntry, axis: str, size: Sequence[int], grid: ThinGrid,
              rng: np.random.Generator | None) -> tuple[np.ndarray, float]:
    """Cut one thin-truth patch, degraded axis first, resampled to the target spacing along it.

    Args:
        entry: the volume and its allowed z range.
        axis: degraded axis, ``"z"``, ``"y"`` or ``"x"``.
        size: ``(D, H, W)`` patch size in voxels (``D`` on the thin grid).
        grid: the thin target grid along the degraded axis.
        rng: random position; ``None`` takes the centre.

    Returns:
        ``(truth, spacing)``: ``(D, H, W)`` float32 HU and its spacing along axis 0 in mm.
    """
    perm = PERMUTATIONS[axis]
    vol = entry.volume
    spacing_zyx = vol.axis_spacing()
    lengths = (truth_length(spacing_zyx[perm[0]], grid, size[0]), size[1], size[2])
    bounds = [entry.z_range, (0, vol.shape[1]), (0, vol.shape[2])]
    windows: list[slice] = [slice(0)] * 3
    for i, array_axis in enumerate(perm):
        windows[array_axis] = _window(*bounds[array_axis], lengths[i], rng)
    crop = np.asarray(vol.array[tuple(windows)], dtype=np.float32).transpose(perm)
    pad = [(0, lengths[i] - crop.shape[i]) for i in range(3)]
    if any(p[1] for p in pad):
        crop = np.pad(crop, pad, constant_values=AIR_HU)
    return resample_truth(crop, spacing_zyx[perm[0]], grid, size[0])


def pair_to_tensors(pair: SRPair, index: int) -> dict[str, torch.Tensor]:
    """A pair as network-ready tensors.

    Returns:
        ``input``, ``target``: ``(1, D, H, W)`` float32 network scale; ``mask``: ``(1, D, 1, 1)`` float32
        loss region; ``ratios``: ``(2,)`` float32 thickness and slab spacing over the thin spacing;
        ``score``: ``(2,)`` int64 ``[start, stop)`` of the scored thin indices (one slab in from each
        end of the stack); ``index``: int64 scalar.
    """
    score = pair.score_slice()
    return {
        "input": torch.from_numpy(hu_to_net(pair.input_hu)[None]),
        "target": torch.from_numpy(hu_to_net(pair.target_hu)[None]),
        "mask": torch.from_numpy(pair.mask.astype(np.float32)).reshape(1, -1, 1, 1),
        "ratios": torch.tensor(pair.degradation.ratios(pair.spacing), dtype=torch.float32),
        "score": torch.tensor([score.start, score.stop], dtype=torch.int64),
        "index": torch.tensor(index, dtype=torch.int64),
    }


class SRTrainDataset(Dataset):
    """Random SR training pairs; example ``i`` is fixed by ``(seed, rank, i)``.

    Args:
        entries: the volumes, with allowed axes, z ranges and sampling weights.
        patch_size: ``(D, H, W)`` voxels, ``D`` along the degraded axis on the thin grid.
        grid: the thin target grid.
        ranges: what degradations are drawn from.
        seed: the run's data seed.
        rank: this process's rank (each rank draws its own stream).
        min_body_fraction: a patch is redrawn (up to ``tries`` times, keeping the best) while fewer than
            this fraction of its voxels are above -500 HU.
        tries: patch draws at most.
    """

    def __init__(self, entries: Sequence[VolumeEntry], patch_size: Sequence[int], grid: ThinGrid,
                 ranges: DegradationRanges, seed: int, rank: int = 0, min_body_fraction: float = 0.2,
                 tries: int = 5) -> None:
        if not entries:
            raise ValueError("the training dataset has no volumes")
        self.entries = list(entries)
        self.patch_size = tuple(int(n) for n in patch_size)
        self.grid, self.ranges, self.seed, self.rank = grid, ranges, int(seed), int(rank)
        self.min_body_fraction, self.tries = min_body_fraction, max(1, tries)
        weights = np.array([e.weight for e in self.entries], dtype=np.float64)
        self.probs = weights / weights.sum()

    def __len__(self) -> int:
        return 2**62

    def _truth(self, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        entry = self.entries[int(rng.choice(len(self.entries), p=self.probs))]
        axis = entry.axes[int(rng.integers(len(entry.axes)))]
        best, best_fraction = None, -1.0
        for _ in range(self.tries):
            truth, spacing = cut_patch(entry, axis, self.patch_size, self.grid, rng)
            fraction = float(np.mean(truth > BODY_HU))
            if fraction > best_fraction:
                best, best_fraction = (truth, spacing), fraction
            if fraction >= self.min_body_fraction:
                break
        return best  # type: ignore[return-value]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, int(index)])
        truth, spacing = self._truth(rng)
        pair = make_pair(truth, spacing, self.ranges.draw(rng, spacing), rng)
        return pair_to_tensors(pair, int(index))


class SRValDataset(Dataset):
    """A fixed list of validation pairs (DESIGN.md benchmark convention: rect, T = S, no phase, no noise).

    Sample ``i`` uses volume ``i mod n_volumes``, its axes in turn, the ratio
    ``ratios[(i // n_volumes) mod len(ratios)]`` and a patch position drawn from ``(seed, i)``.

    Args:
        entries: validation volumes.
        n_samples: number of samples.
        patch_size: ``(D, H, W)`` voxels.
        grid: the thin target grid.
        ratios: slab spacing (= thickness) over the thin spacing, cycled.
        seed: position seed.
    """

    def __init__(self, entries: Sequence[VolumeEntry], n_samples: int, patch_size: Sequence[int], grid: ThinGrid,
                 ratios: Sequence[float], seed: int) -> None:
        if not entries or n_samples < 1:
            raise ValueError("the validation dataset needs at least one volume and one sample")
        self.entries, self.n_samples = list(entries), int(n_samples)
        self.patch_size, self.grid = tuple(int(n) for n in patch_size), grid
        self.ratios, self.seed = [float(r) for r in ratios], int(seed)

    def __len__(self) -> int:
        return self.n_samples

    def pair(self, index: int) -> SRPair:
        """The validation pair ``index`` (HU arrays, degraded axis first)."""
        if not 0 <= index < self.n_samples:
            raise IndexError(f"validation sample {index} out of range 0..{self.n_samples - 1}")
        n_vol = len(self.entries)
        entry = self.entries[index % n_vol]
        axis = entry.axes[(index // n_vol) % len(entry.axes)]
        ratio = self.ratios[(index // n_vol) % len(self.ratios)]
        rng = np.random.default_rng([self.seed, index])
        truth, spacing = cut_patch(entry, axis, self.patch_size, self.grid, rng)
        return make_pair(truth, spacing, fixed_degradation(ratio, spacing))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return pair_to_tensors(self.pair(index), index)


class StreamSampler(Sampler[int]):
    """Endless indices ``start, start + 1, ...``: restart it at the number of examples already used."""

    def __init__(self, start: int = 0) -> None:
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        index = self.start
        while True:
            yield index
            index += 1
