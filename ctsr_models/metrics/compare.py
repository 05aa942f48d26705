"""Score a predicted volume against a reference volume on the reference grid, in physical space.

Supported geometry: both volumes have the same direction (within 1e-4). Their z spacing, origin, number
of slices and in-plane grid (spacing, size, origin) may differ. When the grids are equal (size, spacing,
origin and direction within 1e-4) the arrays are compared as they are; otherwise the prediction is
resampled onto the reference grid with SimpleITK (linear interpolation).

Scored region:
    * z: the reference slices whose centres lie inside the z-range both volumes cover (the prediction's
      first..last slice centre along the reference's slice normal, intersected with the reference's), less
      ``border_mm`` at each end (1e-4 mm tolerance). For through-plane SR, DESIGN.md scores the truth
      slices inside the thick stack less one slab at each end: pass ``border_mm`` = the slab spacing.
    * in-plane: the reference voxels whose centres lie inside the prediction's field of view (between its
      first and last voxel centres along x and y); voxels outside are left out by cropping, never filled.
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .image_metrics import evaluate_arrays

if TYPE_CHECKING:
    from ctsr_models.io.volume import Volume

log = logging.getLogger(__name__)

GRID_TOL = 1e-4  # mm (and direction cosines): grids closer than this are the same grid


def _same_grid(a: Volume, b: Volume) -> bool:
    return (a.shape == b.shape
            and np.allclose(a.spacing, b.spacing, rtol=0, atol=GRID_TOL)
            and np.allclose(a.origin, b.origin, rtol=0, atol=GRID_TOL)
            and np.allclose(a.direction, b.direction, rtol=0, atol=GRID_TOL))


def _check_direction(pred: Volume, ref: Volume) -> None:
    if not np.allclose(pred.direction, ref.direction, rtol=0, atol=GRID_TOL):
        raise ValueError(
            f"the prediction's direction {np.round(pred.direction, 4).tolist()} differs from the reference's "
            f"{np.round(ref.direction, 4).tolist()}; only volumes with the same direction can be compared "
            "(z spacing, origin, size and in-plane grid may differ): resample one onto the other's orientation")


def _scored_slices(pred: Volume, ref: Volume, border_mm: float) -> tuple[int, int]:
    """First and last reference slice index inside the common z-range less ``border_mm`` at each end."""
    r, p = ref.slice_positions(), pred.slice_positions()  # same normal, so the same axis and zero
    lo = max(p[0], r[0]) + border_mm
    hi = min(p[-1], r[-1]) - border_mm
    keep = np.flatnonzero((r >= lo - GRID_TOL) & (r <= hi + GRID_TOL))
    if keep.size == 0:
        border = f", less {border_mm:g} mm at each end" if border_mm else ""
        raise ValueError(f"no reference slice to score: along the slice normal the reference covers "
                         f"[{r[0]:g}, {r[-1]:g}] mm and the prediction [{p[0]:g}, {p[-1]:g}] mm{border}")
    return int(keep[0]), int(keep[-1])


def _inplane_box(pred: Volume, ref: Volume) -> tuple[slice, slice]:
    """``(y, x)`` index ranges of the reference voxels whose centres lie inside the prediction's field of view."""
    nz, ny, nx = pred.shape
    corners = np.array([[0.0, 0.0, 0.0], [nx - 1.0, ny - 1.0, nz - 1.0]])
    idx = ref.physical_to_index(pred.index_to_physical(corners))  # (2, 3) continuous (i, j, k) of the reference
    ranges = []
    for axis, size in ((1, ref.shape[1]), (0, ref.shape[2])):  # j (y) then i (x)
        tol = GRID_TOL / ref.spacing[axis]
        first = max(0, math.ceil(idx[:, axis].min() - tol))
        last = min(size - 1, math.floor(idx[:, axis].max() + tol))
        if last < first:
            raise ValueError("the prediction's in-plane field of view does not overlap the reference's")
        ranges.append(slice(first, last + 1))
    return ranges[0], ranges[1]


def _resample_onto(pred: Volume, ref: Volume, box: tuple[slice, slice, slice]) -> np.ndarray:
    """Linearly resample ``pred`` onto the reference voxels of ``box`` (``(z, y, x)`` slices); float32."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(pred.array, dtype=np.float32))
    image.SetSpacing(pred.spacing)
    image.SetOrigin(pred.origin)
    image.SetDirection(pred.direction)
    zs, ys, xs = box
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([xs.stop - xs.start, ys.stop - ys.start, zs.stop - zs.start])
    resampler.SetOutputSpacing(ref.spacing)
    resampler.SetOutputOrigin(ref.index_to_physical(np.array([xs.start, ys.start, zs.start], float)).tolist())
    resampler.SetOutputDirection(ref.direction)
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetDefaultPixelValue(float("nan"))  # never expected inside the box; evaluate_arrays would refuse it
    return sitk.GetArrayFromImage(resampler.Execute(image))


def compare_volumes(pred: Volume, ref: Volume, border_mm: float = 0.0) -> dict[str, Any]:
    """Score ``pred`` against ``ref`` on the reference grid, over the region both cover.

    See the module docstring for the supported geometry and the scored region.

    Args:
        pred: the volume to score (HU).
        ref: the reference volume (HU); its grid is the one scored on.
        border_mm: mm left out at each end of the common z-range (``>= 0``).

    Returns:
        The keys of :func:`evaluate_arrays` (``psnr``, ``ssim``, ``ssim2d``, ``mae_hu_body``, ``psnr_1000``)
        plus ``n_slices_scored`` (int), ``z_range_mm`` (``[first, last]`` centre of the scored reference
        slices, mm along the slice normal measured from the LPS origin as in
        :meth:`Volume.slice_positions`) and ``resampled`` (whether the prediction was interpolated).

    Raises:
        ValueError: negative border, different directions, no overlap in z or in-plane, or a scored region
            too small for SSIM (11 voxels per axis).
    """
    if not (np.isfinite(border_mm) and border_mm >= 0):
        raise ValueError(f"border_mm must be >= 0 mm, got {border_mm}")
    _check_direction(pred, ref)
    k_first, k_last = _scored_slices(pred, ref, border_mm)
    zs = slice(k_first, k_last + 1)
    resampled = not _same_grid(pred, ref)
    if resampled:
        box = (zs, *_inplane_box(pred, ref))
        pred_hu = _resample_onto(pred, ref, box)
    else:
        box = (zs, slice(None), slice(None))
        pred_hu = pred.array[box]
    ref_hu = ref.array[box]
    log.info("scoring %d reference slices (%s x %s voxels in-plane), resampled=%s", k_last - k_first + 1,
             ref_hu.shape[1], ref_hu.shape[2], resampled)
    result: dict[str, Any] = evaluate_arrays(pred_hu, ref_hu)
    positions = ref.slice_positions()
    result.update(n_slices_scored=k_last - k_first + 1,
                  z_range_mm=[float(positions[k_first]), float(positions[k_last])], resampled=resampled)
    return result
