"""Shipped models: a manifest of named networks with their weights, checked by SHA-256 before loading.

``ctsr_models/weights/models.json`` lists each model: the registered network name and arguments,
the weights file (a state dict, loaded with ``torch.load(weights_only=True)``), its SHA-256, the
sliding-window size and the model card. Each model belongs to one task (``sr``: through-plane
super-resolution, ``xray2ct``: biplanar X-ray to CT) and has one :class:`ModelKind` (``"kind"``:
``regression`` or ``diffusion``; entries without it, from older manifests, are ``regression``), which
chooses the predictor that runs it (:mod:`~ctsr_models.inference.predictor`). Task settings are typed
fields (``"xray_setup"`` of an ``xray2ct`` model: :class:`~ctsr_models.data.xray_pairs.XraySetup`;
older manifests kept it as ``"extra": {"setup": ...}``, still read; ``"diffusion"`` of a ``diffusion`` model:
:class:`DiffusionSettings`, its scheduler, steps, the regression model it conditions on and its
calibration). The name ``default`` means the
manifest's default model of the task (``"default"`` for ``sr``, ``"defaults": {task: name}`` for the
others); the name ``diffusion`` means the default diffusion model of the task (``"defaults":
{"sr_diffusion": name}``), never the task's default. For ``sr`` the interpolation baselines (``linear``,
``cubic``, ``lanczos``) are models too, of kind ``interpolation`` and with no network; they are built in
code, not listed in the manifest.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctsr_models.data.xray_pairs import XraySetup
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


class ModelKind(str, Enum):
    """How a model makes its output, which chooses the predictor that runs it.

    ``interpolation``: a resampling kernel, no network (the SR baselines, built in code).
    ``regression``: one network pass per window (sliding window).
    ``diffusion``: a network sampled by a noise scheduler (:mod:`ctsr_models.diffusion`).
    """

    INTERPOLATION = "interpolation"
    REGRESSION = "regression"
    DIFFUSION = "diffusion"


MANIFEST_KINDS = (ModelKind.REGRESSION, ModelKind.DIFFUSION)
"""The kinds a manifest entry may have (interpolations are built in)."""

MAX_DIFFUSION_STEPS = 50
MAX_DIFFUSION_SAMPLES = 16


@dataclass(frozen=True)
class DiffusionSettings:
    """How a ``diffusion`` model is sampled and how its uncertainty is calibrated.

    Attributes:
        scheduler: registered scheduler name (:func:`ctsr_models.diffusion.build_scheduler`).
        scheduler_kwargs: its keyword arguments (as trained).
        steps: default number of sampling steps (network evaluations per window and sample).
        samples: default number of samples ``K`` (the output is their mean).
        regression_model: the shipped ``sr`` regression model whose output is the conditioning and the
            start of residual shifting; ``None`` for a model conditioned on its input alone (the latent
            diffusion denoiser, :mod:`~ctsr_models.inference.ldm_denoise`).
        calibration_scale: conformal factor ``c`` (:func:`ctsr_models.metrics.calibration.fit_scale`): the
            uncertainty returned is ``c * std`` over the samples.
        calibration_z: the normal quantile ``z`` of the stated interval ``mean +- z * (c * std)``.
        calibration_coverage: the coverage that interval was fitted for on held-out data (``None``: not
            calibrated, ``c = 1``).
    """

    scheduler: str = "resshift"
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    steps: int = 4
    samples: int = 1
    regression_model: str | None = "sr_unet_small_v3"
    calibration_scale: float = 1.0
    calibration_z: float = 1.6448536269514722
    calibration_coverage: float | None = None

    def __post_init__(self) -> None:
        for name, value, high in (("steps", self.steps, MAX_DIFFUSION_STEPS),
                                  ("samples", self.samples, MAX_DIFFUSION_SAMPLES)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
                raise ValueError(f"diffusion {name} must be an int in [1, {high}], got {value!r}")
        if not self.scheduler or self.regression_model == "":
            raise ValueError("diffusion settings need a scheduler and a regression_model (or null for none)")
        if not (self.calibration_scale > 0 and self.calibration_z > 0):
            raise ValueError(f"calibration_scale and calibration_z must be > 0, got {self.calibration_scale!r}, "
                             f"{self.calibration_z!r}")
        if self.calibration_coverage is not None and not 0 < self.calibration_coverage < 1:
            raise ValueError(f"calibration_coverage must be in (0, 1), got {self.calibration_coverage!r}")

    def to_entry(self) -> dict[str, Any]:
        """JSON-able form (inverse of :func:`_parse_diffusion`)."""
        return {**asdict(self), "scheduler_kwargs": dict(self.scheduler_kwargs)}


@dataclass(frozen=True)
class ModelSpec:
    """One model: a shipped network, or (kind ``interpolation``) an SR baseline.

    Attributes:
        name: the name users pass as ``--model``.
        net: registered network name (:mod:`ctsr_models.nets`); empty for an interpolation.
        weights: file name under the weights folder; empty for an interpolation.
        sha256: hex SHA-256 of that file; empty for an interpolation.
        net_kwargs: arguments of that network.
        roi_size: sliding-window size ``(z, y, x)`` in voxels of the output grid.
        card: model card, relative to the repository.
        description: one line for menus and ``/info/``.
        task: the task the model serves (``sr`` or ``xray2ct``).
        kind: how the model makes its output (:class:`ModelKind`).
        xray_setup: the X-ray set-up an ``xray2ct`` model was trained with (``None`` for other tasks).
        diffusion: how a ``diffusion`` model is sampled (required for that kind, ``None`` for the others).
    """

    name: str
    net: str = ""
    weights: str = ""
    sha256: str = ""
    net_kwargs: dict[str, Any] = field(default_factory=dict)
    roi_size: tuple[int, int, int] = (48, 128, 128)
    card: str = ""
    description: str = ""
    task: str = "sr"
    kind: ModelKind = ModelKind.REGRESSION
    xray_setup: XraySetup | None = None
    diffusion: DiffusionSettings | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, ModelKind):
            raise ValueError(f"kind must be a ModelKind, got {self.kind!r}")
        if (self.kind is ModelKind.DIFFUSION) != (self.diffusion is not None):
            raise ValueError(f"model {self.name!r}: diffusion settings are required for kind diffusion and only "
                             "for it")
        if self.kind is not ModelKind.INTERPOLATION and not (self.net and self.weights and self.sha256):
            raise ValueError(f"model {self.name!r} of kind {self.kind.value} needs net, weights and sha256")

    @classmethod
    def interpolation(cls, method: str) -> ModelSpec:
        """The spec of an SR interpolation baseline (``method`` in :data:`INTERPOLATORS`).

        Raises:
            ValueError: an unknown method.
        """
        if method not in INTERPOLATORS:
            raise ValueError(f"unknown interpolation {method!r}; allowed: {', '.join(INTERPOLATORS)}")
        return cls(name=method, kind=ModelKind.INTERPOLATION, description=INTERPOLATION_DESCRIPTIONS[method])

    @property
    def has_network(self) -> bool:
        """Whether the model runs a network (every kind but ``interpolation``)."""
        return self.kind is not ModelKind.INTERPOLATION

    def to_entry(self) -> dict[str, Any]:
        """The manifest entry of this spec (JSON-able; inverse of :func:`spec_from_entry`)."""
        if not self.has_network:
            raise ValueError(f"interpolation {self.name!r} is built in, not a manifest entry")
        entry = {"name": self.name, "kind": self.kind.value, "task": self.task, "net": self.net,
                 "weights": self.weights, "sha256": self.sha256, "net_kwargs": dict(self.net_kwargs),
                 "roi_size": list(self.roi_size), "card": self.card, "description": self.description}
        if self.xray_setup is not None:
            entry["xray_setup"] = {**asdict(self.xray_setup), "views": list(self.xray_setup.views)}
        if self.diffusion is not None:
            entry["diffusion"] = self.diffusion.to_entry()
        return entry


INTERPOLATION_DESCRIPTIONS = {"linear": "linear interpolation (baseline)",
                              "cubic": "cubic B-spline interpolation (baseline)",
                              "lanczos": "Lanczos windowed-sinc interpolation (baseline)"}
_ENTRY_FIELDS = frozenset(f.name for f in fields(ModelSpec)) - {"kind", "xray_setup", "diffusion"}


def _parse_kind(value: Any, name: str) -> ModelKind:
    allowed = ", ".join(k.value for k in MANIFEST_KINDS)
    try:
        kind = ModelKind(value)
    except ValueError:
        raise WeightsError(f"model {name!r} in {MANIFEST_NAME} has unknown kind {value!r}; "
                           f"allowed: {allowed}") from None
    if kind not in MANIFEST_KINDS:
        raise WeightsError(f"model {name!r} in {MANIFEST_NAME} has kind {kind.value!r}, which is built in, not "
                           f"shipped; allowed: {allowed}")
    return kind


def _parse_xray_setup(value: Any, name: str) -> XraySetup:
    if not isinstance(value, dict):
        raise WeightsError(f"model {name!r} in {MANIFEST_NAME}: xray_setup must be an object, got {value!r}")
    setup = dict(value)
    if "views" in setup:
        setup["views"] = tuple(setup["views"])
    try:
        return XraySetup(**setup)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"model {name!r} in {MANIFEST_NAME}: bad xray_setup ({exc})") from None


def _parse_diffusion(value: Any, name: str) -> DiffusionSettings:
    if not isinstance(value, dict):
        raise WeightsError(f"model {name!r} in {MANIFEST_NAME}: diffusion must be an object, got {value!r}")
    try:
        return DiffusionSettings(**value)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"model {name!r} in {MANIFEST_NAME}: bad diffusion settings ({exc})") from None


def spec_from_entry(entry: dict[str, Any]) -> ModelSpec:
    """The typed spec of one manifest entry.

    Older entries are read too: no ``kind`` means ``regression``; the X-ray set-up may come as
    ``"extra": {"setup": {...}}`` instead of ``"xray_setup"``.

    Raises:
        WeightsError: an unknown or built-in kind, unknown keys, or settings that do not parse.
    """
    entry = dict(entry)
    name = str(entry.get("name", "?"))
    kind = _parse_kind(entry.pop("kind", ModelKind.REGRESSION.value), name)
    extra = dict(entry.pop("extra", None) or {})
    setup = entry.pop("xray_setup", None)
    diffusion = entry.pop("diffusion", None)
    if setup is None:
        setup = extra.pop("setup", None)
    unknown = sorted(set(entry) - _ENTRY_FIELDS) + [f"extra.{k}" for k in sorted(extra)]
    if unknown:
        raise WeightsError(f"model {name!r} in {MANIFEST_NAME} has unknown keys: {', '.join(unknown)}")
    if "roi_size" in entry:
        entry["roi_size"] = tuple(entry["roi_size"])
    try:
        return ModelSpec(kind=kind, xray_setup=None if setup is None else _parse_xray_setup(setup, name),
                         diffusion=None if diffusion is None else _parse_diffusion(diffusion, name), **entry)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"model {name!r} in {MANIFEST_NAME}: {exc}") from None


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
        if entry.get("task", "sr") == task:
            spec = spec_from_entry(entry)
            specs[spec.name] = spec
    return specs, _defaults(data).get(task)


DIFFUSION_ALIAS = "diffusion"
"""The name of a task's default diffusion model."""


def _diffusion_default_key(task: str) -> str:
    return f"{task}_{DIFFUSION_ALIAS}"


def default_diffusion_model(task: str = "sr") -> str | None:
    """The name of the task's default diffusion model (``None`` when none is shipped)."""
    name = _defaults(_read_json(None)).get(_diffusion_default_key(task))
    specs, _ = read_manifest(task=task)
    return name if name in specs else None


def available_models(task: str = "sr") -> list[str]:
    """Every name ``--model`` accepts for ``task``: ``default``, ``diffusion`` (when a diffusion model is
    shipped), the shipped models and (SR) the interpolation baselines."""
    specs, default = read_manifest(task=task)
    alias = [DIFFUSION_ALIAS] if default_diffusion_model(task) else []
    return (["default"] if default else []) + alias + sorted(specs) + (list(INTERPOLATORS) if task == "sr" else [])


def resolve_model(name: str, task: str = "sr") -> ModelSpec:
    """The :class:`ModelSpec` for ``name`` (of kind ``interpolation`` for an SR baseline).

    Raises:
        InputError: unknown name (the message lists the known ones).
    """
    if task == "sr" and name in INTERPOLATORS:
        return ModelSpec.interpolation(name)
    specs, default = read_manifest(task=task)
    key = {"default": default, DIFFUSION_ALIAS: default_diffusion_model(task)}.get(name, name)
    if key is None or key not in specs:
        known = ", ".join(available_models(task)) or "none shipped"
        kind = "model" if task == "sr" else f"{task} model"
        raise InputError(f"unknown {kind} {name!r}; available: {known}")
    return specs[key]


def load_network(spec: ModelSpec, device: torch.device, folder: Path | None = None) -> nn.Module:
    """Build the network of ``spec`` and load its checked weights, in eval mode on ``device``.

    Raises:
        InputError: an interpolation (no network).
        WeightsError: the file is missing, its SHA-256 differs from the manifest, or it does not fit.
    """
    if not spec.has_network:
        raise InputError(f"model {spec.name!r} is an interpolation; it has no network")
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
               folder: Path | None = None, task: str = "sr", kind: ModelKind = ModelKind.REGRESSION,
               xray_setup: XraySetup | None = None, diffusion: DiffusionSettings | None = None) -> ModelSpec:
    """Add a trained model to the weights folder and its manifest (replacing one of the same name).

    The EMA weights of a complete training checkpoint (``checkpoints/step_*.pt`` or ``last.pt``)
    are saved as a plain state dict; the network name and arguments come from the checkpoint's
    resolved config. Files are written atomically. ``task``, ``kind``, ``xray_setup`` and ``diffusion`` are
    stored with the model (see :class:`ModelSpec`); ``default`` makes it the default of its task (for a
    ``diffusion`` model: the task's default diffusion model, the name ``diffusion``; the task's ``default``
    is left as it is).

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
                     description=description, task=task, kind=kind, xray_setup=xray_setup, diffusion=diffusion)
    data = _read_json(folder)
    entries = {e["name"]: e for e in data.get("models", [])}
    entries[name] = spec.to_entry()
    defaults = _defaults(data)
    if default:
        defaults[_diffusion_default_key(task) if kind is ModelKind.DIFFUSION else task] = name
    manifest = {"default": defaults.get("sr"), "defaults": {k: v for k, v in defaults.items() if k != "sr"},
                "models": list(entries.values())}
    with atomic_file(folder / MANIFEST_NAME) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return spec
