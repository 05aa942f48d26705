"""Low-dose / standard-dose training pairs: simulated once into a cache, then cut into 2.5D patches.

Noise insertion (:func:`ctsr_models.physics.dose.inserted_noise`) costs about 1.5 s per 512² slice, far
too slow for every training step, so :func:`build_dose_slabs` simulates a few axial slabs of each volume
at each dose fraction once and stores them as int16 HU ``.npy`` files (rounding adds 0.29 HU of noise,
far below the 10-60 HU of low-dose noise). Entry names hash the cached volume (itself named by its
source's content), the slab position, the dose, the photons and the seed, so changed settings simulate
again and equal settings never do. Each slab and dose has its own seed: the cache is deterministic.

The datasets give 2.5D samples: ``in_slices`` adjacent low-dose slices in, the standard-dose centre
slice out, both in the network scale (:mod:`.intensity`). Training examples are a pure function of
``(seed, rank, index)``, so a resumed run sees exactly the data the uninterrupted run would.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ctsr_models.io.atomic import atomic_file
from ctsr_models.physics.dose import DoseSettings, inserted_noise

from .cache import CachedVolume
from .intensity import hu_to_net
from .patches import BODY_HU

log = logging.getLogger(__name__)

DOSE_CACHE_VERSION = 1
_BODY_TRIES = 5


@dataclass(frozen=True)
class DoseSlabSettings:
    """Which slabs are simulated, and how.

    Attributes:
        doses: dose fractions in (0, 1) simulated for every slab.
        photons: incident photons per ray of the standard-dose scan (:class:`DoseSettings`).
        slabs_per_volume: slabs spread evenly over the allowed z range of each volume.
        slab_slices: adjacent axial slices per slab.
        seed: base seed of the noise.
    """

    doses: tuple[float, ...] = (0.1, 0.25, 0.5)
    photons: float = 1.0e5
    slabs_per_volume: int = 3
    slab_slices: int = 7
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.doses or not all(0.0 < d < 1.0 for d in self.doses):
            raise ValueError(f"doses must be fractions in (0, 1), got {list(self.doses)}")
        if self.slabs_per_volume < 1 or self.slab_slices < 1:
            raise ValueError(f"slabs_per_volume and slab_slices must be >= 1, got {self.slabs_per_volume} and "
                             f"{self.slab_slices}")
        DoseSettings(dose=self.doses[0], photons=self.photons)  # validates photons


@dataclass
class DoseSlab:
    """One simulated slab: standard dose and each low dose, ``(D, H, W)`` int16 HU on disk.

    Attributes:
        name: source volume name and first slice, for logs.
        standard: path of the standard-dose slab.
        low: path of the low-dose slab per dose fraction.
        weight: relative sampling weight.
    """

    name: str
    standard: Path
    low: dict[float, Path]
    weight: float = 1.0

    def load(self, dose: float | None = None) -> np.ndarray:
        """The standard-dose slab (``dose`` ``None``) or the one at ``dose``, memory-mapped read-only."""
        return np.load(self.standard if dose is None else self.low[dose], mmap_mode="r")


def slab_starts(z_range: tuple[int, int], n_slabs: int, depth: int) -> list[int]:
    """First slices of ``n_slabs`` slabs of ``depth`` spread evenly over ``[start, stop)`` (fewer when short)."""
    lo, hi = z_range
    if hi - lo < depth:
        return []
    starts = np.linspace(lo, hi - depth, n_slabs).round().astype(int)
    return sorted(set(int(s) for s in starts))


def _key(volume: CachedVolume, start: int, depth: int, dose: float | None, s: DoseSlabSettings) -> str:
    blob = json.dumps([DOSE_CACHE_VERSION, volume.npy.stem, start, depth, dose, s.photons, s.seed])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.clip(np.round(array), -32768, 32767).astype(np.int16))


def _simulate(standard: np.ndarray, pixel_mm: float, dose: float, s: DoseSlabSettings, key: str) -> np.ndarray:
    """Standard slab ``(D, H, W)`` plus inserted noise of dose ``dose``; seeded by the entry ``key``."""
    settings = DoseSettings(dose=dose, photons=s.photons)
    streams = np.random.SeedSequence(int(key[:15], 16)).spawn(standard.shape[0])
    out = np.empty(standard.shape, dtype=np.float32)
    for k, stream in enumerate(streams):
        out[k] = standard[k] + inserted_noise(standard[k], pixel_mm, settings, np.random.default_rng(stream))
    return out


def build_dose_slabs(volume: CachedVolume, z_range: tuple[int, int], settings: DoseSlabSettings, folder: Path,
                     weight: float = 1.0) -> list[DoseSlab]:
    """Simulate (once) the low-dose slabs of one cached volume.

    Args:
        volume: the standard-dose volume, square pixels.
        z_range: slices ``[start, stop)`` slabs may come from.
        settings: doses, photons, slab count and depth, seed.
        folder: cache folder (created when missing).
        weight: sampling weight shared by this volume's slabs.

    Returns:
        The slabs (none when the range is shorter than one slab).

    Raises:
        ValueError: non-square pixels.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sx, sy, _ = volume.spacing
    if abs(sx - sy) > 1e-3 * max(sx, sy):
        raise ValueError(f"{volume.name}: dose simulation needs square pixels, got {sx:g} x {sy:g} mm")
    depth = settings.slab_slices
    starts = slab_starts(z_range, settings.slabs_per_volume, depth)
    slabs = []
    for start in starts:
        std_path = folder / f"{_key(volume, start, depth, None, settings)}.npy"
        standard = np.asarray(volume.array[start:start + depth], dtype=np.float32)
        if not std_path.exists():
            _save(std_path, standard)
        low = {}
        for dose in settings.doses:
            key = _key(volume, start, depth, dose, settings)
            path = folder / f"{key}.npy"
            if not path.exists():
                log.info("simulating %s slices %d-%d at dose %g", volume.name, start, start + depth - 1, dose)
                _save(path, _simulate(standard, sx, dose, settings, key))
            low[dose] = path
        slabs.append(DoseSlab(f"{volume.name}@{start}", std_path, low, weight / max(len(starts), 1)))
    return slabs


def build_all(entries: Sequence[tuple[CachedVolume, tuple[int, int], float]], settings: DoseSlabSettings,
              folder: Path, progress: bool = True) -> list[DoseSlab]:
    """:func:`build_dose_slabs` for every ``(volume, z_range, weight)``, with a progress bar."""
    slabs: list[DoseSlab] = []
    for volume, z_range, weight in tqdm(entries, desc="dose pairs", unit="volume", disable=not progress):
        slabs.extend(build_dose_slabs(volume, z_range, settings, folder, weight))
    return slabs


def _cut(slab: DoseSlab, dose: float, centre: int, in_slices: int, y: int, x: int,
         size: tuple[int, int], flips: tuple[bool, bool]) -> dict[str, torch.Tensor]:
    r = in_slices // 2
    win = (slice(centre - r, centre + r + 1), slice(y, y + size[0]), slice(x, x + size[1]))
    low = np.asarray(slab.load(dose)[win], dtype=np.float32)
    std = np.asarray(slab.load()[centre:centre + 1, win[1], win[2]], dtype=np.float32)
    for axis, flip in zip((1, 2), flips):
        if flip:
            low, std = np.flip(low, axis), np.flip(std, axis)
    return {"input": torch.from_numpy(hu_to_net(np.ascontiguousarray(low))),
            "target": torch.from_numpy(hu_to_net(np.ascontiguousarray(std))),
            "dose": torch.tensor(dose, dtype=torch.float32)}


def _check(slabs: Sequence[DoseSlab], in_slices: int, size: tuple[int, int]) -> tuple[int, int, int]:
    if not slabs:
        raise ValueError("no dose slabs: every volume is shorter than one slab")
    shape = slabs[0].load().shape
    for slab in slabs:
        d, h, w = slab.load().shape
        if d < in_slices or h < size[0] or w < size[1]:
            raise ValueError(f"slab {slab.name} ({d}, {h}, {w}) is smaller than {in_slices} slices of {list(size)}")
    return shape


class _RandomSlabPatches(Dataset):
    """What the 2.5D and 3D training sets share: an endless index, and item ``i`` starts from the generator
    ``(seed, rank, i)``, which draws a slab (by weight) and then one of its doses."""

    def __init__(self, slabs: Sequence[DoseSlab], seed: int, rank: int, min_body_fraction: float) -> None:
        self.slabs, self.seed, self.rank, self.min_body = list(slabs), seed, rank, min_body_fraction
        weights = np.array([s.weight for s in self.slabs], dtype=np.float64)
        self.p = weights / weights.sum()

    def __len__(self) -> int:
        return 2**31 - 1

    def _slab_and_dose(self, index: int) -> tuple[np.random.Generator, DoseSlab, float]:
        rng = np.random.default_rng([self.seed, self.rank, index])
        slab = self.slabs[int(rng.choice(len(self.slabs), p=self.p))]
        return rng, slab, float(rng.choice(sorted(slab.low)))


def _draw2d(rng: np.random.Generator, slab: DoseSlab, in_slices: int, size: tuple[int, int],
            min_body: float) -> tuple[int, int, int]:
    """A centre slice and crop position ``(centre, y, x)`` in ``slab``, redrawn a few times while the crop of
    the centre slice holds too little body."""
    d, h, w = slab.load().shape
    r = in_slices // 2
    centre = int(rng.integers(r, d - r))
    std = slab.load()[centre]
    for _ in range(_BODY_TRIES):
        y, x = int(rng.integers(0, h - size[0] + 1)), int(rng.integers(0, w - size[1] + 1))
        if (std[y:y + size[0], x:x + size[1]] > BODY_HU).mean() >= min_body:
            break
    return centre, y, x


class DoseTrainDataset(_RandomSlabPatches):
    """Random 2.5D patches: item ``i`` is fixed by ``(seed, rank, i)`` (slab, dose, slice, crop, flips).

    Args:
        slabs: the simulated slabs.
        patch_size: ``(H, W)`` voxels.
        in_slices: adjacent low-dose slices in (odd).
        seed: base seed.
        rank: process rank (its own stream).
        min_body_fraction: crops are redrawn (a few times) while less of them than this is body.
    """

    def __init__(self, slabs: Sequence[DoseSlab], patch_size: Sequence[int], in_slices: int, seed: int, rank: int,
                 min_body_fraction: float = 0.2) -> None:
        self.size, self.in_slices = (int(patch_size[0]), int(patch_size[1])), in_slices
        _check(list(slabs), in_slices, self.size)
        super().__init__(slabs, seed, rank, min_body_fraction)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng, slab, dose = self._slab_and_dose(index)
        centre, y, x = _draw2d(rng, slab, self.in_slices, self.size, self.min_body)
        flips = (bool(rng.integers(2)), bool(rng.integers(2)))
        return _cut(slab, dose, centre, self.in_slices, y, x, self.size, flips)


class DoseValDataset(Dataset):
    """A fixed list of 2.5D samples from held-out slabs: doses cycled, crops drawn once from ``seed``
    (body-weighted like training), no flips.

    Args:
        slabs: held-out simulated slabs.
        n_samples: number of samples.
        patch_size: ``(H, W)`` voxels.
        in_slices: adjacent low-dose slices in.
        seed: seed of the positions.
        min_body_fraction: as for training.
    """

    def __init__(self, slabs: Sequence[DoseSlab], n_samples: int, patch_size: Sequence[int], in_slices: int,
                 seed: int, min_body_fraction: float = 0.2) -> None:
        size = (int(patch_size[0]), int(patch_size[1]))
        _check(slabs, in_slices, size)
        self.items = []
        doses = sorted(slabs[0].low)
        for i in range(n_samples):
            slab = slabs[i % len(slabs)]
            centre, y, x = _draw2d(np.random.default_rng([seed, i]), slab, in_slices, size, min_body_fraction)
            self.items.append((slab, doses[i % len(doses)], centre, y, x))
        self.size, self.in_slices = size, in_slices

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        slab, dose, centre, y, x = self.items[index]
        sample = _cut(slab, dose, centre, self.in_slices, y, x, self.size, (False, False))
        sample["index"] = torch.tensor(index, dtype=torch.int64)
        return sample


def _cut3d(slab: DoseSlab, dose: float, z: int, y: int, x: int, size: tuple[int, int, int],
           flips: tuple[bool, bool]) -> dict[str, torch.Tensor]:
    win = (slice(z, z + size[0]), slice(y, y + size[1]), slice(x, x + size[2]))
    low = np.asarray(slab.load(dose)[win], dtype=np.float32)
    std = np.asarray(slab.load()[win], dtype=np.float32)
    for axis, flip in zip((1, 2), flips):
        if flip:
            low, std = np.flip(low, axis), np.flip(std, axis)
    return {"input": torch.from_numpy(hu_to_net(np.ascontiguousarray(low)))[None],
            "target": torch.from_numpy(hu_to_net(np.ascontiguousarray(std)))[None],
            "dose": torch.tensor(dose, dtype=torch.float32)}


def _draw3d(rng: np.random.Generator, slab: DoseSlab, size: tuple[int, int, int],
            min_body: float) -> tuple[int, int, int]:
    """A crop position ``(z, y, x)`` in ``slab``, redrawn a few times while it holds too little body."""
    d, h, w = slab.load().shape
    z = int(rng.integers(0, d - size[0] + 1))
    std = slab.load()[z:z + size[0]]
    for _ in range(_BODY_TRIES):
        y, x = int(rng.integers(0, h - size[1] + 1)), int(rng.integers(0, w - size[2] + 1))
        if (std[:, y:y + size[1], x:x + size[2]] > BODY_HU).mean() >= min_body:
            break
    return z, y, x


class DoseTrain3DDataset(_RandomSlabPatches):
    """Random 3D patches of the same slabs: ``input`` (low dose) and ``target`` (standard dose), each
    ``(1, D, H, W)`` network scale; item ``i`` is fixed by ``(seed, rank, i)`` (slab, dose, crop, flips).

    Args:
        slabs: the simulated slabs (at least ``D`` slices each).
        patch_size: ``(D, H, W)`` voxels.
        seed: base seed.
        rank: process rank (its own stream).
        min_body_fraction: crops are redrawn (a few times) while less of them than this is body.
    """

    def __init__(self, slabs: Sequence[DoseSlab], patch_size: Sequence[int], seed: int, rank: int,
                 min_body_fraction: float = 0.2) -> None:
        self.size = (int(patch_size[0]), int(patch_size[1]), int(patch_size[2]))
        _check(list(slabs), self.size[0], self.size[1:])
        super().__init__(slabs, seed, rank, min_body_fraction)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng, slab, dose = self._slab_and_dose(index)
        z, y, x = _draw3d(rng, slab, self.size, self.min_body)
        flips = (bool(rng.integers(2)), bool(rng.integers(2)))
        return _cut3d(slab, dose, z, y, x, self.size, flips)


class DoseVal3DDataset(Dataset):
    """A fixed list of 3D samples from held-out slabs: slabs and doses cycled, crops drawn once from ``seed``
    (body-weighted like training), no flips; each item also carries its ``index``.

    Args:
        slabs: held-out simulated slabs.
        n_samples: number of samples.
        patch_size: ``(D, H, W)`` voxels.
        seed: seed of the positions.
        min_body_fraction: as for training.
    """

    def __init__(self, slabs: Sequence[DoseSlab], n_samples: int, patch_size: Sequence[int], seed: int,
                 min_body_fraction: float = 0.2) -> None:
        size = (int(patch_size[0]), int(patch_size[1]), int(patch_size[2]))
        _check(slabs, size[0], size[1:])
        doses = sorted(slabs[0].low)
        self.items = []
        for i in range(n_samples):
            slab = slabs[i % len(slabs)]
            z, y, x = _draw3d(np.random.default_rng([seed, i]), slab, size, min_body_fraction)
            self.items.append((slab, doses[i % len(doses)], z, y, x))
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        slab, dose, z, y, x = self.items[index]
        sample = _cut3d(slab, dose, z, y, x, self.size, (False, False))
        sample["index"] = torch.tensor(index, dtype=torch.int64)
        return sample
