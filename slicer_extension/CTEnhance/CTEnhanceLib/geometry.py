"""The grid the server's through-plane super-resolution returns, predicted from the input's grid.

The rule (DESIGN.md, ``ctsr_models.inference.grid``): input slab ``k`` has centre ``c_k`` and slab
spacing ``S`` (the spacing along the third voxel axis); the target spacing is ``s``. The output
keeps the in-plane grid and every axis direction; its slices are ``s`` apart from
``c_0 - S/2 + s/2`` to the last centre not beyond ``c_last + S/2 - s/2``. The Slicer module's test
checks the loaded result against this prediction; the repository's tests check this prediction
against ``ctsr_models`` itself. It holds in any frame (LPS, or RAS as Slicer keeps volumes) as long
as origin and axes are in the same one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

_TOL = 1e-6

Vector = tuple[float, float, float]


@dataclass(frozen=True)
class Grid:
    """A volume's voxel grid.

    Attributes:
        size: voxels along the i, j, k axes.
        spacing: mm between voxel centres along i, j, k.
        origin: the centre of voxel (0, 0, 0), mm.
        axes: unit vectors of the i, j and k axes, in the frame of ``origin``.
    """

    size: tuple[int, int, int]
    spacing: Vector
    origin: Vector
    axes: tuple[Vector, Vector, Vector]


def super_resolution_grid(grid: Grid, target_spacing: float) -> Grid:
    """The grid of ``grid`` enhanced to ``target_spacing`` mm between slices (see the module rule).

    Raises:
        ValueError: the target is not a positive number finer than the input's slab spacing.
    """
    slab = grid.spacing[2]
    if not (math.isfinite(target_spacing) and 0 < target_spacing < slab - _TOL):
        raise ValueError(f"the target spacing must be finer than the input's {slab:g} mm, got {target_spacing}")
    extent = grid.size[2] * slab
    n_slices = int(math.floor((extent - target_spacing) / target_spacing + _TOL)) + 1
    offset = target_spacing / 2 - slab / 2
    normal = grid.axes[2]
    origin = tuple(o + offset * n for o, n in zip(grid.origin, normal))
    return Grid((grid.size[0], grid.size[1], n_slices), (grid.spacing[0], grid.spacing[1], float(target_spacing)),
                origin, grid.axes)  # type: ignore[arg-type]
