"""Whole-volume through-plane super-resolution: thick CT in, thin CT out, same patient space.

Pipeline (:func:`enhance`):
    1. The slab thickness comes from the caller, else the header (``slice_thickness``), else it is
       taken equal to the slice spacing (logged).
    2. The output grid follows :mod:`~ctsr_models.inference.grid`.
    3. The model's predictor (:mod:`~ctsr_models.inference.predictor`, one per model kind) fills the
       grid: an interpolation baseline resamples with SimpleITK; a regression network refines the
       linearly resampled slabs window by window.
    4. Data consistency (:mod:`~ctsr_models.inference.consistency`): a network's result is projected
       onto the volumes that reproduce the acquired slabs exactly (``consistency=False`` turns it off);
       the residual before and after is reported (measured only, for the interpolation baselines).
    5. The result is float32 HU on the output grid; writers store int16 HU.

``enhance`` runs the network it is given (``net``), else the model's shipped weights. Per-scan
adaptation is training: :func:`ctsr_models.training.adapt.enhance_adapted` fine-tunes a copy of the
network on the scan first and hands the result to :func:`enhance_detailed`.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ctsr_models.io.errors import InputError
from ctsr_models.io.volume import Volume

from .consistency import SlabProfile, enforce_consistency, slab_profile
from .device import Progress, pick_device, silent
from .grid import ZGrid, through_plane_grid
from .models import ModelKind, ModelSpec, resolve_model
from .predictor import predictor_for

log = logging.getLogger(__name__)

MAX_OUTPUT_VOXELS = 2_000_000_000  # about 8 GB of float32: refuse larger requests up front


@dataclass(frozen=True)
class EnhanceOptions:
    """How to enhance.

    Attributes:
        target_spacing: output slice spacing ``s`` in mm.
        model: ``default``, a shipped model name, or ``linear``/``cubic``/``lanczos``.
        input_thickness: slab thickness in mm (default: the header's, else the slice spacing).
        input_profile: slab profile shape of that thickness (``rect`` or ``gaussian``).
        estimate_profile: estimate the slab profile from the scan when no thickness is given
            (:func:`~ctsr_models.inference.consistency.slab_profile`).
        consistency: project a network's result onto the volumes that reproduce the acquired slabs.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        overlap: sliding-window overlap fraction.
        sw_batch_size: windows per network call.
        steps: diffusion sampling steps (``None``: the model's default); refused for other kinds.
        samples: diffusion samples K, averaged (``None``: the model's default); refused for other kinds.
        seed: random seed of the diffusion samples (``None``: 0); refused for other kinds.
    """

    target_spacing: float = 1.0
    model: str = "default"
    input_thickness: float | None = None
    input_profile: str = "rect"
    estimate_profile: bool = False
    consistency: bool = True
    device: str = "auto"
    overlap: float = 0.25
    sw_batch_size: int = 1
    steps: int | None = None
    samples: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class EnhancePlan:
    """What an enhancement will do, checked before any work (and before any adaptation).

    Attributes:
        grid: the output grid.
        thickness: the input's slab thickness (profile FWHM) in mm.
        spec: the model.
        profile: the slab profile (thickness, shape and where they came from).
    """

    grid: ZGrid
    thickness: float
    spec: ModelSpec
    profile: SlabProfile


def slab_thickness(volume: Volume, given: float | None) -> float:
    """The input's slab thickness in mm: given, else the header's, else the slice spacing (logged)."""
    return slab_profile(volume, given).fwhm_mm


def plan_enhancement(volume: Volume, options: EnhanceOptions) -> EnhancePlan:
    """Check a request and fix its output grid, slab thickness and model.

    Raises:
        InputError: target not finer than the input, output too large, bad thickness, unknown model.
    """
    grid = through_plane_grid(volume, options.target_spacing)
    n_voxels = grid.n_slices * volume.shape[1] * volume.shape[2]
    if n_voxels > MAX_OUTPUT_VOXELS:
        raise InputError(f"the output would have {n_voxels:,} voxels ({grid.n_slices} slices), more than the "
                         f"{MAX_OUTPUT_VOXELS:,} allowed; choose a larger target spacing")
    profile = slab_profile(volume, options.input_thickness, options.input_profile, options.estimate_profile)
    spec = resolve_model(options.model)
    given = [k for k in ("steps", "samples", "seed") if getattr(options, k) is not None]
    if given and spec.kind is not ModelKind.DIFFUSION:
        raise InputError(f"{given[0]} applies to diffusion models only; model {spec.name!r} is of kind "
                         f"{spec.kind.value}")
    return EnhancePlan(grid, profile.fwhm_mm, spec, profile)


def enhance(volume: Volume, options: EnhanceOptions = EnhanceOptions(), progress: Progress | None = None,
            net: nn.Module | None = None) -> Volume:
    """Enhance a thick-slice CT to thin slices.

    Args:
        volume: thick-slice CT (HU), any regular geometry.
        options: target spacing, model, thickness, device.
        progress: optional callback, see :data:`~ctsr_models.inference.device.Progress`.
        net: the network to run (e.g. adapted to this scan); ``None``: the model's shipped weights.

    Returns:
        The enhanced volume (float32 HU) on the output grid, with the source's DICOM identity.

    Raises:
        InputError: target not finer than the input, output too large, unknown model, bad weights,
            a network given for an interpolation model.
    """
    return enhance_detailed(volume, options, progress, net=net)[0]


def enhance_detailed(volume: Volume, options: EnhanceOptions = EnhanceOptions(), progress: Progress | None = None,
                     *, net: nn.Module | None = None, plan: EnhancePlan | None = None, label: str | None = None,
                     notes: Sequence[str] = ()) -> tuple[Volume, dict[str, Any]]:
    """:func:`enhance`, also returning what was done: ``{"model": name}``.

    A diffusion model adds ``"diffusion"`` (JSON-able: steps, samples, seed, calibration, the worst data
    consistency RMSE, and the sentence saying the image contains AI-generated detail, also put in the
    findings) and ``"uncertainty"``: the calibrated per-voxel standard deviation as a :class:`Volume`
    (float32 HU) on the output grid (not JSON-able; callers take it out).

    Args:
        volume, options, progress, net: as for :func:`enhance`.
        plan: the checked plan of ``options`` (``None``: made here, :func:`plan_enhancement`).
        label: the model's name in the findings and the result (default: the model's name).
        notes: findings to add after the enhancement's own (e.g. what adaptation did).
    """
    report = progress or silent
    plan = plan or plan_enhancement(volume, options)
    grid, thickness = plan.grid, plan.thickness
    predictor = predictor_for(plan.spec, pick_device(options.device) if plan.spec.has_network else None, net,
                              options.overlap, options.sw_batch_size, steps=options.steps, samples=options.samples,
                              seed=options.seed or 0, profile=plan.profile.shape)
    report(0.0, "preparing")
    prediction = predictor.predict_detailed(volume, grid, thickness, report)
    array, consistency = enforce_consistency(prediction.array, volume, grid, plan.profile,
                                             options.consistency and plan.spec.has_network)
    name = label or plan.spec.name
    report(1.0, "done")
    generated = [prediction.details["label"]] if "label" in prediction.details else []
    out = Volume(array, slice_thickness=grid.spacing, meta=dict(volume.meta),
                 findings=[*volume.findings, f"enhanced: model {name}, slabs {thickness:g} mm every "
                           f"{volume.spacing[2]:g} mm -> {grid.spacing:g} mm slices", *generated,
                           consistency.finding(), *notes],
                 **grid.output_geometry(volume))
    details: dict[str, Any] = {"model": name, "data_consistency": consistency.to_dict()}
    if prediction.std is not None:
        details["diffusion"] = prediction.details
        details["uncertainty"] = Volume(prediction.std, slice_thickness=grid.spacing, meta=dict(volume.meta),
                                        findings=[f"uncertainty of {name}: calibrated per-voxel std (HU) of the "
                                                  f"result; {prediction.details.get('label', '')}"],
                                        **grid.output_geometry(volume))
    return out, details
