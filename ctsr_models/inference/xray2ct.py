"""Biplanar X-ray → CT: a frontal and a lateral radiograph in, a CT-like volume out, checked against
the radiographs it came from.

Pipeline (:func:`reconstruct`):
    1. The output grid (:class:`~ctsr_models.data.xray_pairs.XraySetup` of the model: a cube of
       ``size``³ voxels over ``fov_mm``, axis-aligned in LPS) is centred where the two central rays
       pass closest to each other (the isocentre for standard views).
    2. Each radiograph is resampled onto a network detector of ``detector_px``² pixels in its own
       detector plane, centred on its own detector, whose field at the output centre equals the
       model's (so the network sees anatomy at the scale it was trained on), then normalised with
       :func:`~ctsr_models.data.xray_pairs.normalize_xray`.
    3. The network lifts 2D features into 3D through the radiographs' own geometries
       (:func:`~ctsr_models.physics.lifting.lifting_coords`) and decodes a volume (HU).
    4. Consistency: the result is projected through the same geometries
       (:func:`~ctsr_models.physics.project`) and compared with the inputs (PSNR, both normalised,
       data range 1). Optional refinement adjusts the volume for a bounded number of gradient steps so
       its projections match the inputs (a smooth correction, kept close to the network's answer), and
       the report gives the consistency before and after.

The result is a model's estimate from two projections, not a CT scan: its findings say so.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import map_coordinates

from ctsr_models.data.xray_pairs import XraySetup, ct_net_to_hu, normalize_xray, normalize_xray_torch
from ctsr_models.io.errors import InputError
from ctsr_models.io.radiograph import Radiograph
from ctsr_models.io.volume import Volume
from ctsr_models.metrics import psnr_from_mse
from ctsr_models.physics import MU_AIR_PER_MM, MU_WATER_PER_MM, ProjectionGeometry, VolumeGrid, hu_to_mu, project
from ctsr_models.physics.lifting import lifting_coords

from .device import Progress, pick_device
from .models import ModelSpec, WeightsError, load_network, resolve_model
from .xray_pair_check import check_pair

log = logging.getLogger(__name__)

TASK = "xray2ct"
NOT_A_CT = "reconstructed from two radiographs by a network: an estimate, not a CT scan; not for diagnosis"


@dataclass(frozen=True)
class XrayOptions:
    """How to reconstruct.

    Attributes:
        model: ``default`` or a shipped ``xray2ct`` model name.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        refine_steps: consistency-refinement steps (0: off).
        refine_lr_hu: step size of the refinement (Adam), HU.
        refine_detector_px: detector pixels per side of the projections used while refining.
        refine_coarse: voxels per side of the (smooth) correction the refinement optimises.
        refine_grid: voxels per side of the volume the refinement projects: a larger output grid is
            box-averaged to it (by an integer factor) while the correction is optimised, then the correction is
            applied at full size, so refining a 128³ output costs what refining a 64³ one does.
        check_pair: refuse impossible pairs first (:func:`~ctsr_models.inference.xray_pair_check.check_pair`);
            ``False`` only for research use.
        output_size: output voxels per axis over the model's ``fov_mm`` (``None``: the model's ``size``);
            only models with a point decoder (``xray2ct_implicit``) take another size.
    """

    model: str = "default"
    device: str = "auto"
    refine_steps: int = 200
    refine_lr_hu: float = 20.0
    refine_detector_px: int = 64
    refine_coarse: int = 32
    refine_grid: int = 64
    check_pair: bool = True
    output_size: int | None = None


@dataclass
class XrayResult:
    """A reconstruction and its report.

    Attributes:
        volume: float32 HU on the output grid (LPS), with the frontal radiograph's DICOM identity.
        consistency: projection PSNR (dB) per view and mean, ``before`` and (when refined) ``after``.
        inputs: the normalised network inputs ``(2, px, px)`` (for display and benchmarks).
        geometries: the network-detector geometries of the two views.
        timings_s: seconds per stage.
    """

    volume: Volume
    consistency: dict[str, Any]
    inputs: np.ndarray
    geometries: list[ProjectionGeometry]
    timings_s: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- geometry
def central_ray(g: ProjectionGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Source and unit direction of the ray to the detector centre."""
    s = np.asarray(g.source)
    d = g.centre - s
    return s, d / np.linalg.norm(d)


def ray_meeting_point(a: ProjectionGeometry, b: ProjectionGeometry) -> np.ndarray:
    """Midpoint of the shortest segment between the two central rays (their isocentre).

    Raises:
        InputError: parallel central rays (two views from the same direction).
    """
    (p, u), (q, v) = central_ray(a), central_ray(b)
    w = p - q
    uv = float(u @ v)
    denom = 1.0 - uv * uv
    if denom < 0.05:  # less than ~13 degrees apart
        raise InputError("the frontal and lateral X-rays look along the same direction; give two views about "
                         "90 degrees apart (check the views or the --geometry file)")
    t = (uv * float(v @ w) - float(u @ w)) / denom
    s = (float(v @ w) - uv * float(u @ w)) / denom
    return (p + t * u + q + s * v) / 2


def network_geometry(g: ProjectionGeometry, setup: XraySetup, centre: np.ndarray) -> ProjectionGeometry:
    """The radiograph's detector plane, re-gridded: ``detector_px``² pixels centred on its detector,
    covering at ``centre`` the field the model was trained with."""
    nominal = setup.geometries(centre)[0]
    field_mm = setup.detector_side_mm / nominal.magnification_at(tuple(centre))
    side = field_mm * g.magnification_at(tuple(centre))
    px = setup.detector_px
    pixel = side / px
    origin = (g.centre - np.asarray(g.row_dir) * pixel * (px - 1) / 2 - np.asarray(g.col_dir) * pixel * (px - 1) / 2)
    return replace(g, origin=tuple(origin), shape=(px, px), pixel_mm=(pixel, pixel))


def resample_radiograph(image: np.ndarray, source: ProjectionGeometry, target: ProjectionGeometry) -> np.ndarray:
    """``image`` (on ``source``'s detector) sampled at ``target``'s pixel centres (same plane), with
    area averaging when the target pixels are larger. Outside the image: the nearest edge value."""
    img = np.asarray(image, dtype=np.float64)
    ratio = min(target.pixel_mm[0] / source.pixel_mm[0], target.pixel_mm[1] / source.pixel_mm[1])
    if ratio > 1.5:
        from scipy.ndimage import uniform_filter

        img = uniform_filter(img, size=max(1, int(round(ratio))), mode="nearest")
    rc = source.to_detector(target.pixel_centres())
    out = map_coordinates(img, [rc[..., 0], rc[..., 1]], order=1, mode="nearest")
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------------- consistency
def projection_psnr(volume_hu: torch.Tensor, grid: VolumeGrid, geometries: Sequence[ProjectionGeometry],
                    inputs: torch.Tensor) -> list[float]:
    """PSNR (dB, data range 1) between each normalised input and the normalised projection of the volume.

    Args:
        volume_hu: ``(z, y, x)`` HU on ``grid``.
        inputs: ``(V, rows, cols)`` normalised inputs on ``geometries``' detectors.
    """
    with torch.no_grad():
        mu = hu_to_mu(volume_hu)[None, None].expand(len(geometries), 1, *volume_hu.shape)
        proj = normalize_xray_torch(project(mu, grid, list(geometries)))
        mse = ((proj - inputs) ** 2).flatten(1).mean(dim=1).clamp_min(1e-12)
    return [psnr_from_mse(m) for m in mse.cpu()]


def _summary(values: list[float]) -> dict[str, float]:
    return {"frontal": round(values[0], 2), "lateral": round(values[1], 2), "mean": round(float(np.mean(values)), 2)}


def coarse_volume(volume_hu: torch.Tensor, grid: VolumeGrid, size: int) -> tuple[torch.Tensor, VolumeGrid]:
    """``volume_hu`` box-averaged by the largest integer factor ``f`` with ``shape / f >= size`` that divides every
    side, and its grid (same cube: spacing ``f`` times, first centre the mean of the first ``f`` ones); ``f = 1``
    returns both unchanged."""
    factor = max(1, min(volume_hu.shape) // max(size, 1))
    while factor > 1 and any(n % factor for n in volume_hu.shape):
        factor -= 1
    if factor == 1:
        return volume_hu, grid
    pooled = F.avg_pool3d(volume_hu[None, None], factor)[0, 0]
    d = np.asarray(grid.direction, dtype=np.float64).reshape(3, 3)
    origin = np.asarray(grid.origin) + d @ (np.asarray(grid.spacing) * (factor - 1) / 2)
    return pooled, VolumeGrid(tuple(pooled.shape), tuple(s * factor for s in grid.spacing), tuple(origin), grid.direction)


def refine(volume_hu: torch.Tensor, grid: VolumeGrid, geometries: Sequence[ProjectionGeometry],
           inputs: torch.Tensor, options: XrayOptions) -> torch.Tensor:
    """Adjust the volume so its projections match the inputs (see the module docstring).

    The correction is a ``refine_coarse``³ field (smooth after trilinear upsampling), optimised with
    Adam on the squared distance of the normalised projections at ``refine_detector_px``. While it
    runs, attenuation follows HU linearly even below air (no clipping, so every voxel keeps a
    gradient); the result is clipped to [-1000, 3071] HU. The projections are taken of the volume
    box-averaged to about ``refine_grid`` voxels per side (:func:`coarse_volume`); the correction covers the
    same cube either way, so it is applied to the full-size volume unchanged.
    """
    px = options.refine_detector_px
    small = [g.resized((px, px)) for g in geometries]
    target = F.interpolate(inputs[:, None], size=(px, px), mode="area")[:, 0]
    n = options.refine_coarse
    delta = torch.zeros((1, 1, n, n, n), device=volume_hu.device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=options.refine_lr_hu)
    work, work_grid = coarse_volume(volume_hu, grid, options.refine_grid)
    step = max(work_grid.spacing)
    slope = (MU_WATER_PER_MM - MU_AIR_PER_MM) / 1000.0
    for _ in range(options.refine_steps):
        opt.zero_grad()
        up = F.interpolate(delta, size=tuple(work.shape), mode="trilinear", align_corners=False)[0, 0]
        mu = MU_WATER_PER_MM + (work + up) * slope
        proj = normalize_xray_torch(project(mu[None, None].expand(len(small), 1, *mu.shape), work_grid, small,
                                            step_mm=step), clip=False)
        loss = ((proj - target) ** 2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        up = F.interpolate(delta, size=tuple(volume_hu.shape), mode="trilinear", align_corners=False)[0, 0]
        return (volume_hu + up).clamp(-1000.0, 3071.0)


# ----------------------------------------------------------------------------------------- pipeline
def model_setup(spec: ModelSpec) -> XraySetup:
    """The X-ray set-up a shipped model was trained with (its manifest's ``xray_setup``).

    Raises:
        WeightsError: the model has none.
    """
    if spec.xray_setup is None:
        raise WeightsError(f"model {spec.name!r} has no xray_setup in its manifest entry")
    return spec.xray_setup


def _check_views(frontal: Radiograph, lateral: Radiograph) -> None:
    for rad, name in ((frontal, "frontal"), (lateral, "lateral")):
        if rad.image.ndim != 2 or min(rad.image.shape) < 16:
            raise InputError(f"the {name} X-ray must be a 2D image of at least 16x16 pixels, got {rad.image.shape}")
        if not np.isfinite(rad.image).all() or float(np.ptp(rad.image)) == 0.0:
            raise InputError(f"the {name} X-ray is blank or holds non-numbers")


def network_inputs(frontal: Radiograph, lateral: Radiograph, setup: XraySetup) -> tuple[np.ndarray, list[ProjectionGeometry], np.ndarray]:
    """The output centre, the two network-detector geometries and the normalised inputs ``(2, px, px)``."""
    _check_views(frontal, lateral)
    centre = ray_meeting_point(frontal.geometry, lateral.geometry)
    geoms = [network_geometry(r.geometry, setup, centre) for r in (frontal, lateral)]
    images = np.stack([normalize_xray(resample_radiograph(r.image, r.geometry, g))
                       for r, g in zip((frontal, lateral), geoms)])
    return centre, geoms, images


def reconstruct(frontal: Radiograph, lateral: Radiograph, options: XrayOptions = XrayOptions(),
                progress: Progress | None = None) -> XrayResult:
    """Reconstruct a CT-like volume from a frontal and a lateral radiograph.

    Args:
        frontal, lateral: the radiographs with their projection geometries (same LPS frame).
        options: model, device, refinement.
        progress: optional callback ``(fraction, stage)``.

    Raises:
        InputError: unknown model, bad weights, unusable images or geometry.
    """
    report = progress or (lambda fraction, stage: None)
    if options.refine_steps < 0 or options.refine_steps > 1000:
        raise InputError(f"refine steps must be between 0 and 1000, got {options.refine_steps}")
    t0 = time.perf_counter()
    if options.check_pair:
        check_pair(frontal, lateral)
    report(0.0, "preparing")
    spec = resolve_model(options.model, task=TASK)
    device = pick_device(options.device)
    return reconstruct_with(load_network(spec, device), model_setup(spec), spec.name, frontal, lateral, options,
                            progress, t0)


def output_setup(net: torch.nn.Module, setup: XraySetup, output_size: int | None) -> XraySetup:
    """The set-up of the output grid: the model's, or ``output_size``³ over the same cube (point decoders).

    Raises:
        InputError: another size asked of a model whose output size is fixed, or a size out of [16, 512].
    """
    if output_size is None or output_size == setup.size:
        return setup
    if not getattr(net, "point_decoder", False):
        raise InputError(f"this model always outputs {setup.size}^3 voxels; another output size needs a model "
                         f"with a point decoder (xray2ct_implicit)")
    if not 16 <= output_size <= 512:
        raise InputError(f"output size must be between 16 and 512 voxels per axis, got {output_size}")
    return replace(setup, size=int(output_size))


def reconstruct_with(net: torch.nn.Module, setup: XraySetup, name: str, frontal: Radiograph, lateral: Radiograph,
                     options: XrayOptions = XrayOptions(), progress: Progress | None = None,
                     t0: float | None = None) -> XrayResult:
    """:func:`reconstruct` with a network already loaded (``net`` on its device, in eval mode) and the
    set-up it was trained with; no pair check (``reconstruct`` runs it). ``name`` goes into the findings."""
    report = progress or (lambda fraction, stage: None)
    t0 = time.perf_counter() if t0 is None else t0
    device = next(net.parameters()).device
    setup = output_setup(net, setup, options.output_size)
    centre, geoms, images = network_inputs(frontal, lateral, setup)
    grid = setup.grid(centre)
    t1 = time.perf_counter()
    report(0.1, "reconstructing")
    x = torch.from_numpy(images).to(device)
    lifting = setup.size if getattr(net, "point_decoder", False) else net.lifting_size
    coords = lifting_coords(grid, geoms, lifting)[None].to(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = net(x[0:1, None], x[1:2, None], coords)
    hu = ct_net_to_hu(out.float()[0, 0])
    t2 = time.perf_counter()
    before = projection_psnr(hu, grid, geoms, x)
    consistency: dict[str, Any] = {"before": _summary(before), "refine_steps": options.refine_steps}
    if options.refine_steps:
        report(0.5, "refining")
        with torch.enable_grad():
            refined = refine(hu, grid, geoms, x, options)
        after = projection_psnr(refined, grid, geoms, x)
        consistency["after"] = _summary(after)
        if np.mean(after) >= np.mean(before):
            hu = refined
        else:
            consistency["kept"] = "before: refinement lowered the consistency"
    t3 = time.perf_counter()
    report(1.0, "done")
    final = consistency.get("after", consistency["before"]) if "kept" not in consistency else consistency["before"]
    findings = [*frontal.findings, *lateral.findings, NOT_A_CT,
                f"model {name}; projection consistency {final['mean']:.1f} dB "
                f"(frontal {final['frontal']:.1f}, lateral {final['lateral']:.1f})"]
    volume = Volume(hu.cpu().numpy().astype(np.float32), spacing=grid.spacing, origin=grid.origin,
                    direction=grid.direction, slice_thickness=grid.spacing[2], meta=dict(frontal.meta),
                    findings=findings)
    log.info("xray2ct: %s in %.2f s (prepare %.2f, network %.2f, consistency %.2f); consistency %s",
             name, t3 - t0, t1 - t0, t2 - t1, t3 - t2, consistency)
    return XrayResult(volume, consistency, images, geoms,
                      {"prepare": round(t1 - t0, 3), "network": round(t2 - t1, 3), "consistency": round(t3 - t2, 3),
                       "total": round(t3 - t0, 3)})
