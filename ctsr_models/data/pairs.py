"""Super-resolution training pairs made on the fly with :mod:`ctsr_models.physics`.

Everything here works on HU arrays whose axis 0 is the degraded axis (z for through-plane pairs, x
or y transposed to the front for in-plane self-supervision); index ``j`` along it sits at ``j * s`` mm.

A pair is made in four steps:
    1. the truth is brought to the thin target spacing ``s`` along axis 0 (:func:`resample_truth`);
    2. slabs of thickness ``T`` every ``S`` mm with a rect or Gaussian profile and a random phase are
       integrated from it (:func:`ctsr_models.physics.degrade_axis`), optionally with Gaussian noise;
    3. the slabs are linearly interpolated at their physical centres back onto the thin grid
       (:func:`interpolate_slabs`; constant beyond the first and last centre): the network input;
    4. the loss mask keeps the thin positions between the first and last slab centre.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ctsr_models.physics import PROFILES, degrade_axis

_TOL = 1e-6


@dataclass(frozen=True)
class Degradation:
    """How one thick-slice input is simulated (lengths in mm)."""

    thickness: float
    spacing: float
    profile: str = "rect"
    offset: float = 0.0
    noise_hu: float = 0.0

    def ratios(self, target_spacing: float) -> tuple[float, float]:
        """``(thickness / s, spacing / s)``: the network's conditioning."""
        return self.thickness / target_spacing, self.spacing / target_spacing


@dataclass(frozen=True)
class DegradationRanges:
    """What a random :class:`Degradation` is drawn from.

    Attributes:
        spacing_ratio: ``[lo, hi]`` of slab spacing ``S`` over the target spacing ``s`` (uniform).
        thickness_over_spacing: ``[lo, hi]`` of ``T / S`` (1: contiguous; > 1: overlapping slabs).
        profiles: slice profiles to choose from (uniform), from :data:`ctsr_models.physics.PROFILES`.
        noise_hu: ``[lo, hi]`` of the SD of Gaussian noise added to the slabs, HU.
    """

    spacing_ratio: tuple[float, float] = (2.0, 6.0)
    thickness_over_spacing: tuple[float, float] = (1.0, 1.0)
    profiles: tuple[str, ...] = ("rect", "gaussian")
    noise_hu: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        for name in ("spacing_ratio", "thickness_over_spacing", "noise_hu"):
            lo, hi = getattr(self, name)
            if not (0 <= lo <= hi) or (name != "noise_hu" and lo <= 0):
                raise ValueError(f"{name} must be [lo, hi] with 0 < lo <= hi (noise: 0 <= lo), got {[lo, hi]}")
        bad = [p for p in self.profiles if p not in PROFILES]
        if bad or not self.profiles:
            raise ValueError(f"profiles must be taken from {', '.join(PROFILES)}, got {list(self.profiles)}")

    def max_extent(self) -> float:
        """Worst-case ``T + 2 S`` over ``s``: a patch axis must be at least this long for 2 slabs."""
        s_hi = self.spacing_ratio[1]
        return s_hi * self.thickness_over_spacing[1] + 2.0 * s_hi

    def draw(self, rng: np.random.Generator, target_spacing: float) -> Degradation:
        """A random degradation for truth at ``target_spacing`` mm, with a random slab phase."""
        spacing = target_spacing * rng.uniform(*self.spacing_ratio)
        thickness = spacing * rng.uniform(*self.thickness_over_spacing)
        profile = self.profiles[int(rng.integers(len(self.profiles)))]
        return Degradation(thickness, spacing, profile, offset=float(rng.uniform(0.0, spacing)),
                           noise_hu=float(rng.uniform(*self.noise_hu)))


@dataclass(frozen=True)
class ThinGrid:
    """The thin target grid along the degraded axis.

    Attributes:
        spacing: target spacing ``s`` in mm.
        tolerance: relative spacing difference accepted without resampling (0.05: 0.977 mm counts as 1 mm).
        upsample: interpolate data coarser than ``s`` onto ``s`` (a smoother truth); ``False`` keeps such
            data on its own spacing, which then plays the role of ``s`` for that example.
    """

    spacing: float = 1.0
    tolerance: float = 0.05
    upsample: bool = True

    def __post_init__(self) -> None:
        if not self.spacing > 0 or not 0 <= self.tolerance < 1:
            raise ValueError(f"need spacing > 0 and 0 <= tolerance < 1, got {self.spacing} and {self.tolerance}")

    def keeps(self, source_spacing: float) -> bool:
        """True when data at ``source_spacing`` is used as it is (its spacing is the truth spacing)."""
        close = abs(source_spacing - self.spacing) <= self.tolerance * self.spacing
        return close or (source_spacing > self.spacing and not self.upsample)


def truth_length(source_spacing: float, grid: ThinGrid, n_out: int) -> int:
    """Source samples needed for :func:`resample_truth` to give ``n_out`` thin samples."""
    if grid.keeps(source_spacing):
        return n_out
    if source_spacing < grid.spacing:
        return int(math.ceil(n_out * grid.spacing / source_spacing - _TOL))
    return int(math.floor((n_out - 1) * grid.spacing / source_spacing + _TOL)) + 2


def resample_truth(array: np.ndarray, source_spacing: float, grid: ThinGrid, n_out: int) -> tuple[np.ndarray, float]:
    """Bring HU data to the thin target spacing along axis 0.

    Data the grid keeps (:meth:`ThinGrid.keeps`) is used as it is; finer data is integrated into
    contiguous rect slices of thickness ``s`` (what a scanner reconstructing at ``s`` would give); coarser
    data is interpolated linearly (a smoother truth: see ``docs/training.md``).

    Args:
        array: ``(L, ...)`` HU with ``L >= truth_length(source_spacing, grid, n_out)``.
        source_spacing: spacing of ``array`` along axis 0, mm.
        grid: the thin target grid.
        n_out: samples wanted along axis 0.

    Returns:
        ``(truth, spacing)``: ``(n_out, ...)`` float32 HU and its spacing along axis 0 in mm
        (``source_spacing`` when kept, else ``grid.spacing``).
    """
    need = truth_length(source_spacing, grid, n_out)
    if array.shape[0] < need:
        raise ValueError(f"need {need} samples along axis 0, got {array.shape[0]}")
    if grid.keeps(source_spacing):
        return np.asarray(array[:n_out], dtype=np.float32), float(source_spacing)
    if source_spacing < grid.spacing:
        slabs, _ = degrade_axis(array, 0, source_spacing, grid.spacing, grid.spacing, "rect")
        return slabs[:n_out], float(grid.spacing)
    pos = np.arange(n_out) * (grid.spacing / source_spacing)
    return _lerp(np.asarray(array, dtype=np.float32), pos), float(grid.spacing)


def _lerp(values: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``values`` ``(n, ...)`` at fractional indices ``pos`` (clamped to the ends)."""
    n = values.shape[0]
    if n == 1:
        return np.repeat(values[:1], pos.size, axis=0)
    pos = np.clip(pos, 0.0, n - 1.0)
    k = np.minimum(np.floor(pos).astype(np.int64), n - 2)
    w = (pos - k).astype(np.float32).reshape((-1,) + (1,) * (values.ndim - 1))
    return (1.0 - w) * values[k] + w * values[k + 1]


def interpolate_slabs(slabs: np.ndarray, centres: np.ndarray, n_out: int, spacing: float) -> np.ndarray:
    """Linear interpolation of slabs at their physical centres onto a thin grid.

    Args:
        slabs: ``(n, ...)`` slab values.
        centres: ``(n,)`` increasing, evenly spaced slab centres in mm relative to thin index 0.
        n_out: thin samples wanted.
        spacing: thin spacing in mm (thin index ``j`` at ``j * spacing``).

    Returns:
        ``(n_out, ...)`` float32; constant beyond the first and last centre.
    """
    if centres.size == 1:
        return np.repeat(np.asarray(slabs[:1], dtype=np.float32), n_out, axis=0)
    step = float(centres[1] - centres[0])
    pos = (np.arange(n_out) * spacing - centres[0]) / step
    return _lerp(np.asarray(slabs, dtype=np.float32), pos)


@dataclass
class SRPair:
    """One training or validation example, degraded axis first.

    Attributes:
        input_hu: ``(D, ...)`` thick slabs linearly interpolated onto the thin grid, HU.
        target_hu: ``(D, ...)`` the thin truth, HU.
        mask: ``(D,)`` bool, thin positions between the first and last slab centre (the loss region).
        centres: ``(n,)`` slab centres, mm from thin index 0.
        spacing: thin spacing ``s`` of both arrays along axis 0, mm.
        degradation: how the input was made.
    """

    input_hu: np.ndarray
    target_hu: np.ndarray
    mask: np.ndarray
    centres: np.ndarray
    spacing: float
    degradation: Degradation

    def score_slice(self) -> slice:
        """Thin indices inside the thick stack less one slab at each end (the DESIGN.md scoring border)."""
        pos = np.arange(self.target_hu.shape[0]) * self.spacing
        half = self.degradation.spacing / 2.0
        inside = np.flatnonzero((pos >= self.centres[0] + half - _TOL) & (pos <= self.centres[-1] - half + _TOL))
        return slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0)


def make_pair(truth_hu: np.ndarray, spacing: float, degradation: Degradation,
              rng: np.random.Generator | None = None) -> SRPair:
    """Simulate the thick-slice input of a thin truth and the loss mask (steps 2-4 of the module docstring).

    Args:
        truth_hu: ``(D, ...)`` thin HU, axis 0 at ``spacing`` mm.
        spacing: thin spacing ``s`` in mm.
        degradation: slab thickness, spacing, profile, phase and noise.
        rng: noise generator (needed when ``degradation.noise_hu > 0``).

    Raises:
        ValueError: no slab fits along axis 0 (from :func:`ctsr_models.physics.degrade_axis`).
    """
    d = degradation
    slabs, centres = degrade_axis(truth_hu, 0, spacing, d.thickness, d.spacing, d.profile, offset_mm=d.offset)
    if d.noise_hu > 0:
        if rng is None:
            raise ValueError("a noise generator is needed when noise_hu > 0")
        slabs += np.float32(d.noise_hu) * rng.standard_normal(slabs.shape, dtype=np.float32)
    n = truth_hu.shape[0]
    pos = np.arange(n) * spacing
    mask = (pos >= centres[0] - _TOL) & (pos <= centres[-1] + _TOL)
    return SRPair(interpolate_slabs(slabs, centres, n, spacing), np.asarray(truth_hu, dtype=np.float32), mask,
                  centres, spacing, d)


def fixed_degradation(ratio: float, target_spacing: float) -> Degradation:
    """The benchmark convention of DESIGN.md: rect profile, thickness = spacing = ``ratio * s``, no phase."""
    return Degradation(ratio * target_spacing, ratio * target_spacing, "rect")


def check_ratios(ratios: Sequence[float]) -> None:
    """Raise ``ValueError`` unless every ratio is > 1."""
    if not ratios or min(ratios) <= 1.0:
        raise ValueError(f"ratios must be a non-empty list of numbers > 1, got {list(ratios)}")
