"""``ct_super_resolution``: thick-slice CT in, thin-slice CT out, exactly as ``ctsr-enhance`` does it.

The same reader (:func:`ctsr_models.io.read_volume` with the same options), the same pipeline
(:func:`ctsr_models.inference.enhance` with the same :class:`~ctsr_models.inference.EnhanceOptions`)
and the same writer (:func:`ctsr_models.io.write_volume`), so the voxels equal the command line's
for the same input and options. The output grid (spacing, origin, direction) is the one
:mod:`ctsr_models.inference.grid` defines; nothing is resampled back onto the input grid.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctsr_models.inference import DEVICES, EnhanceOptions, available_models, enhance, read_manifest
from ctsr_models.inference.enhance import MAX_OUTPUT_VOXELS
from ctsr_models.inference.grid import through_plane_grid
from ctsr_models.io import InputError, Volume, read_volume

from ..errors import NotFoundError, ParamError, TooLargeError
from ..params import Param
from .base import InputSpec, VolumeInferTask

log = logging.getLogger(__name__)

NAME = "ct_super_resolution"
FALLBACK_MODEL = "cubic"
BASELINES = {"linear": "linear interpolation (baseline)", "cubic": "cubic B-spline interpolation (baseline)",
             "lanczos": "Lanczos windowed-sinc interpolation (baseline)"}


def default_model(models: list[str]) -> str:
    """``default`` (the shipped network) when it exists, else the cubic B-spline baseline."""
    return "default" if "default" in models else FALLBACK_MODEL


def model_descriptions(models: list[str]) -> dict[str, str]:
    """One line per model name for menus: the manifest's description, or what a baseline does."""
    specs, default = read_manifest()
    names = {name: default if name == "default" else name for name in models}
    return {name: BASELINES.get(name) or (specs[key].description if key in specs else "") or key
            for name, key in names.items()}


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
            Param("series_uid", str, None, "SeriesInstanceUID to read when a DICOM ZIP holds several series"),
            Param("resample_irregular", bool, False, "resample a tilted or irregularly spaced DICOM series onto a "
                  "regular grid (otherwise it is refused)"),
            Param("allow_non_ct", bool, False, "accept images that do not look like CT in HU"),
        )
        super().__init__(NAME, "CT through-plane super-resolution: thick slices in, thin slices out (int16 HU)",
                         params)
        log.info("%s: models %s, default %s", NAME, ", ".join(self.models), self.default_model)

    def info(self) -> dict[str, Any]:
        """The task entry, with the models and the default chosen at start-up."""
        return {**super().info(), "models": self.models, "default_model": self.default_model,
                "model_descriptions": self.model_descriptions}

    def read_input(self, key: str, path: Path, params: Mapping[str, Any]) -> Volume:
        """Read the CT with the options ``ctsr-enhance`` takes from its command line."""
        return read_volume(path, series_uid=params["series_uid"], resample_irregular=params["resample_irregular"],
                           resample_spacing=None, allow_non_ct=params["allow_non_ct"])

    def run(self, volumes: Mapping[str, Volume], params: Mapping[str, Any]) -> tuple[Volume, dict[str, Any]]:
        """Enhance the image to ``target_spacing`` with ``model`` on ``device``."""
        volume = volumes["image"]
        self.check_output_size(volume, params["target_spacing"])
        options = EnhanceOptions(target_spacing=params["target_spacing"], model=params["model"],
                                 input_thickness=params["input_thickness"], device=params["device"])
        return enhance(volume, options), {"model": params["model"]}

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
