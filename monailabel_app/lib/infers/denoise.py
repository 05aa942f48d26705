"""``ct_denoise``: a low-dose CT in, the same grid denoised by a shipped regression model out.

The request reads the CT as ``ctsr-denoise`` does and runs :func:`ctsr_models.inference.denoise`, so the
voxels equal the CLI's. Progress is logged (stage and percentage); the result JSON names the model and its
findings say the image was denoised by an AI model. The task is hidden from ``/info/`` while no denoising
model is shipped.

With the latent diffusion denoiser (``model: "diffusion"`` or its name; ``steps``, ``samples``, ``seed`` with the
bounds and 422s of ``ct_super_resolution``) the result is the mean of the samples and the result JSON carries
``ai_generated``, ``diffusion`` (label, steps, samples, seed) and ``uncertainty``: the id under which the
per-voxel standard deviation of the same inference is kept, fetchable once at its ``url`` (:mod:`lib.output`).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctsr_models.inference import DEVICES, ModelKind
from ctsr_models.inference.denoise import TASK
from ctsr_models.inference.ldm_denoise import LDMDenoiseOptions, denoise_detailed
from ctsr_models.inference.models import available_models, resolve_model
from ctsr_models.io import Volume, read_volume

from ..errors import NotFoundError, ParamError
from ..pacs import Derivation
from ..params import Param
from .base import InputSpec, VolumeInferTask, model_kinds
from .super_resolution import DIFFUSION_PARAMS, ProgressLog, diffusion_details

log = logging.getLogger(__name__)

NAME = "ct_denoise"


class CTDenoise(VolumeInferTask):
    """Low-dose CT denoising (see the module docstring)."""

    inputs = (InputSpec("image", "low-dose CT: NIfTI/NRRD/MHA file, a ZIP of a DICOM series, or a datastore id"),)

    def __init__(self) -> None:
        self.models = available_models(TASK)
        params = (
            Param("model", str, "default" if self.models else None, "denoising model ('default' is the shipped "
                  "one)", choices=tuple(self.models), choice_error=NotFoundError),
            Param("device", str, "auto", "where the network runs: auto (GPU when available), cpu or cuda",
                  choices=DEVICES),
            Param("series_uid", str, None, "SeriesInstanceUID to read when a DICOM ZIP holds several series"),
            Param("allow_non_ct", bool, False, "accept images that do not look like CT in HU"),
            *DIFFUSION_PARAMS,
        )
        super().__init__(NAME, "Low-dose CT denoising by a neural network (same grid, int16 HU)", params)
        log.info("%s: models %s", NAME, ", ".join(self.models) or "none shipped")

    def is_valid(self) -> bool:
        """Servable only when a denoising model is shipped."""
        return bool(self.models)

    def info(self) -> dict[str, Any]:
        """The task entry, with the shipped models."""
        return {**super().info(), "models": self.models, "model_kinds": model_kinds(self.models, TASK)}

    def read_input(self, key: str, path: Path, params: Mapping[str, Any]) -> Volume:
        """Read the CT with the options ``ctsr-denoise`` takes from its command line."""
        return read_volume(path, series_uid=params["series_uid"], allow_non_ct=params["allow_non_ct"])

    def derivation(self, volumes: Mapping[str, Any], params: Mapping[str, Any],
                   result: Volume) -> tuple[Derivation, bool]:
        """A stored result: ``AI-denoised`` by the model, in the source's frame of reference."""
        spec = resolve_model(params["model"], task=TASK)
        if spec.kind is ModelKind.DIFFUSION:
            return Derivation(method="AI-denoised", model=spec.name,
                              details="Low-dose denoising by a latent diffusion model: the mean of samples with "
                                      "AI-generated detail, not an acquired image."), True
        return Derivation(method="AI-denoised", model=spec.name,
                          details="Low-dose denoising by a neural network: an AI-processed image, not an acquired "
                                  "one."), True

    def run(self, volumes: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[Volume, dict[str, Any]]:
        """Denoise the CT with the chosen model (diffusion options refused with 422 for a regression model)."""
        given = [p.name for p in DIFFUSION_PARAMS if params.get(p.name) is not None]
        if given and resolve_model(params["model"], task=TASK).kind is not ModelKind.DIFFUSION:
            raise ParamError(f"{given[0]} applies to diffusion models only, not to {params['model']!r}")
        options = LDMDenoiseOptions(model=params["model"], device=params["device"], steps=params["steps"],
                                    samples=params["samples"], seed=params["seed"])
        result, details = denoise_detailed(volumes["image"], options, ProgressLog(NAME))
        return result, {"model": details["model"], **diffusion_details(details)}
