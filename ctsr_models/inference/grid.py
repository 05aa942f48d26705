"""The output grid of through-plane super-resolution and the physical resampling onto it.

Rule (DESIGN.md): input slab ``k`` has centre ``c_k`` and slab spacing ``S``; the target spacing is
``s``. The output covers the slabs' extent: first output centre at ``c_0 - S/2 + s/2``, then every
``s`` mm up to ``c_last + S/2 - s/2``, with the same in-plane grid and direction. When that extent is
not a whole number of ``s`` the grid stops at the last centre that fits (less than ``s`` short of
the bound; the only deviation from the rule).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ctsr_models.io.errors import InputError
from ctsr_models.io.volume import Volume

_TOL = 1e-6


@dataclass(frozen=True)
class ZGrid:
    """Output grid along the slice normal.

    Attributes:
        n_slices: number of output slices.
        spacing: output slice spacing ``s`` (mm).
        first_offset_mm: position of output slice 0 relative to input slab 0's centre (``s/2 - S/2``).
        slab_centres_mm: ``(n_in,)`` input slab centres relative to output slice 0 (mm).
    """

    n_slices: int
    spacing: float
    first_offset_mm: float
    slab_centres_mm: np.ndarray

    def output_geometry(self, thick: Volume) -> dict[str, tuple[float, ...]]:
        """``spacing``, ``origin`` and ``direction`` of the output volume (ITK order, LPS, mm)."""
        origin = np.asarray(thick.origin) + self.first_offset_mm * thick.slice_normal
        return {"spacing": (thick.spacing[0], thick.spacing[1], self.spacing), "origin": tuple(origin),
                "direction": thick.direction}


def through_plane_grid(thick: Volume, target_spacing: float) -> ZGrid:
    """The output grid for enhancing ``thick`` to ``target_spacing`` mm (see the module rule).

    Raises:
        InputError: the target is not finer than the input's slice spacing, or not positive.
    """
    slab_spacing = thick.spacing[2]
    if not (math.isfinite(target_spacing) and target_spacing > 0):
        raise InputError(f"target spacing must be a positive number of mm, got {target_spacing}")
    if target_spacing >= slab_spacing - _TOL:
        raise InputError(f"the input's slices are already {slab_spacing:g} mm apart, no coarser than the "
                         f"{target_spacing:g} mm target; choose a smaller --target-spacing")
    extent = (thick.shape[0] - 1) * slab_spacing + slab_spacing  # c_0 - S/2 .. c_last + S/2
    n_out = int(math.floor((extent - target_spacing) / target_spacing + _TOL)) + 1
    first = target_spacing / 2 - slab_spacing / 2
    centres = np.arange(thick.shape[0]) * slab_spacing - first
    return ZGrid(n_out, float(target_spacing), float(first), centres)
