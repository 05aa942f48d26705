"""Typed configs: YAML mapped onto dataclasses, ``key=value`` overrides, one-line errors.

Rules:
    * Every key must be a field of the dataclass (unknown keys are refused with the allowed names and a
      close match); every value is checked against the field's type (``int``, ``float``, ``bool``,
      ``str``, ``Path``, ``Literal``, ``X | None``, ``list``, ``tuple``, ``dict``, nested dataclasses).
    * Relative paths in a YAML file are resolved against the config's *root*: the nearest folder at or
      above the file that holds ``pyproject.toml`` (the repository), else the file's own folder; so
      ``../shared/data/ct`` means the same wherever the command runs. Relative paths in command-line
      overrides are resolved against the current directory, like any command-line argument.
    * Overrides are ``dotted.key=value`` with ``value`` parsed as YAML (``trainer.lr=3e-4``,
      ``data.patch_size=[32,64,64]``, ``val.sources.0.path=/data/x.nii.gz``).
    * The resolved config (absolute paths, every default filled in) is what runs save.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the key."""


def config_root(config_path: Path) -> Path:
    """The folder relative YAML paths are resolved against (see the module docstring)."""
    folder = config_path.resolve().parent
    for candidate in (folder, *folder.parents):
        if (candidate / "pyproject.toml").is_file():
            return candidate
    return folder


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _scalar(tp: type, value: Any, where: str, base: Path | None) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, (str, Path)) and str(value):
            path = Path(os.path.expanduser(str(value)))
            return path if path.is_absolute() else Path(os.path.normpath((base or Path.cwd()) / path))
    else:
        raise TypeError(f"unsupported config field type {tp!r} at {where}")
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _convert(tp: Any, value: Any, where: str, base: Path | None) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, where, base)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {options}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: must be one of {', '.join(map(str, args))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, base)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is list:
            return [_convert(args[0], v, f"{where}[{i}]", base) for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]", base) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {list(value)!r}")
        return tuple(_convert(a, v, f"{where}[{i}]", base) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _convert(args[1] if args else Any, v, f"{where}.{k}", base) for k, v in value.items()}
    return _scalar(tp, value, where, base)


def _unknown_key(key: str, allowed: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{where}{key}'{hint}; allowed: {', '.join(allowed)}")


def from_dict(cls: type[T], data: Any, where: str = "", base: Path | None = None) -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types.

    Args:
        cls: the dataclass type.
        data: mapping of field names to values (``None`` means all defaults).
        where: dotted prefix of this mapping in the whole config, for messages.
        base: folder that relative ``Path`` values are resolved against (``None``: the current directory).

    Raises:
        ConfigError: unknown or missing keys, wrong types, or values the dataclass refuses.
    """
    data = {} if data is None else data
    label = where.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    prefix = f"{where.rstrip('.')}." if where else ""
    for key in data:
        if key not in names:
            raise _unknown_key(str(key), names, prefix)
    kwargs = {}
    for f in fields:
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], prefix + f.name, base)
        elif isinstance(f.default, Path):  # default paths are relative to the same base as given ones
            kwargs[f.name] = _convert(hints[f.name], f.default, prefix + f.name, base)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing config key '{prefix}{f.name}'")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{label}: {exc}") from None


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-able data of a config (paths as strings, tuples as lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into ``(["a", "b", "c"], parsed value)``.

    Raises:
        ConfigError: no ``=``, an empty key, or a value that is not valid YAML.
    """
    key, sep, raw = text.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(keys):
        raise ConfigError(f"override {text!r} is not key=value (e.g. trainer.lr=3e-4)")
    try:
        return keys, yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"override {text!r}: the value is not valid YAML") from None


def apply_override(data: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``value`` at the dotted ``keys`` of nested mappings and lists (in place)."""
    node: Any = data
    for depth, key in enumerate(keys[:-1]):
        label = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"override {'.'.join(keys)}: {label} is not an index of a {len(node)}-item list")
            node = node[int(key)]
        else:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {'.'.join(keys)}: {label} is a value, not a section")
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override {'.'.join(keys)}: {last} is not an index of a {len(node)}-item list")
        node[int(last)] = value
    else:
        node[last] = value


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``.

    Raises:
        ConfigError: missing file, invalid YAML, or not a mapping.
    """
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path.name} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name} must hold a mapping of sections, got {type(data).__name__}")
    return data


def build_config(cls: type[T], data: dict[str, Any] | None, base: Path | None,
                 overrides: Sequence[str] = ()) -> T:
    """Build a config from a mapping (paths relative to ``base``), then apply overrides (paths relative to
    the current directory).

    Raises:
        ConfigError: any bad key, type or value, in the mapping or in an override.
    """
    cfg = from_dict(cls, data or {}, "", base)
    if not overrides:
        return cfg
    resolved = to_dict(cfg)
    for text in overrides:
        apply_override(resolved, *parse_override(text))
    return from_dict(cls, resolved, "", None)


def load_config(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Load a YAML config file into ``cls`` and apply ``key=value`` overrides (see the module docstring).

    Raises:
        ConfigError: missing or invalid file, bad keys, types or values.
    """
    path = Path(path)
    return build_config(cls, read_yaml(path), config_root(path), overrides)


def dump_yaml(cfg: Any) -> str:
    """The config as YAML text (keys in field order)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


@dataclasses.dataclass
class ParamGroupConfig:
    """One optimizer parameter group with its own learning-rate multiplier (``trainer.param_groups[i]``).

    Attributes:
        match: a parameter-name prefix (``autoencoder`` takes ``autoencoder.*``) or, when it holds ``*``,
            ``?`` or ``[``, a glob over the full names of ``model.named_parameters()``. The first group
            that matches a parameter takes it; parameters no group takes form the default group.
        lr_mult: factor on the scheduled learning rate of these parameters (> 0).
        weight_decay: AdamW decay of these parameters (``None``: ``trainer.weight_decay``); parameters of
            rank < 2 (biases, norm scales) get none, as everywhere.
    """

    match: str
    lr_mult: float = 1.0
    weight_decay: float | None = None

    def __post_init__(self) -> None:
        if not self.match.strip():
            raise ValueError("match must name a module prefix or a glob, got ''")
        if not self.lr_mult > 0:
            raise ValueError(f"lr_mult must be > 0 (freeze modules with trainer.freeze), got {self.lr_mult}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclasses.dataclass
class FreezeConfig:
    """Modules kept frozen for the first optimizer steps (``trainer.freeze[i]``).

    Attributes:
        modules: parameter-name prefixes or globs (as :attr:`ParamGroupConfig.match`) of
            ``model.named_parameters()``.
        until_step: the parameters are frozen for optimizer steps ``0 .. until_step - 1`` (bit-identical
            weights after ``until_step`` steps) and trained from step ``until_step`` on.
    """

    modules: list[str]
    until_step: int

    def __post_init__(self) -> None:
        if not self.modules or not all(m.strip() for m in self.modules):
            raise ValueError(f"modules must list module names, got {self.modules!r}")
        if self.until_step < 1:
            raise ValueError(f"until_step must be >= 1, got {self.until_step}")


@dataclasses.dataclass
class TrainerConfig:
    """What the one trainer does, for any task (the ``trainer:`` section of every config).

    Attributes:
        steps: optimizer steps in the whole run (the learning-rate schedule spans them).
        batch_size: samples per rank per micro-step; one optimizer step sees
            ``batch_size * grad_accum * world_size`` samples.
        grad_accum: micro-steps per optimizer step (gradients are synchronised on the last only).
        lr: peak learning rate (AdamW).
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine decay after warm-up).
        warmup_steps: linear warm-up steps from 0.
        weight_decay: AdamW decoupled weight decay.
        betas: AdamW betas.
        grad_clip: clip the global gradient norm to this (0: no clipping).
        amp: ``auto`` (bf16 on GPUs that have it, fp16 with loss scaling on older GPUs, off on CPU),
            ``bf16``, ``fp16`` or ``off``.
        ema_decay: decay of the exponential moving average of the weights (0: no EMA).
        validate_ema: validate (and ship as ``model_ema.pt``) the EMA weights rather than the raw ones.
        seed: seeds Python, NumPy and torch (plus the rank for data).
        deterministic: deterministic algorithms (and no cuDNN autotuning); on CPU, runs are bitwise
            reproducible and resumable.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        num_workers: data-loading worker processes per rank.
        log_every: steps between logged (rank-averaged) losses.
        val_every: steps between validations (0: only at the end).
        ckpt_every: steps between checkpoints (``last.pt`` and a numbered copy; 0: only at the end).
        keep_checkpoints: numbered checkpoints kept (older ones are deleted; ``last.pt`` always stays).
        image_panels: validation samples shown as TensorBoard image panels.
        channels_last: channels-last-3d memory format (faster convolutions on recent GPUs).
        compile: ``torch.compile`` the model (needs a working compiler tool chain).
        tensorboard: write TensorBoard scalars and images to ``tb/``.
        param_groups: optimizer parameter groups with learning-rate multipliers (first match wins; the
            rest train at ``lr``); see :class:`ParamGroupConfig`.
        freeze: modules frozen for the first steps; see :class:`FreezeConfig`.
    """

    steps: int = 1000
    batch_size: int = 2
    grad_accum: int = 1
    lr: float = 2e-4
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    ema_decay: float = 0.999
    validate_ema: bool = True
    seed: int = 0
    deterministic: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = 2
    log_every: int = 10
    val_every: int = 500
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    image_panels: int = 2
    channels_last: bool = False
    compile: bool = False
    tensorboard: bool = True
    param_groups: list[ParamGroupConfig] = dataclasses.field(default_factory=list)
    freeze: list[FreezeConfig] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "num_workers", "val_every", "ckpt_every", "keep_checkpoints", "image_panels"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr} and {self.min_lr_ratio}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("grad_clip and weight_decay must be >= 0")
