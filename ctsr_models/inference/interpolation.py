"""Interpolation baselines onto the super-resolution output grid (what a viewer gives for free).

SimpleITK resampling in physical space: ``linear``, ``cubic`` (cubic B-spline) and ``lanczos``
(Lanczos windowed sinc, radius 3, normalised). They are the baselines every benchmark prints beside a model, and they are
offered as models of their own (``--model cubic``).
"""
from __future__ import annotations

import numpy as np

from ctsr_models.io.volume import Volume

from .grid import ZGrid

INTERPOLATORS = ("linear", "cubic", "lanczos")


def interpolate_to_grid(thick: Volume, grid: ZGrid, method: str) -> np.ndarray:
    """Resample ``thick`` onto the output grid with a SimpleITK interpolator.

    Args:
        thick: the thick-slice input.
        grid: output grid from :func:`~ctsr_models.inference.grid.through_plane_grid`.
        method: one of :data:`INTERPOLATORS`.

    Returns:
        ``(grid.n_slices, y, x)`` float32 HU.
    """
    import SimpleITK as sitk

    kinds = {"linear": sitk.sitkLinear, "cubic": sitk.sitkBSpline, "lanczos": sitk.sitkLanczosWindowedSinc}
    if method not in kinds:
        raise ValueError(f"unknown interpolation {method!r}; allowed: {', '.join(INTERPOLATORS)}")
    geo = grid.output_geometry(thick)
    ref = sitk.Image([thick.shape[2], thick.shape[1], grid.n_slices], sitk.sitkFloat32)
    ref.SetSpacing(geo["spacing"])
    ref.SetOrigin(geo["origin"])
    ref.SetDirection(geo["direction"])
    src = thick.replace(array=np.asarray(thick.array, dtype=np.float32)).to_sitk()
    out = sitk.GetArrayFromImage(sitk.Resample(src, ref, sitk.Transform(), kinds[method], 0.0, sitk.sitkFloat32))
    if method == "lanczos":
        # ITK's windowed-sinc weights do not sum to one (a constant comes back up to ~0.1 % off);
        # divide by the resampled constant 1, as normalised Lanczos kernels do.
        ones = sitk.Image(src.GetSize(), sitk.sitkFloat32) + 1.0
        ones.CopyInformation(src)
        out /= sitk.GetArrayFromImage(sitk.Resample(ones, ref, sitk.Transform(), kinds[method], 0.0, sitk.sitkFloat32))
    return out
