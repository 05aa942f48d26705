"""``ct_super_resolution``: thick-slice CT in, thin-slice CT out, exactly as ``ctsr-enhance`` does it.

The same reader (:func:`ctsr_models.io.read_volume` with the same options), the same pipeline
(:func:`ctsr_models.inference.enhance` with the same :class:`~ctsr_models.inference.EnhanceOptions`)
and the same writer (:func:`ctsr_models.io.write_volume`), so the voxels equal the command line's
for the same input and options. The output grid (spacing, origin, direction) is the one
:mod:`ctsr_models.inference.grid` defines; nothing is resampled back onto the input grid.

With ``adapt: true`` the network is first fine-tuned on the scan's own in-plane detail
(:mod:`ctsr_models.training.adapt`, budget ``adapt_seconds`` / ``adapt_steps``); its progress is
logged while it runs, and the result JSON carries ``adaptation`` (held-out scores, steps, time, and
whether the adapted or the pretrained model was used).

With a diffusion model (``model: "diffusion"`` or its name; ``steps``, ``samples``, ``seed``) the result is
the mean of the samples and the result JSON carries ``diffusion`` (the AI-generated-detail label, steps,
samples, seed, calibration) and ``uncertainty``: the id under which the calibrated standard deviation of the
same inference is kept, fetchable once at ``GET /ctsr/result/{id}/uncertainty`` (:mod:`lib.output`).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctsr_models.inference import DEVICES, EnhanceOptions, available_models, enhance_detailed, read_manifest
from ctsr_models.inference.enhance import MAX_OUTPUT_VOXELS
from ctsr_models.inference.grid import through_plane_grid
from ctsr_models.inference.models import INTERPOLATION_DESCRIPTIONS
from ctsr_models.io import InputError, Volume, read_volume
from ctsr_models.training.adapt import MAX_SECONDS, MAX_STEPS, PROFILES, AdaptOptions, enhance_adapted

from ctsr_models.inference.models import MAX_DIFFUSION_SAMPLES, MAX_DIFFUSION_STEPS, ModelKind, resolve_model

from ..errors import NotFoundError, ParamError, TooLargeError
from ..output import UNCERTAINTY_PATH, UNCERTAINTY_TTL_S, keep_uncertainty
from ..pacs import STORE_PARAM, Derivation, enhanced_derivation
from ..params import Param
from .base import InputSpec, VolumeInferTask, model_kinds

log = logging.getLogger(__name__)

NAME = "ct_super_resolution"
FALLBACK_MODEL = "cubic"
BASELINES = INTERPOLATION_DESCRIPTIONS


def default_model(models: list[str]) -> str:
    """``default`` (the shipped network) when it exists, else the cubic B-spline baseline."""
    return "default" if "default" in models else FALLBACK_MODEL


def model_descriptions(models: list[str]) -> dict[str, str]:
    """One line per model name for menus: the manifest's description, or what a baseline does."""
    specs, default = read_manifest()
    names = {name: default if name == "default" else name for name in models}
    return {name: BASELINES.get(name) or (specs[key].description if key in specs else "") or key
            for name, key in names.items()}


ADAPT_PARAMS = (
    Param("adapt", bool, False, "first fine-tune a copy of the network on this scan's own in-plane detail (the "
          "pretrained model is kept if that does not help)"),
    Param("adapt_seconds", float, AdaptOptions.seconds, "time budget of the adaptation in seconds",
          greater_than=0.0, at_most=MAX_SECONDS),
    Param("adapt_steps", int, AdaptOptions.steps, "optimizer steps of the adaptation at most", greater_than=0,
          at_most=MAX_STEPS),
    Param("adapt_profile", str, AdaptOptions.profile, "slice profile of the input for adaptation (auto: estimated)",
          choices=PROFILES),
)
"""Per-scan adaptation (:mod:`ctsr_models.training.adapt`)."""

DIFFUSION_PARAMS = (
    Param("steps", int, None, "diffusion models only: sampling steps (default: the model's)", greater_than=0,
          at_most=MAX_DIFFUSION_STEPS),
    Param("samples", int, None, "diffusion models only: samples K; the result is their mean and the uncertainty "
          "their calibrated standard deviation (default: the model's)", greater_than=0, at_most=MAX_DIFFUSION_SAMPLES),
    Param("seed", int, None, "diffusion models only: random seed (default 0)", greater_than=-1, at_most=2**31 - 1),
)
"""Sampling of a diffusion model (refused with 422 for the other models)."""


def refuse_diffusion_params(params: Mapping[str, Any]) -> None:
    """Refuse ``steps``, ``samples`` or ``seed`` for a model that is not a diffusion model.

    Raises:
        ParamError: one of them given with another kind of model.
    """
    given = [p.name for p in DIFFUSION_PARAMS if params.get(p.name) is not None]
    if not given:
        return
    if params["model"] in BASELINES or resolve_model(params["model"]).kind is not ModelKind.DIFFUSION:
        raise ParamError(f"{given[0]} applies to diffusion models only, not to {params['model']!r}")


def diffusion_details(details: dict[str, Any]) -> dict[str, Any]:
    """A diffusion result's entries in the result JSON; its uncertainty volume is kept server-side."""
    if "uncertainty" not in details:
        return {}
    result_id = keep_uncertainty(details.pop("uncertainty"))
    return {"diffusion": details["diffusion"], "ai_generated": True,
            "uncertainty": {"result_id": result_id, "url": UNCERTAINTY_PATH.format(result_id=result_id),
                            "unit": "HU", "dtype": "float32",
                            "what": "calibrated per-voxel standard deviation of the samples, same grid",
                            "fetch": f"once, within {UNCERTAINTY_TTL_S:.0f} s"}}


def adapt_options(params: Mapping[str, Any]) -> AdaptOptions | None:
    """The adaptation options of a request (``None`` unless ``adapt`` is true).

    Raises:
        ParamError: adaptation asked for with an interpolation model.
    """
    if not params["adapt"]:
        return None
    if params["model"] in BASELINES:
        raise ParamError(f"adapt needs a network model, not the interpolation {params['model']!r}")
    return AdaptOptions(steps=params["adapt_steps"], seconds=params["adapt_seconds"], profile=params["adapt_profile"])


class ProgressLog:
    """Logs a task's progress (stage and percentage) at most every ``every_s`` seconds, and at each new stage."""

    def __init__(self, task: str, every_s: float = 2.0) -> None:
        self.task, self.every_s = task, every_s
        self.last_time, self.last_stage = -float("inf"), ""

    def __call__(self, fraction: float, stage: str) -> None:
        now = time.perf_counter()
        if stage != self.last_stage or now - self.last_time >= self.every_s or fraction >= 1.0:
            log.info("%s: %s %.0f %%", self.task, stage, 100.0 * fraction)
            self.last_time, self.last_stage = now, stage


class CTSuperResolution(VolumeInferTask):
    """Through-plane super-resolution of a CT (see the module docstring).

    Args:
        max_output_voxels: refuse larger outputs with HTTP 413 (server memory policy).
    """

    inputs = (InputSpec("image", "thick-slice CT: NIfTI/NRRD/MHA file, a ZIP of a DICOM series, or a datastore id"),)

    def __init__(self, max_output_voxels: int = MAX_OUTPUT_VOXELS) -> None:
        self.models = available_models()
        self.default_model = default_model(self.models)
        self.model_descriptions = model_descriptions(self.models)
        self.max_output_voxels = int(max_output_voxels)
        params = (
            Param("target_spacing", float, 1.0, "output slice spacing in mm (finer than the input's)",
                  greater_than=0.0),
            Param("model", str, self.default_model, "super-resolution model; 'default' is the shipped network, "
                  "linear/cubic/lanczos are interpolation baselines", choices=tuple(self.models),
                  choice_error=NotFoundError),
            Param("device", str, "auto", "where a network runs: auto (GPU when available), cpu or cuda",
                  choices=DEVICES),
            Param("input_thickness", float, None, "slab thickness of the input in mm (default: from the header, "
                  "else the slice spacing)", greater_than=0.0),
            Param("input_profile", str, "rect", "slab profile shape of that thickness", choices=("rect", "gaussian")),
            Param("estimate_profile", bool, False, "without input_thickness, estimate the slab profile from the "
                  "scan itself and use it when the estimate is confident"),
            Param("consistency", bool, True, "project a network's result onto the volumes that reproduce the "
                  "acquired slabs (the residual is reported either way)"),
            Param("series_uid", str, None, "SeriesInstanceUID to read when a DICOM ZIP holds several series"),
            Param("resample_irregular", bool, False, "resample a tilted or irregularly spaced DICOM series onto a "
                  "regular grid (otherwise it is refused)"),
            Param("allow_non_ct", bool, False, "accept images that do not look like CT in HU"),
            *ADAPT_PARAMS,
            *DIFFUSION_PARAMS,
            STORE_PARAM,
        )
        super().__init__(NAME, "CT through-plane super-resolution: thick slices in, thin slices out (int16 HU)",
                         params)
        log.info("%s: models %s, default %s", NAME, ", ".join(self.models), self.default_model)

    def info(self) -> dict[str, Any]:
        """The task entry, with the models and the default chosen at start-up."""
        return {**super().info(), "models": self.models, "default_model": self.default_model,
                "model_descriptions": self.model_descriptions, "model_kinds": model_kinds(self.models, "sr")}

    def read_input(self, key: str, path: Path, params: Mapping[str, Any]) -> Volume:
        """Read the CT with the options ``ctsr-enhance`` takes from its command line."""
        return read_volume(path, series_uid=params["series_uid"], resample_irregular=params["resample_irregular"],
                           resample_spacing=None, allow_non_ct=params["allow_non_ct"])

    def run(self, volumes: Mapping[str, Volume], params: Mapping[str, Any]) -> tuple[Volume, dict[str, Any]]:
        """Enhance the image to ``target_spacing`` with ``model`` on ``device``."""
        volume = volumes["image"]
        self.check_output_size(volume, params["target_spacing"])
        refuse_diffusion_params(params)
        options = EnhanceOptions(target_spacing=params["target_spacing"], model=params["model"],
                                 input_thickness=params["input_thickness"], input_profile=params["input_profile"],
                                 estimate_profile=params["estimate_profile"], consistency=params["consistency"],
                                 device=params["device"], steps=params["steps"], samples=params["samples"],
                                 seed=params["seed"])
        adapt = adapt_options(params)
        if adapt is None:
            result, details = enhance_detailed(volume, options)
            return result, {"model": params["model"], "data_consistency": details["data_consistency"],
                            **diffusion_details(details)}
        result, details = enhance_adapted(volume, options, adapt, ProgressLog(NAME))
        return result, {"model": params["model"], "adaptation": details["adaptation"],
                        "data_consistency": details["data_consistency"]}

    def derivation(self, volumes: Mapping[str, Any], params: Mapping[str, Any],
                   result: Volume) -> tuple[Derivation, bool]:
        """A stored result: ``AI-enhanced`` (a network) or ``Interpolated``, with model and spacing; same frame."""
        return enhanced_derivation(params["model"], params["target_spacing"]), True

    def check_output_size(self, volume: Volume, target_spacing: float) -> None:
        """Refuse a target the input cannot take (422) or an output over the server's limit (413)."""
        try:
            grid = through_plane_grid(volume, target_spacing)
        except InputError as exc:
            raise ParamError(str(exc)) from exc
        n_voxels = grid.n_slices * volume.shape[1] * volume.shape[2]
        if n_voxels > self.max_output_voxels:
            raise TooLargeError(f"the output would have {n_voxels:,} voxels ({grid.n_slices:,} slices), more than "
                                f"the {self.max_output_voxels:,} this server allows; choose a larger target_spacing")
