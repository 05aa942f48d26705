"""Anatomical augmentation: new plausible patients made from a CT, with exact geometry bookkeeping.

Every geometric change is one pull-back displacement field ``u`` in physical mm (LPS): the output voxel
centred at ``x`` takes the (trilinear) value of the input at ``x + u(x)``, so the input is resampled once.
Reading the chain from the output back to the input (forward: input → output is the reverse order):

    1. pose and habitus: ``p1 = c + S^-1 R^T (x - c)``; the forward map ``T(p) = c + R S (p - c)``
       scales the body about its centre ``c`` (bounding-box centre of the body, ``HU > -500``) by
       ``S = diag(s_lr, s_ap, 1)`` (left-right and antero-posterior independently, cranio-caudal kept),
       then rotates it by ``R = Rz Ry Rx`` (small angles about the LPS axes, degrees);
    2. elastic: ``p2 = p1 + u_e(p1)``, a cubic B-spline *approximation* of random control values on a
       coarse grid; its weights are non-negative and sum to one, so ``|u_e|`` per axis never exceeds the
       drawn amplitude (mm);
    3. breathing: ``p3 = p2 + u_b(p2)`` with ``u_b = k w(y) (A^-1 - I)(y - a)``: an expansion ``A`` of the
       lungs about the top of the lungs ``a`` (so the diaphragm moves most), 60 % of the log volume change
       cranio-caudal and 20 % each left-right and antero-posterior, weighted by ``w = exp(-(max(d - 5 mm,
       0) / 40 mm)^2)`` with ``d`` the distance to the lungs (tissue next to the lungs follows them,
       further away it stays). ``k`` is calibrated so that the lung volume changes by the asked fraction.

Intensity changes, all on the input before the warp:
    * table removal: components of ``HU > -500`` outside the body's connected component that lie
      posterior to it (centroid behind the body centroid by > 1/4 of the body depth), are thin (mean
      antero-posterior thickness <= 30 mm) and horizontal (wider than deep) become air, with a rim of
      3 mm outside the body;
    * contrast state flip: in the thoracic cavity between the lungs (per-slice convex hull of the lungs,
      minus the lungs, in front of the plane at 60 % of the lungs' depth, so without the spine), the
      largest connected region of enhanced blood (120..450 HU, > 3 mm away from bone > 600 HU) loses
      ``delta`` HU (never below 40 HU) when it holds >= 20 mL; otherwise the largest region of blood
      density (20..80 HU) there gains ``delta`` HU. ``|change| <= delta``, only there.

And at the warp, lung air fraction follows the breathing volume change: with ``J`` the local Jacobian of
the forward breathing map (``1 / det(I + grad u_b)``), ``HU_new = -1000 + (HU + 1000) / J`` in lung voxels
(the lungs with their vessels, see :func:`lung_mask`; linearly blended with the interpolated mask), which
conserves lung mass ``sum (HU + 1000) dV``.
Habitus and elastic changes keep HU (another patient of the same tissue densities).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation
from skimage.morphology import convex_hull_image

from ctsr_models.io import Volume
from ctsr_models.physics import VolumeGrid

from .patches import BODY_HU

log = logging.getLogger(__name__)

AIR_HU = -1000.0
LUNG_HU = -400.0
_FIELD_MM = 5.0  # spacing of the grids on which the breathing field is computed
_W_OFFSET_MM, _W_DECAY_MM = 5.0, 40.0  # breathing weight w(d) around the lungs
_CC_SHARE = 0.6  # share of the log lung-volume change taken cranio-caudally


@dataclass
class AnatomyAug:
    """Probabilities and ranges of the anatomical augmentation (each part is on with its probability).

    Attributes:
        p_habitus: probability of body-habitus scaling.
        habitus_range: ``[lo, hi]`` scale factors, drawn independently left-right and antero-posterior,
            within ``[0.85, 1.15]``.
        p_rotation: probability of a rotation.
        rotation_deg: ``±`` degrees about each LPS axis through the body centre, within ``[0, 10]``.
        p_elastic: probability of the elastic deformation.
        elastic_mm: largest displacement per axis, mm, within ``[0, 20]`` (the amplitude is drawn in
            ``[0, elastic_mm]``).
        elastic_grid_mm: control point spacing, mm, within ``[20, 200]``.
        p_breathing: probability of breathing.
        breathing_range: ``[lo, hi]`` lung volume change as a fraction (``0.1``: 10 % more air), within
            ``[-0.3, 0.3]``.
        p_table: probability of removing the table.
        p_contrast: probability of flipping the contrast state of the blood pool.
        contrast_hu: ``[lo, hi]`` size of the HU shift, within ``[0, 400]``.
    """

    p_habitus: float = 0.8
    habitus_range: tuple[float, float] = (0.85, 1.15)
    p_rotation: float = 0.5
    rotation_deg: float = 4.0
    p_elastic: float = 0.5
    elastic_mm: float = 6.0
    elastic_grid_mm: float = 80.0
    p_breathing: float = 0.5
    breathing_range: tuple[float, float] = (-0.15, 0.15)
    p_table: float = 0.5
    p_contrast: float = 0.3
    contrast_hu: tuple[float, float] = (100.0, 250.0)

    def __post_init__(self) -> None:
        for name in ("p_habitus", "p_rotation", "p_elastic", "p_breathing", "p_table", "p_contrast"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        self.habitus_range = _range("habitus_range", self.habitus_range, 0.85, 1.15)
        self.breathing_range = _range("breathing_range", self.breathing_range, -0.3, 0.3)
        self.contrast_hu = _range("contrast_hu", self.contrast_hu, 0.0, 400.0)
        for name, hi in (("rotation_deg", 10.0), ("elastic_mm", 20.0)):
            if not 0.0 <= getattr(self, name) <= hi:
                raise ValueError(f"{name} must be in [0, {hi:g}], got {getattr(self, name)}")
        if not 20.0 <= self.elastic_grid_mm <= 200.0:
            raise ValueError(f"elastic_grid_mm must be in [20, 200], got {self.elastic_grid_mm}")


def _range(name: str, value: Sequence[float], lo: float, hi: float) -> tuple[float, float]:
    """``value`` as a ``(lo, hi)`` pair inside ``[lo, hi]``, or ValueError naming the allowed range."""
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or not lo <= pair[0] <= pair[1] <= hi:
        raise ValueError(f"{name} must be [lo, hi] with {lo:g} <= lo <= hi <= {hi:g}, got {list(value)}")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class AnatomyDraw:
    """One random draw of :class:`AnatomyAug` (the neutral value where a part is off).

    Attributes:
        habitus: ``(s_lr, s_ap)`` scale factors.
        rotation_deg: angles about the LPS x, y, z axes, degrees (``R = Rz Ry Rx``).
        elastic_mm: amplitude of the elastic deformation, mm (0: off).
        elastic_grid_mm: its control point spacing, mm.
        breathing: asked lung volume change, fraction (0: off).
        remove_table: whether the table is removed.
        contrast_hu: size of the contrast flip, HU (0: off).
    """

    habitus: tuple[float, float] = (1.0, 1.0)
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    elastic_mm: float = 0.0
    elastic_grid_mm: float = 80.0
    breathing: float = 0.0
    remove_table: bool = False
    contrast_hu: float = 0.0

    @property
    def rotation(self) -> np.ndarray:
        """The 3x3 rotation ``Rz Ry Rx`` (LPS)."""
        return Rotation.from_euler("xyz", self.rotation_deg, degrees=True).as_matrix()


def draw_anatomy(aug: AnatomyAug, rng: np.random.Generator) -> AnatomyDraw:
    """Draw the parts and amounts; always 14 numbers in a fixed order, so a seed gives one draw."""
    on = rng.random(6) < np.array([aug.p_habitus, aug.p_rotation, aug.p_elastic, aug.p_breathing, aug.p_table,
                                   aug.p_contrast])
    habitus = rng.uniform(*aug.habitus_range, 2)
    angles = rng.uniform(-aug.rotation_deg, aug.rotation_deg, 3)
    elastic, breathing, contrast = rng.random(), rng.uniform(*aug.breathing_range), rng.uniform(*aug.contrast_hu)
    return AnatomyDraw(
        habitus=(float(habitus[0]), float(habitus[1])) if on[0] else (1.0, 1.0),
        rotation_deg=tuple(float(a) for a in angles) if on[1] else (0.0, 0.0, 0.0),
        elastic_mm=float(elastic * aug.elastic_mm) if on[2] else 0.0,
        elastic_grid_mm=aug.elastic_grid_mm,
        breathing=float(breathing) if on[3] else 0.0,
        remove_table=bool(on[4]),
        contrast_hu=float(contrast) if on[5] else 0.0,
    )


# ----------------------------------------------------------------------------------------- masks
def _axes(grid: VolumeGrid) -> tuple[int, int, int]:
    """Array axes (0 = z, 1 = y, 2 = x of ``(z, y, x)``) along LPS x, y, z; the grid must be axis-aligned."""
    d = np.abs(np.asarray(grid.direction, dtype=np.float64).reshape(3, 3))
    if not np.allclose(np.sort(d, axis=0)[-1], 1.0, atol=1e-3):
        raise ValueError("anatomical augmentation needs an axis-aligned grid (direction a signed permutation)")
    return tuple(2 - int(np.argmax(d[lps])) for lps in range(3))  # type: ignore[return-value]


def _world(grid: VolumeGrid, zyx: np.ndarray) -> np.ndarray:
    """LPS points of ``(n, 3)`` array indices ``(z, y, x)``."""
    d = np.asarray(grid.direction, dtype=np.float64).reshape(3, 3)
    return np.asarray(grid.origin) + (np.asarray(zyx, dtype=np.float64)[:, ::-1] * np.asarray(grid.spacing)) @ d.T


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The body: the largest 6-connected component of ``HU > -500`` (bool, like ``hu``)."""
    lab, n = ndi.label(hu > BODY_HU)
    if n == 0:
        return np.zeros(hu.shape, dtype=bool)
    return lab == 1 + int(np.argmax(ndi.sum_labels(np.ones(hu.shape), lab, np.arange(1, n + 1))))


def lung_mask(hu: np.ndarray, grid: VolumeGrid, body: np.ndarray) -> np.ndarray:
    """The lungs with their vessels: air (``HU < -400``) enclosed by the body in its axial slice, in
    components >= 10 % of the largest, with what it encloses in each axial slice filled in."""
    axial = _axes(grid)[2]
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[tuple(1 if a == axial else slice(None) for a in range(3))] = ndi.generate_binary_structure(2, 1)
    inside = ndi.binary_fill_holes(body, structure=structure) & ~body & (hu < LUNG_HU)
    lab, n = ndi.label(inside)
    if n == 0:
        return inside
    sizes = ndi.sum_labels(np.ones(hu.shape), lab, np.arange(1, n + 1))
    air = np.isin(lab, 1 + np.flatnonzero(sizes >= 0.1 * sizes.max()))
    return ndi.binary_fill_holes(air, structure=structure)


def table_mask(hu: np.ndarray, grid: VolumeGrid, body: np.ndarray) -> np.ndarray:
    """The table (see the module docstring), with a 3 mm rim outside the body; empty if none is found."""
    step_mm = [grid.spacing[2 - a] for a in _axes(grid)]  # voxel size along LPS x, y, z
    lab, n = ndi.label((hu > BODY_HU) & ~body)
    if n == 0 or not body.any():
        return np.zeros(hu.shape, dtype=bool)
    body_pts = _world(grid, np.argwhere(body[::2, ::2, ::2]) * 2)
    body_y, depth = body_pts[:, 1].mean(), np.ptp(body_pts[:, 1])
    voxel_mm3 = float(np.prod(grid.spacing))
    keep = []
    for k, sl in enumerate(ndi.find_objects(lab), start=1):
        pts = _world(grid, np.argwhere(lab[sl] == k) + [s.start for s in sl])
        lr, ap, cc = (np.ptp(pts[:, a]) + step_mm[a] for a in range(3))
        if pts[:, 1].mean() - body_y > depth / 4 and len(pts) * voxel_mm3 / (lr * cc) <= 30.0 and lr >= ap:
            keep.append(k)
    table = np.isin(lab, keep)
    rim = max(1, round(3.0 / min(grid.spacing)))
    return ndi.binary_dilation(table, iterations=rim) & ~ndi.binary_dilation(body) if keep else table


def contrast_target(hu: np.ndarray, grid: VolumeGrid, lungs: np.ndarray) -> tuple[np.ndarray, int]:
    """The blood pool to flip and the direction (``-1``: wash out enhanced blood, ``+1``: enhance).

    Returns:
        ``(mask, sign)``; an empty mask when there are no lungs (no thoracic cavity to work in).
    """
    axial = _axes(grid)[2]
    cavity = np.zeros(hu.shape, dtype=bool)
    for i in np.flatnonzero(lungs.any(axis=tuple(a for a in range(3) if a != axial))):
        index = tuple(i if a == axial else slice(None) for a in range(3))
        cavity[index] = convex_hull_image(lungs[index])
    lung_ap = _world(grid, np.argwhere(lungs[::2, ::2, ::2]) * 2)[:, 1]
    front = lung_ap.min() + 0.6 * np.ptp(lung_ap)  # the spine lies behind this plane
    ap_axis = _axes(grid)[1]
    ap_mm = _world(grid, np.outer(np.arange(hu.shape[ap_axis]), np.eye(3)[ap_axis]))[:, 1]
    shape = [1, 1, 1]
    shape[ap_axis] = -1
    cavity &= ~lungs & (ap_mm < front).reshape(shape)
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    away = max(1, round(3.0 / min(grid.spacing)))
    enhanced = _largest(cavity & (hu >= 120) & (hu <= 450) & ~ndi.binary_dilation(hu > 600, iterations=away))
    if enhanced.sum() * voxel_ml >= 20.0:
        return enhanced, -1
    return _largest(cavity & (hu >= 20) & (hu <= 80)), 1


def _largest(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of ``mask`` (empty stays empty)."""
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    return lab == 1 + int(np.argmax(ndi.sum_labels(np.ones(mask.shape), lab, np.arange(1, n + 1))))


def _flip_contrast(hu: np.ndarray, target: np.ndarray, sign: int, delta: float) -> None:
    """Shift ``hu`` in place by ``sign * delta`` on ``target`` (wash-out stops at 40 HU)."""
    if sign > 0:
        hu[target] += delta
    else:
        hu[target] = np.maximum(hu[target] - delta, np.minimum(hu[target], 40.0))


# ----------------------------------------------------------------------------------------- fields
@dataclass(frozen=True)
class _Field:
    """A vector or scalar field sampled on ``grid`` (``values`` ``(z, y, x[, c])``), linear in between."""

    grid: VolumeGrid
    values: np.ndarray

    def at(self, points: np.ndarray) -> np.ndarray:
        """The field at LPS points ``(..., 3)``, edge values beyond the grid."""
        idx = self.grid.world_to_index(points)[..., ::-1].reshape(-1, 3).T
        vals = self.values if self.values.ndim == 4 else self.values[..., None]
        out = np.stack([ndi.map_coordinates(vals[..., c], idx, order=1, mode="nearest") for c in range(vals.shape[-1])],
                       axis=-1).reshape(*points.shape[:-1], vals.shape[-1])
        return out if self.values.ndim == 4 else out[..., 0]


def _coarse(grid: VolumeGrid, step_mm: float) -> tuple[VolumeGrid, int]:
    """The grid subsampled to about ``step_mm`` (every ``f``-th voxel) and ``f``."""
    f = max(1, math.ceil(step_mm / min(grid.spacing) - 1e-6))
    shape = tuple((n - 1) // f + 1 for n in grid.shape)
    return VolumeGrid(shape, tuple(s * f for s in grid.spacing), grid.origin, grid.direction), f


def _elastic_field(grid: VolumeGrid, amplitude: float, spacing_mm: float, rng: np.random.Generator) -> _Field:
    """Random control values in ``±amplitude`` mm every ``spacing_mm``, cubic B-spline approximated."""
    extent_zyx = (np.asarray(grid.shape) - 1) * np.asarray(grid.spacing[::-1])
    n_ctrl = np.ceil(extent_zyx / spacing_mm).astype(int) + 3  # one control point beyond each end
    ctrl = rng.uniform(-amplitude, amplitude, (*n_ctrl, 3))
    coarse, f = _coarse(grid, _FIELD_MM)
    zyx = np.stack(np.meshgrid(*(np.arange(n) for n in coarse.shape), indexing="ij"), axis=0).reshape(3, -1)
    idx = zyx * f * np.asarray(grid.spacing[::-1])[:, None] / spacing_mm + 1.0
    values = np.stack([ndi.map_coordinates(ctrl[..., c], idx, order=3, mode="nearest", prefilter=False)
                       for c in range(3)], axis=-1).reshape(*coarse.shape, 3)
    return _Field(coarse, values)


def _jacobian_det(u: _Field) -> np.ndarray:
    """``det(I + grad u)`` of a displacement field, on its grid."""
    d = np.asarray(u.grid.direction, dtype=np.float64).reshape(3, 3)
    grads = np.stack([np.gradient(u.values[..., c], *u.grid.spacing[::-1]) for c in range(3)], axis=0)
    jac_axes = np.stack([grads[:, 2 - i] for i in range(3)], axis=-1)  # (3 LPS comp, z, y, x, 3 grid axes)
    jac = np.moveaxis(jac_axes, 0, -2) @ d.T  # d u / d LPS
    return np.linalg.det(np.eye(3) + jac)


def _breathing_field(lungs: np.ndarray, grid: VolumeGrid, fraction: float) -> tuple[_Field, _Field]:
    """The breathing displacement ``u_b`` and ``det(I + grad u_b)``, calibrated to the asked fraction."""
    coarse, f = _coarse(grid, _FIELD_MM)
    pts = coarse.voxel_centres()
    lung_f = _Field(grid, lungs.astype(np.float32))
    small = lungs[::f, ::f, ::f]
    dist = ndi.distance_transform_edt(~small, sampling=coarse.spacing[::-1])
    w = np.exp(-(np.maximum(dist - _W_OFFSET_MM, 0.0) / _W_DECAY_MM) ** 2)[..., None]
    lung_pts = _world(grid, np.argwhere(lungs[::2, ::2, ::2]) * 2)
    anchor = np.array([*(lung_pts[:, :2].min(0) + lung_pts[:, :2].max(0)) / 2, lung_pts[:, 2].max()])
    log_change = math.log1p(fraction)
    scale = np.exp(log_change * np.array([(1 - _CC_SHARE) / 2, (1 - _CC_SHARE) / 2, _CC_SHARE]))
    base = w * (pts - anchor) * (1.0 / scale - 1.0)
    v0 = float(lung_f.at(pts).sum())
    k = 1.0
    for _ in range(4):
        got = math.log(max(float(lung_f.at(pts + k * base).sum()), 1e-6) / v0)
        if abs(got) < 1e-9 or abs(got - log_change) < 1e-3 * abs(log_change):
            break
        k = float(np.clip(k * log_change / got, 0.2, 5.0))
    u = _Field(coarse, (k * base).astype(np.float32))
    return u, _Field(coarse, _jacobian_det(u).astype(np.float32))


# ----------------------------------------------------------------------------------------- warp
@dataclass
class AnatomyResult:
    """An augmented CT and the geometry that made it.

    Attributes:
        hu: float32 ``out_grid.shape`` HU.
        grid: the output grid.
        displacement: float32 ``(z, y, x, 3)`` LPS mm; the output voxel at ``x`` holds the input at ``x + u``.
        draw: what was drawn.
        centre: LPS body centre (mm) about which habitus and rotation act.
    """

    hu: np.ndarray
    grid: VolumeGrid
    displacement: np.ndarray
    draw: AnatomyDraw
    centre: np.ndarray

    def moved(self, points: np.ndarray, iterations: int = 50) -> np.ndarray:
        """Where input LPS points ``(..., 3)`` lie in the output: ``q`` with ``q + u(q) = p`` (fixed point)."""
        p = np.asarray(points, dtype=np.float64)
        u = _Field(self.grid, self.displacement)
        q = p.copy()
        for _ in range(iterations):
            q = p - u.at(q)
        return q


def _edit_intensities(src: np.ndarray, grid: VolumeGrid, draw: AnatomyDraw) -> tuple[np.ndarray, np.ndarray]:
    """Table removal and contrast flip of ``src`` in place; returns the body centre (LPS mm) and the lungs.

    The lungs are only looked for when breathing or the contrast flip needs them (else an empty mask).
    """
    body = body_mask(src)
    zyx = np.argwhere(body[::2, ::2, ::2]) * 2
    pts = _world(grid, zyx) if len(zyx) else _world(grid, (np.asarray(grid.shape)[None] - 1) / 2)
    centre = (pts.min(axis=0) + pts.max(axis=0)) / 2
    if draw.remove_table:
        src[table_mask(src, grid, body)] = AIR_HU
    lungs = lung_mask(src, grid, body) if draw.breathing or draw.contrast_hu else np.zeros(src.shape, dtype=bool)
    if draw.contrast_hu and lungs.any():
        target, sign = contrast_target(src, grid, lungs)
        _flip_contrast(src, target, sign, draw.contrast_hu)
    return centre, lungs


def augment_anatomy(hu: np.ndarray, grid: VolumeGrid, aug: AnatomyAug | AnatomyDraw, rng: np.random.Generator,
                    out_grid: VolumeGrid | None = None) -> AnatomyResult:
    """A new plausible patient from a CT (see the module docstring), resampled once.

    Args:
        hu: ``grid.shape`` HU (not modified).
        grid: where ``hu`` lies (axis-aligned; LPS mm).
        aug: settings to draw from, or a fixed draw.
        rng: random numbers (the draw, then the elastic control values).
        out_grid: the output grid (default ``grid``); give ``hu`` a margin around it so that shrinking
            and moving the anatomy brings in real tissue, not air.

    Returns:
        The augmented CT on ``out_grid`` and its displacement field.
    """
    draw = draw_anatomy(aug, rng) if isinstance(aug, AnatomyAug) else aug
    out_grid = grid if out_grid is None else out_grid
    src = np.array(hu, dtype=np.float32)
    centre, lungs = _edit_intensities(src, grid, draw)
    x = out_grid.voxel_centres()
    inverse = np.diag([1 / draw.habitus[0], 1 / draw.habitus[1], 1.0]) @ draw.rotation.T
    p = centre + (x - centre) @ inverse.T
    if draw.elastic_mm > 0:
        p += _elastic_field(grid, draw.elastic_mm, draw.elastic_grid_mm, rng).at(p)
    det = None
    if draw.breathing and lungs.any():
        u_b, det_f = _breathing_field(lungs, grid, draw.breathing)
        det = det_f.at(p)
        p += u_b.at(p)
    idx = grid.world_to_index(p)[..., ::-1].reshape(-1, 3).T
    out = ndi.map_coordinates(src, idx, order=1, mode="constant", cval=AIR_HU).reshape(out_grid.shape)
    if det is not None:
        lung_frac = ndi.map_coordinates(lungs.astype(np.float32), idx, order=1, mode="constant").reshape(out.shape)
        out += lung_frac * (out - AIR_HU) * (det - 1.0)
    log.debug("anatomy draw %s", draw)
    return AnatomyResult(out.astype(np.float32), out_grid, (p - x).astype(np.float32), draw, centre)


def augment_volume(volume: Volume, aug: AnatomyAug | AnatomyDraw, rng: np.random.Generator) -> Volume:
    """:func:`augment_anatomy` of a :class:`Volume` on its own grid (float32 HU, geometry kept)."""
    result = augment_anatomy(np.asarray(volume.array, dtype=np.float32), VolumeGrid.of(volume), aug, rng)
    return volume.replace(array=result.hu)
