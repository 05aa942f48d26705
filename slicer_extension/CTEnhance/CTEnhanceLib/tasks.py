"""The server's image-output tasks as the client sees them in ``GET /info/``.

MONAI Label lists every infer task under ``models``. CT Enhance's tasks have ``type`` ``"others"``
and an ``output`` entry naming the file ``extensions`` they can write: that pair marks a task whose
result is an image (segmentation tasks return label maps and have no ``output``). A task's
``inputs`` say which images it takes: ``image`` alone (a CT), or ``image`` and ``label`` (a frontal
and a lateral X-ray, uploaded as the form fields ``file`` and ``label``).

A model's kind (``interpolation``, ``regression``, ``diffusion``) decides whether the sampling
parameters ``samples`` and ``steps`` apply and whether the result comes with an uncertainty volume.
The task entry's ``model_kinds`` (model name -> kind) says it; a server that does not send it (CT
Enhance's server before ``model_kinds``) is read from its ``model_descriptions``: a model whose
description names diffusion counts as one (:meth:`TaskInfo.model_kind`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SR_TASK = "ct_super_resolution"
"""The through-plane super-resolution task of CT Enhance's MONAI Label app."""

DENOISE_TASK = "ct_denoise"
"""The low-dose denoising task of CT Enhance's MONAI Label app."""

DIFFUSION_KIND = "diffusion"
"""The model kind whose results are sampled (``samples``, ``steps``, ``seed``) and carry an uncertainty."""

SAMPLING_PARAMS = ("samples", "steps")
"""The sampling parameters the panel offers for a diffusion model (``seed`` stays the server's default)."""

ACTION_LABELS = {SR_TASK: "Enhance", DENOISE_TASK: "Denoise (low dose)"}
"""The panel's run button for a task (other tasks: ``Run``)."""

TASK_LABELS = {SR_TASK: "Enhance (super-resolution)", DENOISE_TASK: "Denoise (low dose)",
               "xray_to_ct": "CT from two X-rays"}
"""The task list's entries (other tasks: their name)."""

UPLOAD_FIELDS = {"image": "file", "label": "label"}
"""Task input key -> multipart form field of ``POST /infer/<task>``."""

RESULT_EXTENSIONS = (".nrrd", ".nii", ".nii.gz", ".mha")
"""Result file types CT Enhance's server writes (``result_extension``)."""


@dataclass(frozen=True)
class TaskInfo:
    """One image-output infer task of the server.

    Attributes:
        name: the task name in ``POST /infer/<name>``.
        description: one line from the server.
        inputs: input key (``image``, ``label``) -> what the server expects there.
        params: parameter name -> its ``/info/`` description (``type``, ``default``, ``choices``...).
        models: model names the task offers (empty when it has no ``model`` parameter).
        default_model: the model used when none is asked for.
        extensions: result file types the task writes.
        model_kinds: model name -> kind (``interpolation``, ``regression``, ``diffusion``), when the
            server says.
        model_descriptions: model name -> one line from the server.
    """

    name: str
    description: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: tuple[str, ...] = ()
    default_model: str = ""
    extensions: tuple[str, ...] = RESULT_EXTENSIONS
    model_kinds: dict[str, str] = field(default_factory=dict)
    model_descriptions: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The task's entry in the panel's task list, e.g. ``Denoise (low dose)``."""
        return TASK_LABELS.get(self.name, self.name)

    @property
    def action(self) -> str:
        """The text of the panel's run button for this task, e.g. ``Enhance``."""
        return ACTION_LABELS.get(self.name, "Run")

    def model_kind(self, model: str | None) -> str:
        """The kind of ``model`` (``None``: the default model): the server's ``model_kinds`` entry; without
        one, ``diffusion`` when its description names diffusion; else ``""`` (not known)."""
        name = model or self.default_model or str(self.default("model") or "")
        if name in self.model_kinds:
            return self.model_kinds[name]
        return DIFFUSION_KIND if DIFFUSION_KIND in self.model_descriptions.get(name, "").lower() else ""

    def samples_model(self, model: str | None) -> bool:
        """Whether ``model`` is a diffusion model of a task that takes the sampling parameters."""
        return self.model_kind(model) == DIFFUSION_KIND and all(p in self.params for p in SAMPLING_PARAMS)

    def bounds(self, param: str) -> tuple[int, int]:
        """The smallest and largest whole value the server accepts for ``param`` (from ``/info/``'s
        ``exclusive_minimum``/``minimum`` and ``maximum``); ``(1, 1)`` when it says nothing.

        Raises:
            KeyError: the task has no such parameter.
        """
        entry = self.params[param]
        low = entry.get("minimum", entry["exclusive_minimum"] + 1 if "exclusive_minimum" in entry else 1)
        high = entry.get("maximum", low)
        return int(low), int(high)

    def sampling_params(self, model: str | None, samples: int | None, steps: int | None) -> dict[str, int]:
        """The sampling values of a request: ``samples`` and ``steps`` when ``model`` is a diffusion model
        and they are set (``None``: the model's own default); nothing for another model.

        Raises:
            ValueError: a value outside the server's bounds.
        """
        if not self.samples_model(model):
            return {}
        values = {"samples": samples, "steps": steps}
        for name, value in values.items():
            low, high = self.bounds(name)
            if value is not None and not low <= value <= high:
                raise ValueError(f"{name} must be from {low} to {high}, not {value}")
        return {k: int(v) for k, v in values.items() if v is not None}

    @property
    def takes_xray_pair(self) -> bool:
        """Whether the task takes two images (a frontal and a lateral X-ray) instead of one volume."""
        return "image" in self.inputs and "label" in self.inputs

    def choices(self, param: str) -> tuple[str, ...]:
        """The allowed values of ``param`` (empty when it is free or absent)."""
        return tuple(str(c) for c in self.params.get(param, {}).get("choices", ()))

    def default(self, param: str) -> Any:
        """The server's default for ``param`` (``None`` when absent)."""
        return self.params.get(param, {}).get("default")

    def request_params(self, **values: Any) -> dict[str, Any]:
        """The ``params`` JSON for a request: the given values that this task declares and that are set.

        Raises:
            ValueError: a value names a parameter the task does not have.
        """
        unknown = sorted(k for k, v in values.items() if v is not None and k not in self.params)
        if unknown:
            raise ValueError(f"task {self.name!r} has no parameter {', '.join(unknown)}; "
                             f"it takes {', '.join(sorted(self.params)) or 'none'}")
        return {k: v for k, v in values.items() if v is not None}

    @property
    def can_adapt(self) -> bool:
        """Whether the task can first adapt its model to the scan (the ``adapt`` parameter)."""
        return "adapt" in self.params

    def adapt_params(self, adapt: bool, seconds: float | None) -> dict[str, Any]:
        """The adaptation values of a request: ``adapt`` and its time budget ``adapt_seconds`` when
        adapting; nothing when the task cannot adapt.

        Raises:
            ValueError: adaptation asked for from a task that cannot adapt, or a budget that is not positive.
        """
        if not adapt:
            return {"adapt": False} if self.can_adapt else {}
        if not self.can_adapt:
            raise ValueError(f"task {self.name!r} cannot adapt its model to the scan")
        if seconds is not None and not seconds > 0:
            raise ValueError(f"the adaptation time budget must be positive, got {seconds}")
        return {"adapt": True, **({"adapt_seconds": float(seconds)} if seconds is not None else {})}

    @classmethod
    def from_info(cls, name: str, entry: Mapping[str, Any]) -> TaskInfo | None:
        """The task described by ``entry`` (one value of ``/info/``'s ``models``), or ``None`` when its
        result is not an image."""
        output = entry.get("output")
        if entry.get("type") != "others" or not isinstance(output, Mapping) or not output.get("extensions"):
            return None
        params = entry.get("params") if isinstance(entry.get("params"), Mapping) else {}
        inputs = entry.get("inputs") if isinstance(entry.get("inputs"), Mapping) else {"image": "the volume"}
        return cls(name=name, description=str(entry.get("description", "")),
                   inputs={str(k): str(v) for k, v in inputs.items()},
                   params={str(k): dict(v) for k, v in params.items() if isinstance(v, Mapping)},
                   models=tuple(str(m) for m in entry.get("models", ()) or ()),
                   default_model=str(entry.get("default_model", "")),
                   extensions=tuple(str(e) for e in output["extensions"]),
                   model_kinds=_strings(entry.get("model_kinds")),
                   model_descriptions=_strings(entry.get("model_descriptions")))


def _strings(value: Any) -> dict[str, str]:
    """A JSON object of strings as a ``dict[str, str]`` (empty when it is not an object)."""
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


def image_tasks(info: Mapping[str, Any]) -> list[TaskInfo]:
    """The image-output tasks in a ``GET /info/`` answer, in the server's order."""
    models = info.get("models") if isinstance(info.get("models"), Mapping) else {}
    tasks = (TaskInfo.from_info(name, entry) for name, entry in models.items() if isinstance(entry, Mapping))
    return [task for task in tasks if task is not None]


def tasks_from_records(records: list[Mapping[str, Any]]) -> list[TaskInfo]:
    """The tasks the terminal client's ``info`` printed (``dataclasses.asdict`` of each :class:`TaskInfo`).

    Raises:
        ValueError: a record is not a task.
    """
    tasks = []
    for record in records:
        try:
            tasks.append(TaskInfo(name=str(record["name"]), description=str(record.get("description", "")),
                                  inputs=dict(record.get("inputs") or {}), params=dict(record.get("params") or {}),
                                  models=tuple(record.get("models") or ()),
                                  default_model=str(record.get("default_model", "")),
                                  extensions=tuple(record.get("extensions") or RESULT_EXTENSIONS),
                                  model_kinds=_strings(record.get("model_kinds")),
                                  model_descriptions=_strings(record.get("model_descriptions"))))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a task record: {record!r}") from exc
    return tasks


def result_extension(path_name: str) -> str:
    """The result type a file name asks for (``.nii.gz`` counts as one extension).

    Raises:
        ValueError: the name does not end in one of :data:`RESULT_EXTENSIONS`.
    """
    lower = path_name.lower()
    for extension in sorted(RESULT_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(extension):
            return extension
    raise ValueError(f"the output must end in {', '.join(RESULT_EXTENSIONS)}: {path_name}")
