"""Cone-beam X-ray projection of a CT volume (digitally reconstructed radiographs).

HU become linear attenuation coefficients at one effective energy (:func:`hu_to_mu`, anchored on
water and air), and every detector pixel receives the line integral of attenuation along the ray from
the source to the pixel centre (:func:`project`): the ray is clipped to the volume's box, sampled at
uniform steps (midpoint rule) and the volume is interpolated trilinearly with ``grid_sample`` (border
values extended over the last half voxel, so a constant volume integrates exactly). The
whole computation is torch: batched, differentiable with respect to the volume, and on the GPU when
the volume is. Outputs are the log-domain line integrals ``p`` (dimensionless) or intensities
``I0 * exp(-p)`` (:func:`to_intensity`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ctsr_models.io.xray_geometry import ProjectionGeometry

#: Effective energy of the simulated beam. A 120 kVp chest beam filtered by the patient has a mean
#: energy of about 60-70 keV; the anchors below are NIST XCOM values at 70 keV.
EFFECTIVE_ENERGY_KEV = 70.0
MU_WATER_PER_MM = 0.01929  # water, 70 keV: mass attenuation 0.1929 cm^2/g x 1.0 g/cm^3
MU_AIR_PER_MM = 0.0000208  # dry air, 70 keV: 0.1728 cm^2/g x 0.001205 g/cm^3


@dataclass(frozen=True)
class VolumeGrid:
    """Where a ``(z, y, x)`` array sits in LPS space (ITK order, like :class:`~ctsr_models.io.Volume`)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @classmethod
    def of(cls, volume) -> VolumeGrid:
        """The grid of a :class:`~ctsr_models.io.Volume`."""
        return cls(tuple(volume.shape), tuple(volume.spacing), tuple(volume.origin), tuple(volume.direction))

    @classmethod
    def centred(cls, shape: tuple[int, int, int], spacing: float, centre: Sequence[float] = (0.0, 0.0, 0.0)) -> VolumeGrid:
        """An axis-aligned cube-like grid of ``shape`` voxels of ``spacing`` mm centred on ``centre``."""
        zyx = np.asarray(shape, dtype=np.float64)
        origin = np.asarray(centre, dtype=np.float64) - (zyx[::-1] - 1) * spacing / 2
        return cls(tuple(int(s) for s in shape), (spacing,) * 3, tuple(origin))

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """Continuous ``(i, j, k)`` = ``(x, y, z)`` indices of LPS points ``(..., 3)``."""
        d = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        return ((np.asarray(points, dtype=np.float64) - np.asarray(self.origin)) @ d) / np.asarray(self.spacing)

    def voxel_centres(self) -> np.ndarray:
        """LPS centres of all voxels, ``(z, y, x, 3)``."""
        k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in self.shape), indexing="ij")
        idx = np.stack([i, j, k], axis=-1) * np.asarray(self.spacing)
        d = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        return np.asarray(self.origin) + idx @ d.T


def hu_to_mu(hu: torch.Tensor | np.ndarray, mu_water: float = MU_WATER_PER_MM, mu_air: float = MU_AIR_PER_MM):
    """Linear attenuation (1/mm) from HU: -1000 → air, 0 → water, linear between and beyond, never < 0."""
    mu = mu_water + hu * ((mu_water - mu_air) / 1000.0)
    return mu.clamp_min(0.0) if isinstance(mu, torch.Tensor) else np.maximum(mu, 0.0)


def to_intensity(line_integrals: torch.Tensor, i0: float = 1.0) -> torch.Tensor:
    """Detected intensity ``I0 * exp(-p)`` (Beer-Lambert, monochromatic)."""
    return i0 * torch.exp(-line_integrals)


def _ray_box(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit parameters ``t`` of the segments ``a + t (b - a)``, ``t`` in [0, 1], in a box."""
    d = b - a
    with np.errstate(divide="ignore", invalid="ignore"):
        t_lo, t_hi = (lo - a) / d, (hi - a) / d
    t_min = np.where(np.abs(d) < 1e-12, np.where((a >= lo) & (a <= hi), -np.inf, np.inf), np.minimum(t_lo, t_hi))
    t_max = np.where(np.abs(d) < 1e-12, np.where((a >= lo) & (a <= hi), np.inf, -np.inf), np.maximum(t_lo, t_hi))
    t0 = np.clip(t_min.max(axis=-1), 0.0, 1.0)
    t1 = np.clip(t_max.min(axis=-1), 0.0, 1.0)
    return t0, np.maximum(t1, t0)


def _ray_segments(grid: VolumeGrid, geometry: ProjectionGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                           np.ndarray, np.ndarray]:
    """Every detector ray in index space, clipped to the volume's box (the outer voxel faces).

    Returns:
        ``(a, b, t0, t1, chord_mm)``: the source ``a`` ``(3,)`` and pixel centres ``b`` ``(R, 3)`` as
        continuous ``(x, y, z)`` indices, the entry and exit parameters ``(R,)`` of ``a + t (b - a)``,
        and the length (mm) of each ray inside the box ``(R,)``.
    """
    shape_xyz = np.asarray(grid.shape[::-1], dtype=np.float64)
    pixels = geometry.pixel_centres().reshape(-1, 3)
    a = grid.world_to_index(np.asarray(geometry.source))
    b = grid.world_to_index(pixels)
    t0, t1 = _ray_box(a[None, :], b, np.full(3, -0.5), shape_xyz - 0.5)
    chord_mm = (t1 - t0) * np.linalg.norm(pixels - np.asarray(geometry.source), axis=-1)
    return a, b, t0, t1, chord_mm


def _sample_coords(a: torch.Tensor, b: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, n: int,
                   shape_xyz: torch.Tensor) -> torch.Tensor:
    """Midpoint samples of the rays ``a + t (b - a)``, ``t`` in ``[t0, t1]``: ``(R, n, 3)`` in ``grid_sample``
    coordinates ([-1, 1], x, y, z order, ``align_corners=True``), computed in the dtype of ``b``."""
    frac = (torch.arange(n, dtype=b.dtype, device=b.device) + 0.5) / n
    t = t0[:, None] + (t1 - t0)[:, None] * frac[None, :]
    idx = a[None, None, :] + t[..., None] * (b - a)[:, None, :]
    return idx / torch.clamp(shape_xyz - 1, min=1) * 2 - 1


def ray_samples(grid: VolumeGrid, geometry: ProjectionGeometry, step_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Sample points of every detector ray inside the volume box, in ``grid_sample`` coordinates.

    :func:`project` makes the same samples chunk by chunk; this materialises all of them (for
    inspection and tests: ``rows * cols * n * 3`` float64 numbers).

    Returns:
        ``(coords, weights)``: coords ``(rows * cols, n, 3)`` in [-1, 1] (x, y, z order,
        ``align_corners=True``), weights ``(rows * cols,)`` = the length (mm) each sample stands for.
    """
    a, b, t0, t1, chord_mm = _ray_segments(grid, geometry)
    n = _n_samples(chord_mm, step_mm)
    coords = _sample_coords(*(torch.from_numpy(np.asarray(v, dtype=np.float64)) for v in (a, b, t0, t1)), n,
                            torch.tensor(grid.shape[::-1], dtype=torch.float64))
    return coords.numpy(), chord_mm / n


def _n_samples(chord_mm: np.ndarray, step_mm: float) -> int:
    """Samples per ray: enough for the longest chord at ``step_mm`` (shorter chords get finer steps)."""
    return max(1, math.ceil(float(chord_mm.max(initial=0.0)) / step_mm))


def project(mu: torch.Tensor, grid: VolumeGrid, geometries: ProjectionGeometry | Sequence[ProjectionGeometry],
            step_mm: float | None = None, max_samples: int = 1 << 24) -> torch.Tensor:
    """Line integrals of attenuation through ``mu`` onto each detector.

    Outside the box of voxel centres (within half a voxel of the outer faces) the volume is extended
    by its border values, so the integral along an axis-parallel ray through a constant volume is
    exactly ``mu`` times the box length.

    Args:
        mu: attenuation in 1/mm, ``(z, y, x)`` or ``(B, 1, z, y, x)``, on any device, may require grad.
        grid: where the array sits (the same for the whole batch).
        geometries: one geometry for the whole batch, or one per batch item (all of the same
            detector shape).
        step_mm: sampling step along each ray; default half the smallest voxel size.
        max_samples: ray samples made and evaluated at once (bounds memory; results do not depend on it).

    Returns:
        ``(rows, cols)`` for a 3D input, else ``(B, rows, cols)``: dimensionless line integrals.
    """
    single = mu.dim() == 3
    vol = mu[None, None] if single else mu
    if vol.dim() != 5 or vol.shape[1] != 1:
        raise ValueError(f"mu must be (z, y, x) or (B, 1, z, y, x), got {tuple(mu.shape)}")
    if tuple(vol.shape[2:]) != tuple(grid.shape):
        raise ValueError(f"mu has shape {tuple(vol.shape[2:])} but the grid says {grid.shape}")
    batch = vol.shape[0]
    geoms = [geometries] * batch if isinstance(geometries, ProjectionGeometry) else list(geometries)
    if len(geoms) != batch:
        raise ValueError(f"{len(geoms)} geometries for a batch of {batch}")
    rows, cols = geoms[0].shape
    if any(g.shape != (rows, cols) for g in geoms):
        raise ValueError("all geometries of one batch need the same detector shape")
    step = float(step_mm) if step_mm else min(grid.spacing) / 2
    if not step > 0:
        raise ValueError(f"step_mm must be > 0, got {step_mm}")
    exact = torch.float32 if vol.device.type == "mps" else torch.float64
    shape_xyz = torch.tensor(grid.shape[::-1], dtype=exact, device=vol.device)
    outs = []
    for b, g in enumerate(geoms):
        segments = _ray_segments(grid, g)
        n = _n_samples(segments[-1], step)
        a, ends, t0, t1, chord_mm = (torch.as_tensor(v, dtype=exact, device=vol.device) for v in segments)
        chunk = max(1, max_samples // n)
        sums = []
        for start in range(0, ends.shape[0], chunk):
            sl = slice(start, start + chunk)
            c = _sample_coords(a, ends[sl], t0[sl], t1[sl], n, shape_xyz).to(vol.dtype)[None, :, :, None, :]
            s = F.grid_sample(vol[b:b + 1], c, mode="bilinear", padding_mode="border", align_corners=True)
            sums.append(s[0, 0, :, :, 0].sum(dim=1))
        outs.append((torch.cat(sums) * (chord_mm / n).to(vol.dtype)).reshape(rows, cols))
    out = torch.stack(outs)
    return out[0] if single else out


def drr(hu: np.ndarray, grid: VolumeGrid, geometry: ProjectionGeometry, step_mm: float | None = None,
        device: str | torch.device = "cpu") -> np.ndarray:
    """Log-domain DRR (line integrals, float32 ``(rows, cols)``) of an HU array, no gradients."""
    with torch.no_grad():
        mu = hu_to_mu(torch.as_tensor(np.asarray(hu, dtype=np.float32), device=device))
        return project(mu, grid, geometry, step_mm).cpu().numpy().astype(np.float32)
