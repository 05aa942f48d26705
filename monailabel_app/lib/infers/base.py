"""The base of every CT Enhance infer task: images in, one image out, no MONAI transforms in between.

MONAI Label's ``BasicInferTask`` is built for segmentation: its pre/post transforms and inverse
transforms would put the result back onto the input grid, and its writer obeys a client's
``result_dtype``. An image-to-image task here instead reads its inputs with :mod:`ctsr_models.io`
(exact geometry), runs a :mod:`ctsr_models.inference` pipeline, and writes the result with the
geometry that pipeline gives it (:mod:`~lib.output`).

A subclass declares:
    * ``inputs``: the request keys it reads, each an uploaded file or a datastore image. ``image``
      is the ``file`` upload or the ``image`` id; a second image comes as the ``label`` upload
      (MONAI Label's second file field), or both as files of a multi-file session, matched by
      :attr:`InputSpec.session_name`.
    * ``params``: :class:`~lib.params.Param` declarations (validated, and shown in ``/info/``).
    * :meth:`VolumeInferTask.run`: volumes in, volume out.
    * :meth:`VolumeInferTask.derivation`: how its result is described when stored in the PACS
      (``store: true`` or ``--conf store_results true``, :mod:`~lib.pacs`).
"""
from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from ctsr_models.inference.models import resolve_model
from ctsr_models.io import Volume, read_volume

from ..errors import NotFoundError, to_http
from ..output import DEFAULT_EXTENSION, RESULT_EXTENSIONS, result_format, write_result
from ..pacs import Derivation, PacsTarget, store_volume, wants_store
from ..params import Param, parse_params, unknown_keys

log = logging.getLogger(__name__)

MONAILABEL_KEYS = (
    "model", "image", "label", "session", "session_id", "description", "save_label", "label_tag", "device_ids",
    "result_extension", "result_dtype", "result_compress", "restore_label_idx", "label_info", "timeout", "client_id",
    "cache_transforms", "cache_transforms_in_memory", "cache_transforms_ttl", "output", "largest_cc", "pipeline_mode",
)
"""Request keys that MONAI Label or its clients (the Slicer and OHIF plugins) add on their own."""


@dataclass(frozen=True)
class InputSpec:
    """One input image of a task.

    Attributes:
        key: the request key holding its path (``image`` or ``label``).
        description: one line for ``/info/``.
        session_name: file name stem inside a multi-file session folder (two-image tasks).
    """

    key: str
    description: str
    session_name: str = ""


class VolumeInferTask(InferTask):
    """Image(s) in, one volume out; subclasses implement :meth:`run` (see the module docstring)."""

    inputs: tuple[InputSpec, ...] = (InputSpec("image", "the volume to process"),)
    default_extension: str = DEFAULT_EXTENSION
    pacs: PacsTarget | None = None
    """The PACS the server serves (set by the app); results go there on request."""

    def __init__(self, name: str, description: str, params: Sequence[Param]) -> None:
        super().__init__(type=InferType.OTHERS, labels=None, dimension=3, description=description,
                         config={p.name: p.default for p in params})
        self.name = name
        self.params = tuple(params)

    def is_valid(self) -> bool:
        """Always servable: the interpolation baselines need no weights."""
        return True

    def info(self) -> dict[str, Any]:
        """MONAI Label's task entry plus the parameters, inputs and output of this task."""
        info = super().info()
        info.update(
            params={p.name: p.describe() for p in self.params},
            inputs={spec.key: spec.description for spec in self.inputs},
            output={"dtype": "int16 HU (result_dtype float32 on request)", "extensions": list(RESULT_EXTENSIONS),
                    "default_extension": self.default_extension},
        )
        return info

    @abstractmethod
    def run(self, volumes: Mapping[str, Volume], params: Mapping[str, Any]) -> tuple[Volume, dict[str, Any]]:
        """Compute the result.

        Args:
            volumes: the inputs by request key (``image``, ``label``).
            params: validated parameters by public name.

        Returns:
            The result volume (float32 HU, its own geometry) and JSON-able details for the client.
        """

    def read_input(self, key: str, path: Path, params: Mapping[str, Any]) -> Any:
        """Read one input; the default reads a CT volume with :func:`ctsr_models.io.read_volume`."""
        return read_volume(path)

    def derivation(self, volumes: Mapping[str, Any], params: Mapping[str, Any],
                   result: Volume) -> tuple[Derivation, bool]:
        """How a stored result was made, and whether it keeps the source's frame of reference.

        The default names the task and says the result is AI-generated, in a new frame of reference.
        """
        return Derivation(method=f"AI-generated ({self.name})", model=str(params.get("model"))), False

    def describe_input(self, value: Any) -> dict[str, Any]:
        """The input's entry in the result JSON (geometry, no patient data)."""
        return value.geometry_dict()

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Serve one request: validate, read, run, write; every failure becomes an HTTP error."""
        start = time.perf_counter()
        paths: dict[str, Path] = {}
        try:
            params = parse_params(request, self.params)
            extension, dtype, notes = result_format(request, self.default_extension)
            paths = self.input_paths(request)
            volumes = {key: self.read_input(key, path, params) for key, path in paths.items()}
            store = wants_store(self.pacs, bool(params.get("store")), getattr(volumes["image"], "meta", {}))
            read_done = time.perf_counter()
            result, details = self.run(volumes, params)
            if store:  # before the result file, which a failure here would leave behind
                details["pacs"] = store_volume(self.pacs, result, *self.derivation(volumes, params, result))
            run_done = time.perf_counter()
            out = write_result(result, extension, dtype)
        except Exception as exc:
            raise to_http(exc, self.name, hide=_hidden(paths)) from exc
        end = time.perf_counter()
        timings = {"read": read_done - start, "inference": run_done - read_done, "write": end - run_done,
                   "total": end - start}
        ignored = unknown_keys(request, self.params, MONAILABEL_KEYS)
        log.info("%s: done in %.2f s (read %.2f, inference %.2f, write %.2f); %s -> %s %s", self.name,
                 timings["total"], timings["read"], timings["inference"], timings["write"],
                 " + ".join(_size(v) for v in volumes.values()), _size(result), dtype)
        return str(out), {
            "task": self.name,
            **details,
            "params": params,
            "input": {key: self.describe_input(v) for key, v in volumes.items()},
            "output": {"geometry": result.geometry_dict(), "dtype": dtype, "extension": extension},
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
            "findings": list(result.findings),
            "notes": notes + [f"parameter {k!r} is not used by {self.name}" for k in ignored],
        }

    def input_paths(self, request: Mapping[str, Any]) -> dict[str, Path]:
        """The path of every declared input.

        Raises:
            NotFoundError: an input is missing.
        """
        image = request.get("image")
        if len(self.inputs) > 1 and request.get("session") and image and Path(image).is_dir():
            return session_files(Path(image), self.inputs)
        paths = {}
        for spec in self.inputs:
            value = request.get(spec.key)
            if not value or not Path(value).exists():
                field = "file" if spec.key == "image" else spec.key
                raise NotFoundError(f"no {spec.key} given ({spec.description}): upload it as the form field "
                                    f"{field!r}" + (", or name a datastore image with ?image=ID" if spec.key == "image"
                                                    else ""))
            paths[spec.key] = Path(value)
        return paths


def model_kinds(models: Sequence[str], task: str) -> dict[str, str]:
    """Model name -> kind (``interpolation``, ``regression``, ``diffusion``) for the task's ``/info/`` entry.

    Clients (the Slicer module) show the sampling options only for ``diffusion`` models.
    """
    return {name: resolve_model(name, task=task).kind.value for name in models}


def session_files(folder: Path, specs: Sequence[InputSpec]) -> dict[str, Path]:
    """The inputs of a multi-file session: the file whose name (before its extensions) is each
    spec's ``session_name``.

    Raises:
        NotFoundError: an input is missing from the session.
    """
    by_stem = {p.name.split(".")[0]: p for p in folder.iterdir()}
    missing = [s.session_name for s in specs if s.session_name not in by_stem]
    if missing:
        raise NotFoundError(f"the session lacks {', '.join(missing)}: upload files named "
                            f"{', '.join(s.session_name + '.<ext>' for s in specs)}")
    return {s.key: by_stem[s.session_name] for s in specs}


def _size(value: Any) -> str:
    """``x``-joined image size (columns first) of a volume or a radiograph."""
    return "x".join(map(str, np.shape(getattr(value, "array", getattr(value, "image", None)))[::-1]))


def _hidden(paths: Mapping[str, Path]) -> tuple[str, ...]:
    """Server-side input paths and names, kept out of messages."""
    return tuple(text for p in paths.values() for text in (str(p), p.name))
