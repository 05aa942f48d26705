"""``xray_to_ct``: a frontal and a lateral radiograph in one request, a CT-like volume out.

The two images come as the ``file`` (frontal) and ``label`` (lateral) uploads of one request, or as
``frontal.<ext>`` and ``lateral.<ext>`` in a multi-file session. Each is read with
:func:`ctsr_models.io.radiograph.read_radiograph` (DICOM DX/CR/CT localizer with its geometry tags,
PNG/JPG, or a one-slice NRRD/NIfTI as 3D Slicer saves a radiograph), and the pair goes through
:func:`ctsr_models.inference.xray2ct.reconstruct`, exactly as ``ctsr-xray2ct`` does. The result JSON
carries the projection consistency (PSNR of the inputs against the projections of the result, before
and after refinement) and the findings, which say that the volume is an estimate.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctsr_models.inference import DEVICES
from ctsr_models.inference.models import available_models
from ctsr_models.inference.xray2ct import TASK, XrayOptions, reconstruct
from ctsr_models.inference.xray_pair_check import PairError
from ctsr_models.io import Volume
from ctsr_models.io.radiograph import Radiograph, read_radiograph

from ..errors import NotFoundError, ParamError
from ..pacs import STORE_PARAM, Derivation, xray_derivation
from ..params import Param
from .base import InputSpec, VolumeInferTask

log = logging.getLogger(__name__)

NAME = "xray_to_ct"


class XrayToCT(VolumeInferTask):
    """Biplanar X-ray → CT (see the module docstring)."""

    inputs = (
        InputSpec("image", "frontal (PA/AP) X-ray: DICOM DX/CR, PNG/JPG or a one-slice NRRD; form field 'file'",
                  session_name="frontal"),
        InputSpec("label", "lateral X-ray, same formats; form field 'label'", session_name="lateral"),
    )

    def __init__(self) -> None:
        self.models = available_models(TASK)
        params = (
            Param("model", str, "default" if self.models else None, "X-ray to CT model ('default' is the shipped "
                  "one)", choices=tuple(self.models), choice_error=NotFoundError),
            Param("device", str, "auto", "where the network runs: auto (GPU when available), cpu or cuda",
                  choices=DEVICES),
            Param("refine_steps", int, XrayOptions.refine_steps, "projection-consistency refinement steps "
                  "(0: off)", greater_than=-1, at_most=1000),
            Param("output_size", int, None, "output voxels per axis over the model's field (models with a "
                  "point decoder only; default: the model's own)", greater_than=15, at_most=512),
            Param("frontal_view", str, "pa", "view of the frontal image when its file does not say",
                  choices=("pa", "ap")),
            Param("sid", float, None, "source-to-detector distance (mm) when the files do not say",
                  greater_than=0.0),
            Param("sod", float, None, "source-to-patient distance (mm) when the files do not say",
                  greater_than=0.0),
            Param("pixel_mm", float, None, "detector pixel size (mm) when the files do not say",
                  greater_than=0.0),
            STORE_PARAM,
        )
        super().__init__(NAME, "Frontal + lateral X-ray to a 3D CT estimate (int16 HU), with a re-projection "
                         "check against the X-rays", params)
        log.info("%s: models %s", NAME, ", ".join(self.models) or "none shipped")

    def is_valid(self) -> bool:
        """Servable only when an X-ray to CT model is shipped."""
        return bool(self.models)

    def info(self) -> dict[str, Any]:
        """The task entry, with the shipped models."""
        return {**super().info(), "models": self.models, "takes": "xray_pair"}

    def read_input(self, key: str, path: Path, params: Mapping[str, Any]) -> Radiograph:
        """Read one radiograph; the view comes from the file, else from the slot it was sent in."""
        view = params["frontal_view"] if key == "image" else "lateral"
        return read_radiograph(path, sid=params["sid"], sod=params["sod"], pixel_mm=params["pixel_mm"],
                               fallback_view=view)

    def describe_input(self, value: Radiograph) -> dict[str, Any]:
        """Size, view and projection geometry of a radiograph (no patient data)."""
        return {"size": list(value.image.shape[::-1]), "kind": value.kind, "geometry": value.geometry.to_dict(),
                "findings": list(value.findings)}

    def derivation(self, volumes: Mapping[str, Any], params: Mapping[str, Any],
                   result: Volume) -> tuple[Derivation, bool]:
        """A stored result: an AI estimate from the X-rays (referencing both), in a new frame of reference."""
        sources = [volumes[key].meta for key in ("image", "label")]
        return xray_derivation(params["model"], result.spacing[2], sources), False

    def run(self, volumes: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[Volume, dict[str, Any]]:
        """Reconstruct from the pair with the chosen model and refinement."""
        options = XrayOptions(model=params["model"], device=params["device"], refine_steps=params["refine_steps"],
                               output_size=params["output_size"])
        try:
            result = reconstruct(volumes["image"], volumes["label"], options)
        except PairError as exc:  # an impossible pair is a request the server cannot answer: 422
            raise ParamError(str(exc)) from exc
        return result.volume, {"model": params["model"], "projection_consistency_db": result.consistency,
                               "network_timings_s": result.timings_s}
