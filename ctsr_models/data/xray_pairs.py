"""Biplanar X-ray → CT training pairs simulated from CT volumes with the project's projector.

One pair (:func:`simulate_pair`): the CT is resampled onto the output grid of an :class:`XraySetup`
(``size``³ voxels over ``fov_mm``, centred on the body), two radiographs (frontal ``pa`` and lateral
``ll`` by default) are projected from that grid with :func:`ctsr_models.physics.project` at optionally
jittered poses (:class:`PoseJitter`), and made X-ray-like (:class:`ContrastAug`).

Intensities (the contract with the network and the inference pipeline):
    * CT: the clean protocol, ``ct_net = (clip(HU, -1000, 1500) + 1000) / 2500`` in ``[0, 1]``
      (:func:`hu_to_ct_net`, :func:`ct_net_to_hu`); the benchmark scores the same window.
    * X-rays: :func:`normalize_xray`, one normalisation for simulated line integrals (training) and for
      real radiographs (inference): ``clip((x - p0.5) / (p99.5 - p0.5), 0, 1)`` with ``p`` the 0.5th and
      99.5th percentiles of the image. Bright means more attenuation (line integrals, or a radiograph
      displayed with bone white). It is invariant to any positive scale and offset of the input, so the
      unknown dose, gain and window of a real radiograph do not matter; gamma-like differences are what
      the contrast augmentation teaches the network to ignore.
    * The DRRs are computed from the clipped HU on the output grid (2.5 mm by default), so a perfect
      prediction re-projects exactly onto the simulated inputs (projection-consistency loss and metric).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch.utils.data import Dataset

from ctsr_models.io import Volume
from ctsr_models.physics import ProjectionGeometry, VolumeGrid, drr, view_name
from ctsr_models.physics.lifting import lifting_coords

from .anatomy_augment import AnatomyAug, AnatomyDraw, augment_anatomy
from .cache import CachedVolume
from .patches import BODY_HU

CLEAN_HU = (-1000.0, 1500.0)
XRAY_PERCENTILES = (0.5, 99.5)
GEOMETRY_FIELDS = 16  # source 3, origin 3, row_dir 3, col_dir 3, shape 2, pixel_mm 2
ANATOMY_MARGIN = 1.25  # side of the grid read around the output cube for anatomical augmentation

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


# ----------------------------------------------------------------------------------------- intensities
def hu_to_ct_net(hu: ArrayT) -> ArrayT:
    """HU → the network's CT scale: ``(clip(HU, -1000, 1500) + 1000) / 2500`` in ``[0, 1]``."""
    lo, hi = CLEAN_HU
    if isinstance(hu, torch.Tensor):
        return (hu.clamp(lo, hi) - lo) / (hi - lo)
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def ct_net_to_hu(t: ArrayT) -> ArrayT:
    """The network's CT scale → HU (``t * 2500 - 1000``), not clipped."""
    lo, hi = CLEAN_HU
    if isinstance(t, torch.Tensor):
        return t * (hi - lo) + lo
    return (np.asarray(t, dtype=np.float32) * (hi - lo) + lo).astype(np.float32)


def normalize_xray(image: np.ndarray) -> np.ndarray:
    """Percentile normalisation of a radiograph or DRR to ``[0, 1]`` (see the module docstring).

    Args:
        image: ``(rows, cols)``, bright = more attenuation; any scale and offset.

    Returns:
        float32 ``(rows, cols)`` in ``[0, 1]``; all zeros for a constant image.
    """
    a = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(a, XRAY_PERCENTILES)
    if not hi > lo:
        return np.zeros(a.shape, dtype=np.float32)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def normalize_xray_torch(images: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """:func:`normalize_xray` of each ``(rows, cols)`` image of ``(..., rows, cols)``, differentiable.

    ``clip=False`` leaves values beyond the percentiles outside ``[0, 1]``, so every pixel keeps a gradient.
    """
    flat = images.reshape(-1, images.shape[-2] * images.shape[-1]).float()
    q = torch.tensor([p / 100.0 for p in XRAY_PERCENTILES], dtype=flat.dtype, device=flat.device)
    lo, hi = torch.quantile(flat, q, dim=1, keepdim=True)
    out = (flat - lo) / (hi - lo).clamp_min(1e-6)
    return (out.clamp(0.0, 1.0) if clip else out).reshape(images.shape)


# ----------------------------------------------------------------------------------------- settings
@dataclass
class XraySetup:
    """The output grid and the nominal radiographs.

    Attributes:
        size: output voxels per axis (a cube).
        fov_mm: side of the output cube, mm (voxel size ``fov_mm / size``).
        detector_px: radiograph pixels per side given to the network.
        detector_mm: detector side in mm; ``None``: ``fov_mm * sid / sod``, so that the field at the
            isocentre covers the output cube.
        sid: source-to-detector distance, mm.
        sod: source-to-isocentre distance, mm.
        views: the two views, frontal first (``pa``/``ap``, then ``ll``/``rl``).
    """

    size: int = 128
    fov_mm: float = 320.0
    detector_px: int = 128
    detector_mm: float | None = None
    sid: float = 1800.0
    sod: float = 1500.0
    views: tuple[str, str] = ("pa", "ll")

    def __post_init__(self) -> None:
        if self.size < 4 or self.detector_px < 4:
            raise ValueError(f"size and detector_px must be >= 4, got {self.size} and {self.detector_px}")
        if not self.fov_mm > 0 or not 0 < self.sod < self.sid:
            raise ValueError(f"need fov_mm > 0 and 0 < sod < sid, got {self.fov_mm}, {self.sod}, {self.sid}")
        if self.sod <= self.fov_mm * math.sqrt(3) / 2:
            raise ValueError(f"sod {self.sod} mm puts the source inside the {self.fov_mm} mm output cube")
        if self.detector_mm is not None and not self.detector_mm > 0:
            raise ValueError(f"detector_mm must be > 0, got {self.detector_mm}")
        self.views = tuple(view_name(v) for v in self.views)

    @property
    def spacing(self) -> float:
        """Output voxel size, mm."""
        return self.fov_mm / self.size

    @property
    def detector_side_mm(self) -> float:
        """Detector side, mm (``detector_mm`` or its default)."""
        return self.detector_mm if self.detector_mm is not None else self.fov_mm * self.sid / self.sod

    def grid(self, centre: Sequence[float] = (0.0, 0.0, 0.0)) -> VolumeGrid:
        """The output grid (axis-aligned LPS cube) centred on ``centre``."""
        return VolumeGrid.centred((self.size,) * 3, self.spacing, centre)

    def geometries(self, centre: Sequence[float] = (0.0, 0.0, 0.0), sid: float | None = None,
                   sod: float | None = None) -> list[ProjectionGeometry]:
        """The nominal views with the isocentre at ``centre`` (optionally other distances)."""
        pixel = self.detector_side_mm / self.detector_px
        return [ProjectionGeometry.standard(v, sid or self.sid, sod or self.sod, (self.detector_px,) * 2, pixel,
                                            tuple(float(c) for c in centre)) for v in self.views]


@dataclass
class PoseJitter:
    """Random pose of each radiograph (independent per view), uniform in ``±`` the given amounts.

    Attributes:
        rotation_deg: rotation about each LPS axis through the isocentre, degrees.
        translation_mm: translation along each axis, mm.
        sid_mm: change of the source-to-detector distance, mm.
        sod_mm: change of the source-to-isocentre distance, mm.
    """

    rotation_deg: float = 5.0
    translation_mm: float = 10.0
    sid_mm: float = 100.0
    sod_mm: float = 50.0

    def __post_init__(self) -> None:
        if min(self.rotation_deg, self.translation_mm, self.sid_mm, self.sod_mm) < 0:
            raise ValueError("jitter amounts must be >= 0")


@dataclass
class ContrastAug:
    """X-ray-like changes of a DRR, each drawn uniformly in its range.

    Attributes:
        gamma: ``[lo, hi]`` exponent on the normalised image (drawn log-uniformly).
        scatter: ``[lo, hi]`` scatter-like offset, as a fraction of the mean detected intensity added
            before the log (flattens dense regions, like scatter and veiling glare).
        blur_px: ``[lo, hi]`` Gaussian blur sigma, detector pixels (focal spot, detector blur).
        noise: ``[lo, hi]`` SD of Gaussian noise on the normalised image.
    """

    gamma: tuple[float, float] = (0.7, 1.4)
    scatter: tuple[float, float] = (0.0, 0.1)
    blur_px: tuple[float, float] = (0.0, 1.0)
    noise: tuple[float, float] = (0.0, 0.02)

    def __post_init__(self) -> None:
        for name in ("gamma", "scatter", "blur_px", "noise"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi or (name == "gamma" and lo <= 0):
                raise ValueError(f"{name} must be [lo, hi] with 0 <= lo <= hi (gamma > 0), got {[lo, hi]}")


# ----------------------------------------------------------------------------------------- geometry
def pack_geometry(g: ProjectionGeometry) -> np.ndarray:
    """A geometry as 16 float64 numbers (to travel in a batch): source, origin, row, col, shape, pixel."""
    return np.concatenate([g.source, g.origin, g.row_dir, g.col_dir, g.shape, g.pixel_mm]).astype(np.float64)


def unpack_geometry(values: np.ndarray | torch.Tensor, view: str = "other") -> ProjectionGeometry:
    """Inverse of :func:`pack_geometry`."""
    v = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    return ProjectionGeometry(tuple(v[0:3]), tuple(v[3:6]), tuple(v[6:9]), tuple(v[9:12]),
                              (int(round(v[12])), int(round(v[13]))), (float(v[14]), float(v[15])), view)


def rotation_matrix(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation about x, then y, then z (LPS axes), angles in degrees."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def jittered_geometries(setup: XraySetup, centre: Sequence[float], rng: np.random.Generator,
                        jitter: PoseJitter | None) -> list[ProjectionGeometry]:
    """The setup's views at ``centre``, each moved by its own random pose (nominal without ``jitter``)."""
    if jitter is None:
        return setup.geometries(centre)
    out = []
    for view in setup.views:
        sid = setup.sid + rng.uniform(-jitter.sid_mm, jitter.sid_mm)
        sod = min(setup.sod + rng.uniform(-jitter.sod_mm, jitter.sod_mm), sid - 1.0)
        nominal = XraySetup(setup.size, setup.fov_mm, setup.detector_px, setup.detector_side_mm, sid, sod, (view, view))
        rot = rotation_matrix(rng.uniform(-jitter.rotation_deg, jitter.rotation_deg, 3))
        shift = rng.uniform(-jitter.translation_mm, jitter.translation_mm, 3)
        out.append(nominal.geometries(centre)[0].moved(rot, tuple(shift), tuple(centre)))
    return out


# ----------------------------------------------------------------------------------------- CT side
def body_centre(ct: Volume) -> np.ndarray:
    """LPS centre of the bounding box of the body (voxels above -500 HU); the box centre if none."""
    step = (2, 4, 4)
    sub = np.asarray(ct.array[::step[0], ::step[1], ::step[2]]) > BODY_HU
    if sub.any():
        idx = [np.flatnonzero(sub.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
        lo_zyx = np.array([i[0] * s for i, s in zip(idx, step)], dtype=np.float64)
        hi_zyx = np.array([i[-1] * s for i, s in zip(idx, step)], dtype=np.float64)
    else:
        lo_zyx, hi_zyx = np.zeros(3), np.asarray(ct.shape, dtype=np.float64) - 1
    mid_xyz = ((lo_zyx + hi_zyx) / 2)[::-1]
    return np.asarray(ct.origin) + ct.direction_matrix @ (mid_xyz * np.asarray(ct.spacing))


def resample_ct(ct: Volume, grid: VolumeGrid, scale: float = 1.0) -> np.ndarray:
    """HU of ``ct`` on ``grid`` (trilinear, area-averaged first when the grid is coarser; air outside).

    Args:
        ct: the CT (its array may be memory-mapped: only the covered block is read).
        grid: the output grid.
        scale: anatomy magnification about the grid centre (> 1: the patient looks bigger).

    Returns:
        float32 ``grid.shape`` HU.
    """
    ct_grid = VolumeGrid.of(ct)
    centre = np.asarray(grid.origin) + np.asarray(grid.direction).reshape(3, 3) @ (
        (np.asarray(grid.shape[::-1]) - 1) * np.asarray(grid.spacing) / 2)
    points = centre + (grid.voxel_centres() - centre) / scale
    idx = ct_grid.world_to_index(points)  # (z, y, x, 3) as (i, j, k)
    size_xyz = np.asarray(ct.shape[::-1])
    factor = np.asarray(grid.spacing) / (np.asarray(ct.spacing) * scale)
    pool = np.maximum(np.floor(factor), 1).astype(int)
    lo = np.clip(np.floor(idx.reshape(-1, 3).min(axis=0)).astype(int) - pool, 0, size_xyz - 1)
    hi = np.clip(np.ceil(idx.reshape(-1, 3).max(axis=0)).astype(int) + 2 * pool, lo + 1, size_xyz)
    hi = lo + np.maximum((hi - lo) // pool, 1) * pool
    block = np.full(tuple((hi - lo)[::-1]), -1000.0, dtype=np.float32)
    have = np.minimum(hi, size_xyz)
    block[: have[2] - lo[2], : have[1] - lo[1], : have[0] - lo[0]] = ct.array[lo[2]:have[2], lo[1]:have[1],
                                                                               lo[0]:have[0]]
    vol = torch.from_numpy(block + 1000.0)[None, None]
    if pool.max() > 1:
        vol = F.avg_pool3d(vol, tuple(int(p) for p in pool[::-1]))
    local = (idx - lo - (pool - 1) / 2) / pool  # index in the pooled block
    extent = np.maximum(np.asarray(vol.shape[2:][::-1]) - 1, 1)
    coords = torch.from_numpy((local / extent * 2 - 1).astype(np.float32))[None]
    out = F.grid_sample(vol, coords, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, 0].numpy() - 1000.0


# ----------------------------------------------------------------------------------------- X-ray side
def xray_like(line_integrals: np.ndarray, rng: np.random.Generator, contrast: ContrastAug | None) -> np.ndarray:
    """A network input from a DRR: contrast augmentation (optional), then :func:`normalize_xray`."""
    if contrast is None:
        return normalize_xray(line_integrals)
    p = np.asarray(line_integrals, dtype=np.float64)
    scatter = rng.uniform(*contrast.scatter)
    if scatter > 0:
        intensity = np.exp(-p)
        p = -np.log(intensity + scatter * intensity.mean())
    sigma = rng.uniform(*contrast.blur_px)
    if sigma > 0.05:
        p = gaussian_filter(p, sigma, mode="nearest")
    x = normalize_xray(p).astype(np.float64)
    x = x ** math.exp(rng.uniform(math.log(contrast.gamma[0]), math.log(contrast.gamma[1])))
    x = x + rng.normal(0.0, rng.uniform(*contrast.noise), x.shape)
    return normalize_xray(x)


def augmented_ct(ct: Volume, grid: VolumeGrid, rng: np.random.Generator, anatomy: AnatomyAug | AnatomyDraw,
                 scale: float = 1.0) -> tuple[np.ndarray, AnatomyDraw]:
    """HU of a new patient made from ``ct`` (:mod:`~ctsr_models.data.anatomy_augment`) on ``grid``.

    The CT is resampled onto a cube :data:`ANATOMY_MARGIN` times larger than ``grid`` (same centre and
    spacing), so that shrinking and moving the anatomy brings in the patient's tissue, and augmented
    from there onto ``grid`` in one resampling.

    Returns:
        float32 ``grid.shape`` HU and the draw.
    """
    size = grid.shape[0] + 2 * math.ceil(grid.shape[0] * (ANATOMY_MARGIN - 1) / 2)
    centre = np.asarray(grid.origin) + (np.asarray(grid.shape[::-1]) - 1) * np.asarray(grid.spacing) / 2
    work = VolumeGrid.centred((size,) * 3, grid.spacing[0], centre)
    result = augment_anatomy(resample_ct(ct, work, scale), work, anatomy, rng, out_grid=grid)
    return result.hu, result.draw


def simulate_pair(ct: Volume, setup: XraySetup, rng: np.random.Generator, jitter: PoseJitter | None = None,
                  contrast: ContrastAug | None = None, *, centre: Sequence[float] | None = None,
                  scale: float = 1.0, step_mm: float | None = None,
                  anatomy: AnatomyAug | AnatomyDraw | None = None) -> dict[str, Any]:
    """One simulated training pair.

    Args:
        ct: the CT in HU.
        setup: output grid and nominal views.
        rng: random numbers (pose, contrast).
        jitter: random pose of each view (``None``: the nominal views).
        contrast: X-ray-like augmentation of the inputs (``None``: plain :func:`normalize_xray`).
        centre: LPS centre of the output grid; default :func:`body_centre`.
        scale: anatomy magnification about the centre (size augmentation).
        step_mm: projector step along the rays (default half a voxel).
        anatomy: anatomical augmentation (:func:`augmented_ct`); the radiographs are projected from the
            augmented CT, which is also the target.

    Returns:
        ``frontal``, ``lateral``: float32 ``(detector_px, detector_px)`` in ``[0, 1]``;
        ``ct_net``: float32 ``(size,) * 3`` target (:func:`hu_to_ct_net`) on ``setup.grid(centre)``;
        ``geometries``: the two geometries used (LPS, isocentre near ``centre``); ``centre``: ``(3,)``;
        ``line_integrals``: float32 ``(2, detector_px, detector_px)``, the clean DRRs;
        ``anatomy``: the :class:`AnatomyDraw` (``None`` without ``anatomy``).
    """
    centre = body_centre(ct) if centre is None else np.asarray(centre, dtype=np.float64)
    grid = setup.grid(centre)
    draw = None
    if anatomy is None:
        ct_net = hu_to_ct_net(resample_ct(ct, grid, scale))
    else:
        hu_aug, draw = augmented_ct(ct, grid, rng, anatomy, scale)
        ct_net = hu_to_ct_net(hu_aug)
    hu = ct_net_to_hu(ct_net)
    geometries = jittered_geometries(setup, centre, rng, jitter)
    lines = np.stack([drr(hu, grid, g, step_mm) for g in geometries])
    frontal, lateral = (xray_like(p, rng, contrast) for p in lines)
    return {"frontal": frontal, "lateral": lateral, "ct_net": ct_net, "geometries": geometries,
            "centre": centre, "line_integrals": lines, "anatomy": draw}


# ----------------------------------------------------------------------------------------- datasets
@dataclass
class CachedCT:
    """A CT of the volume cache as a pair source (picklable: workers reopen the memory map)."""

    cached: CachedVolume

    @property
    def name(self) -> str:
        """Short source name."""
        return self.cached.name

    given_xrays = False

    def volume(self) -> Volume:
        """The CT (voxels memory-mapped)."""
        g = self.cached.geometry
        return Volume(self.cached.array, self.cached.spacing, g["origin_lps_mm"], g["direction"])


@dataclass
class PairSettings:
    """How dataset items are made from CTs (see :class:`XrayPairDataset`).

    Attributes:
        setup: output grid and nominal views.
        lifting_size: voxels per axis of the lifting coordinates (the network's ``lifting_size``).
        proj_px: detector pixels per side of the projection-consistency reference.
        step_mm: projector step along the rays (``None``: half a voxel).
        jitter, contrast: training augmentations (``None``: off).
        centre_jitter_mm: random shift of the output cube from the body centre (training), ± mm per axis.
        scale_range: anatomy magnification ``[lo, hi]`` (training).
        anatomy: anatomical augmentation (training; ``None``: off), applied before projecting.
    """

    setup: XraySetup
    lifting_size: int
    proj_px: int = 64
    step_mm: float | None = None
    jitter: PoseJitter | None = None
    contrast: ContrastAug | None = None
    centre_jitter_mm: float = 0.0
    scale_range: tuple[float, float] = (1.0, 1.0)
    anatomy: AnatomyAug | None = None


def _given_inputs(source: Any, setup: XraySetup, rng: np.random.Generator,
                  contrast: ContrastAug | None) -> dict[str, Any]:
    """Inputs from X-rays stored with the CT (LIDC files): their own geometry, the CT centre as isocentre."""
    vol = source.volume()
    centre = np.zeros(3)
    px = setup.detector_px
    frontal_raw, lateral_raw = source.radiographs(px)
    plain = None if contrast is None else ContrastAug(contrast.gamma, (0.0, 0.0), contrast.blur_px, contrast.noise)
    return {"frontal": xray_like(frontal_raw, rng, plain), "lateral": xray_like(lateral_raw, rng, plain),
            "ct_net": hu_to_ct_net(resample_ct(vol, setup.grid(centre))), "centre": centre,
            "geometries": [g.resized((px, px)) for g in source.geometries(centre)],
            "xray_ref": np.stack([normalize_xray(frontal_raw), normalize_xray(lateral_raw)])}


def make_item(source: Any, settings: PairSettings, rng: np.random.Generator, train: bool) -> dict[str, np.ndarray]:
    """One network-ready sample (numpy) from a CT source; see :class:`XrayPairDataset` for the keys."""
    setup = settings.setup
    if source.given_xrays:
        pair = _given_inputs(source, setup, rng, settings.contrast if train else None)
    else:
        vol = source.volume()
        centre = body_centre(vol)
        scale = 1.0
        if train:
            centre = centre + rng.uniform(-settings.centre_jitter_mm, settings.centre_jitter_mm, 3)
            scale = rng.uniform(*settings.scale_range)
        pair = simulate_pair(vol, setup, rng, settings.jitter if train else None,
                             settings.contrast if train else None, centre=centre, scale=scale,
                             step_mm=settings.step_mm, anatomy=settings.anatomy if train else None)
        pair["xray_ref"] = np.stack([normalize_xray(p) for p in pair["line_integrals"]])
    local = [g.moved(translation=tuple(-np.asarray(pair["centre"]))) for g in pair["geometries"]]
    grid = setup.grid()
    hu = ct_net_to_hu(pair["ct_net"])
    proj = [normalize_xray(drr(hu, grid, g.resized((settings.proj_px,) * 2), settings.step_mm)) for g in local]
    return {
        "frontal": pair["frontal"][None], "lateral": pair["lateral"][None],
        "coords": lifting_coords(grid, local, settings.lifting_size).numpy(),
        "target": pair["ct_net"][None], "geom": np.stack([pack_geometry(g) for g in local]),
        "proj_ref": np.stack(proj), "xray_ref": pair["xray_ref"].astype(np.float32),
    }


class XrayPairDataset(Dataset):
    """X-ray → CT samples made on the fly from CT sources.

    Training (``train=True``): item ``i`` draws a source by weight, a centre shift, an anatomy scale,
    the poses and the contrast from ``numpy.random.default_rng([seed, rank, i])``; the length is
    unbounded. Validation: item ``i`` is source ``i mod n`` at its body centre, nominal poses, no
    augmentation (LIDC sources: their stored X-rays); ``n_samples`` items.

    Items (tensors): ``frontal``/``lateral`` ``(1, px, px)``; ``coords`` ``(2, d', d', d', 2)``;
    ``target`` ``(1, S, S, S)`` CT scale; ``geom`` ``(2, 16)`` float64 packed geometries in the frame of
    ``setup.grid()`` (centred on the origin); ``proj_ref`` ``(2, r, r)`` normalised DRRs of the target at
    ``proj_px``; ``xray_ref`` ``(2, px, px)`` the input X-rays without augmentation; ``index``.
    """

    def __init__(self, sources: Sequence[Any], settings: PairSettings, seed: int, rank: int = 0,
                 weights: Sequence[float] | None = None, train: bool = True, n_samples: int | None = None) -> None:
        if not sources:
            raise ValueError("an X-ray to CT dataset needs at least one CT")
        self.sources, self.settings = list(sources), settings
        self.seed, self.rank, self.train = int(seed), int(rank), bool(train)
        w = np.ones(len(self.sources)) if weights is None else np.asarray(weights, dtype=np.float64)
        self.probs = w / w.sum()
        self.n_samples = int(n_samples) if n_samples is not None else len(self.sources)

    def __len__(self) -> int:
        return 2**62 if self.train else self.n_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.train:
            rng = np.random.default_rng([self.seed, self.rank, int(index)])
            source = self.sources[int(rng.choice(len(self.sources), p=self.probs))]
        else:
            if not 0 <= index < self.n_samples:
                raise IndexError(f"validation sample {index} out of range 0..{self.n_samples - 1}")
            rng = np.random.default_rng([self.seed, int(index)])
            source = self.sources[index % len(self.sources)]
        item = make_item(source, self.settings, rng, self.train)
        out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in item.items()}
        out["index"] = torch.tensor(int(index))
        return out
