"""Shipped models: a manifest of named networks with their weights, checked by SHA-256 before loading.

``ctsr_models/weights/models.json`` lists each model: the registered network name and arguments,
the weights file (a state dict, loaded with ``torch.load(weights_only=True)``), its SHA-256, the
sliding-window size and the model card. Each model belongs to one task (``sr``: through-plane
super-resolution, ``xray2ct``: biplanar X-ray to CT); the name ``default`` means the manifest's default
model of the task (``"default"`` for ``sr``, ``"defaults": {task: name}`` for the others). For ``sr``
the interpolation baselines (``linear``, ``cubic``, ``lanczos``) are models too, with no network.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctsr_models.io.atomic import atomic_file
from ctsr_models.io.checksum import sha256
from ctsr_models.io.errors import InputError
from ctsr_models.nets import build_net

from .interpolation import INTERPOLATORS

log = logging.getLogger(__name__)

SHIPPED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
MANIFEST_NAME = "models.json"


def weights_dir() -> Path:
    """The folder holding ``models.json`` and the weights: ``$CTSR_WEIGHTS_DIR`` or the shipped one."""
    return Path(os.environ.get("CTSR_WEIGHTS_DIR") or SHIPPED_WEIGHTS)


class WeightsError(InputError):
    """Weights that are missing, altered or do not fit their network."""


@dataclass(frozen=True)
class ModelSpec:
    """One shipped model.

    Attributes:
        name: the name users pass as ``--model``.
        net: registered network name (:mod:`ctsr_models.nets`).
        net_kwargs: arguments of that network.
        weights: file name under the weights folder.
        sha256: hex SHA-256 of that file.
        roi_size: sliding-window size ``(z, y, x)`` in voxels of the output grid.
        card: model card, relative to the repository.
        description: one line for menus and ``/info/``.
        task: the task the model serves (``sr`` or ``xray2ct``).
        extra: task-specific settings saved with the model (e.g. the X-ray set-up of ``xray2ct``).
    """

    name: str
    net: str
    weights: str
    sha256: str
    net_kwargs: dict[str, Any] = field(default_factory=dict)
    roi_size: tuple[int, int, int] = (48, 128, 128)
    card: str = ""
    description: str = ""
    task: str = "sr"
    extra: dict[str, Any] = field(default_factory=dict)


def _read_json(folder: Path | None) -> dict[str, Any]:
    path = (folder or weights_dir()) / MANIFEST_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def _defaults(data: dict[str, Any]) -> dict[str, str]:
    """Default model name per task (``"default"`` is the SR one, for manifests older than tasks)."""
    return {**({"sr": data["default"]} if data.get("default") else {}), **data.get("defaults", {})}


def read_manifest(folder: Path | None = None, task: str = "sr") -> tuple[dict[str, ModelSpec], str | None]:
    """The shipped models of ``task`` by name, and the name of its default (``None`` if none is shipped)."""
    data = _read_json(folder)
    specs = {}
    for entry in data.get("models", []):
        entry = dict(entry, roi_size=tuple(entry.get("roi_size", ModelSpec.roi_size)))
        if entry.get("task", "sr") == task:
            specs[entry["name"]] = ModelSpec(**entry)
    return specs, _defaults(data).get(task)


def available_models(task: str = "sr") -> list[str]:
    """Every name ``--model`` accepts for ``task``: ``default``, the shipped models and (SR) the
    interpolation baselines."""
    specs, default = read_manifest(task=task)
    return (["default"] if default else []) + sorted(specs) + (list(INTERPOLATORS) if task == "sr" else [])


def resolve_model(name: str, task: str = "sr") -> ModelSpec | str:
    """The :class:`ModelSpec` for ``name``, or the interpolation name for an SR baseline.

    Raises:
        InputError: unknown name (the message lists the known ones).
    """
    if task == "sr" and name in INTERPOLATORS:
        return name
    specs, default = read_manifest(task=task)
    key = default if name == "default" else name
    if key is None or key not in specs:
        known = ", ".join(available_models(task)) or "none shipped"
        kind = "model" if task == "sr" else f"{task} model"
        raise InputError(f"unknown {kind} {name!r}; available: {known}")
    return specs[key]


def load_network(spec: ModelSpec, device: torch.device, folder: Path | None = None) -> nn.Module:
    """Build the network of ``spec`` and load its checked weights, in eval mode on ``device``.

    Raises:
        WeightsError: the file is missing, its SHA-256 differs from the manifest, or it does not fit.
    """
    path = (folder or weights_dir()) / spec.weights
    if not path.is_file():
        raise WeightsError(f"weights of model {spec.name!r} not found ({spec.weights}); reinstall the package")
    digest = sha256(path)
    if digest != spec.sha256:
        raise WeightsError(f"weights of model {spec.name!r} fail their SHA-256 check (file altered or corrupt); "
                           "refusing to load them")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = build_net(spec.net, **spec.net_kwargs)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"weights of model {spec.name!r} do not fit network {spec.net!r}") from exc
    log.info("loaded model %s (%s, sha256 %s...)", spec.name, spec.net, digest[:12])
    return net.to(device).eval()


def ship_model(checkpoint: str | Path, name: str, *, description: str, card: str,
               roi_size: tuple[int, int, int] = ModelSpec.roi_size, default: bool = True,
               folder: Path | None = None, task: str = "sr", extra: dict[str, Any] | None = None) -> ModelSpec:
    """Add a trained model to the weights folder and its manifest (replacing one of the same name).

    The EMA weights of a complete training checkpoint (``checkpoints/step_*.pt`` or ``last.pt``)
    are saved as a plain state dict; the network name and arguments come from the checkpoint's
    resolved config. Files are written atomically. ``task`` and ``extra`` are stored with the model
    (see :class:`ModelSpec`); ``default`` makes it the default of its task.

    Returns:
        The new :class:`ModelSpec`.
    """
    folder = folder or weights_dir()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if state.get("ema"):
        weights = {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"}
    else:
        weights = state["model"]
    model_cfg = state["config"]["model"]
    build_net(model_cfg["name"], **model_cfg["kwargs"]).load_state_dict(weights, strict=True)
    with atomic_file(folder / f"{name}.pt") as tmp:
        torch.save(weights, tmp)
    spec = ModelSpec(name=name, net=model_cfg["name"], weights=f"{name}.pt", sha256=sha256(folder / f"{name}.pt"),
                     net_kwargs=dict(model_cfg["kwargs"]), roi_size=tuple(roi_size), card=card,
                     description=description, task=task, extra=dict(extra or {}))
    data = _read_json(folder)
    entries = {e["name"]: e for e in data.get("models", [])}
    entries[name] = dict(vars(spec), roi_size=list(spec.roi_size))
    defaults = _defaults(data)
    if default:
        defaults[task] = name
    manifest = {"default": defaults.get("sr"), "defaults": {k: v for k, v in defaults.items() if k != "sr"},
                "models": list(entries.values())}
    with atomic_file(folder / MANIFEST_NAME) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return spec
