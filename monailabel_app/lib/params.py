"""Request parameters of the infer tasks: declared once, described in ``/info/``, validated per request.

A client sends them as the ``params`` JSON form field of ``POST /infer/<task>``. MONAI Label merges
that JSON into the request dictionary, where the key ``model`` already names the *task*; a client's
``model`` would overwrite it. :func:`protect_reserved` therefore moves such parameters to their
request key (``model`` -> ``model_name``) before MONAI Label sees them; clients may also send the
request key directly.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ctsr_models.io.errors import InputError

from .errors import ParamError

RESERVED = {"model": "model_name"}
"""Public parameter name -> request key, for names MONAI Label uses itself."""

_TYPE_NAMES = {float: "number", int: "integer", str: "string", bool: "boolean"}


@dataclass(frozen=True)
class Param:
    """One request parameter.

    Attributes:
        name: the name clients send in ``params``.
        kind: ``float``, ``int``, ``str`` or ``bool``.
        default: value when absent or ``null``.
        description: one line for ``/info/`` and client menus.
        choices: allowed values (empty: any).
        greater_than: exclusive lower bound for numbers.
        at_most: inclusive upper bound for numbers.
        choice_error: the error for a value outside ``choices`` (e.g. ``NotFoundError`` for a model).
    """

    name: str
    kind: type
    default: Any
    description: str
    choices: tuple[Any, ...] = ()
    greater_than: float | None = None
    at_most: float | None = None
    choice_error: type[InputError] = ParamError

    @property
    def key(self) -> str:
        """The key of this parameter in MONAI Label's request dictionary."""
        return RESERVED.get(self.name, self.name)

    def describe(self) -> dict[str, Any]:
        """The ``/info/`` entry: type, default, description and limits."""
        entry: dict[str, Any] = {"type": _TYPE_NAMES[self.kind], "default": self.default,
                                 "description": self.description}
        if self.choices:
            entry["choices"] = list(self.choices)
        if self.greater_than is not None:
            entry["exclusive_minimum"] = self.greater_than
        if self.at_most is not None:
            entry["maximum"] = self.at_most
        return entry

    def parse(self, value: Any) -> Any:
        """Check and convert one value (numbers may come as JSON numbers or numeric strings).

        Raises:
            ParamError: wrong type, out of range, or not one of the choices.
        """
        if value is None:
            return self.default
        converted = self._convert(value)
        if self.choices and converted not in self.choices:
            raise self.choice_error(f"unknown {self.name} {value!r}; available: {', '.join(map(str, self.choices))}")
        if self.greater_than is not None and not converted > self.greater_than:
            raise ParamError(f"{self.name} must be greater than {self.greater_than:g}; got {value!r}")
        if self.at_most is not None and not converted <= self.at_most:
            raise ParamError(f"{self.name} must be at most {self.at_most:g}; got {value!r}")
        return converted

    def _convert(self, value: Any) -> Any:
        if self.kind is str:
            if not isinstance(value, str) or not value.strip():
                raise ParamError(f"{self.name} must be a non-empty string; got {value!r}")
            return value.strip()
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ParamError(f"{self.name} must be true or false; got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ParamError(f"{self.name} must be a number; got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ParamError(f"{self.name} must be a number; got {value!r}") from None
        if not math.isfinite(number):
            raise ParamError(f"{self.name} must be a finite number; got {value!r}")
        if self.kind is int:
            if number != int(number):
                raise ParamError(f"{self.name} must be a whole number; got {value!r}")
            return int(number)
        return number


def parse_params(request: Mapping[str, Any], specs: Sequence[Param]) -> dict[str, Any]:
    """The validated value of every declared parameter, by public name.

    Raises:
        ParamError: the first invalid value.
    """
    return {spec.name: spec.parse(request.get(spec.key)) for spec in specs}


def protect_reserved(params: Mapping[str, Any]) -> dict[str, Any]:
    """Move public parameters whose names MONAI Label reserves to their request keys.

    Raises:
        ParamError: both the public name and its request key are given, with different values.
    """
    out = dict(params)
    for name, key in RESERVED.items():
        if name not in out:
            continue
        value = out.pop(name)
        if key in out and out[key] != value:
            raise ParamError(f"give either {name} or {key}, not both with different values")
        out[key] = value
    return out


def unknown_keys(request: Mapping[str, Any], specs: Sequence[Param], known: Sequence[str]) -> list[str]:
    """Request keys that are neither declared parameters nor keys MONAI Label or its clients use."""
    declared = {spec.key for spec in specs}
    return sorted(k for k in request if k not in declared and k not in known)
