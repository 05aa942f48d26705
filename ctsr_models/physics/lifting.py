"""Geometry-aware lifting: where each voxel's ray lands on a detector, and 2D features sampled there.

A voxel centre ``p`` and the X-ray source define one ray; :meth:`ProjectionGeometry.to_detector` gives
the continuous detector index ``(row, col)`` where it lands. The X-ray → CT network gives each voxel the
2D features of that detector point (bilinear), for every view: the voxels the projector integrates into
pixel ``(r, c)`` are exactly the voxels that receive pixel ``(r, c)``'s features.

Coordinates follow ``torch.nn.functional.grid_sample`` with ``align_corners=True``: the last axis is
``(x, y)`` = ``(col, row)``, normalised so that -1 and +1 are the centres of the first and last detector
pixels. A voxel whose ray misses the detector gets coordinates outside ``[-1, 1]`` (zero features); one
at or behind the source gets :data:`OUTSIDE`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .projector import VolumeGrid
from ctsr_models.io.xray_geometry import ProjectionGeometry

#: grid_sample coordinate given to voxels whose ray never reaches the detector (zero features).
OUTSIDE = 4.0


def resampled_grid(grid: VolumeGrid, size: int | Sequence[int]) -> VolumeGrid:
    """The same physical box as ``grid`` sampled with ``size`` voxels (one number or ``(z, y, x)``).

    Voxel centres are placed at the centres of the new cells, so the box (the outer faces of the outer
    voxels) is unchanged.
    """
    shape = (int(size),) * 3 if np.isscalar(size) else tuple(int(s) for s in size)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"size must be a positive number or (z, y, x), got {size}")
    old_xyz = np.asarray(grid.shape[::-1], dtype=np.float64)
    new_xyz = np.asarray(shape[::-1], dtype=np.float64)
    spacing = np.asarray(grid.spacing) * old_xyz / new_xyz
    d = np.asarray(grid.direction, dtype=np.float64).reshape(3, 3)
    corner = np.asarray(grid.origin) - d @ (np.asarray(grid.spacing) / 2)
    origin = corner + d @ (spacing / 2)
    return VolumeGrid(shape, tuple(spacing), tuple(origin), tuple(grid.direction))


def detector_coords(grid: VolumeGrid, geometry: ProjectionGeometry) -> np.ndarray:
    """Where the ray through each voxel centre lands on the detector, in ``grid_sample`` coordinates.

    Args:
        grid: the voxels (LPS, mm).
        geometry: the radiograph (same LPS frame).

    Returns:
        float32 ``(z, y, x, 2)``: ``(col, row)`` normalised to ``[-1, 1]`` over the detector's pixel
        centres (``align_corners=True``); rays that miss lie outside ``[-1, 1]``.
    """
    rc = geometry.to_detector(grid.voxel_centres())
    rows, cols = geometry.shape
    x = 2.0 * rc[..., 1] / max(cols - 1, 1) - 1.0
    y = 2.0 * rc[..., 0] / max(rows - 1, 1) - 1.0
    out = np.stack([x, y], axis=-1)
    out[~np.isfinite(out)] = OUTSIDE
    return out.astype(np.float32)


def lifting_coords(grid: VolumeGrid, geometries: Sequence[ProjectionGeometry],
                   size: int | Sequence[int]) -> torch.Tensor:
    """Detector coordinates of every view on ``grid`` resampled to ``size`` voxels (same physical box).

    Returns:
        float32 ``(V, d, h, w, 2)``, views in the order given.
    """
    coarse = resampled_grid(grid, size)
    return torch.from_numpy(np.stack([detector_coords(coarse, g) for g in geometries]))


def lift(features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Sample 2D detector features at each voxel's detector point (bilinear, zero outside).

    Feature maps may have any resolution covering the whole detector (e.g. a stride-2 encoder level):
    the coordinates refer to the detector's outer edges (:func:`edge_coords`) and are sampled with
    ``align_corners=False``, which is exact at every resolution and, at the full resolution, equal to
    sampling the :func:`detector_coords` with ``align_corners=True``.

    Args:
        features: ``(B, C, h, w)``.
        coords: ``(B, D, H, W, 2)`` edge coordinates (:func:`edge_coords` of :func:`detector_coords`).

    Returns:
        ``(B, C, D, H, W)``.
    """
    b, d, h, w, _ = coords.shape
    flat = coords.reshape(b, d, h * w, 2).to(features.dtype)
    out = F.grid_sample(features, flat, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(b, features.shape[1], d, h, w)


def edge_coords(coords: torch.Tensor, detector_px: Sequence[int]) -> torch.Tensor:
    """Pixel-centre coordinates (``align_corners=True``) → detector-edge ones (``align_corners=False``).

    Args:
        coords: ``(..., 2)`` as :func:`detector_coords` gives them for a ``(rows, cols)`` detector.
        detector_px: ``(rows, cols)`` of that detector.
    """
    rows, cols = int(detector_px[0]), int(detector_px[1])
    scale = torch.tensor([(cols - 1) / cols, (rows - 1) / rows], dtype=coords.dtype, device=coords.device)
    return coords * scale
