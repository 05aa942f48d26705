"""The network registry: a component is chosen by name from a config."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

NETS: dict[str, Callable[..., nn.Module]] = {}


def register_net(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class decorator that makes a network buildable by ``name``.

    Raises:
        ValueError: the name is already taken.
    """

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in NETS:
            raise ValueError(f"network name {name!r} is already registered")
        NETS[name] = factory
        return factory

    return decorator


def build_net(name: str, **kwargs: Any) -> nn.Module:
    """Build the network registered as ``name`` with keyword arguments.

    Raises:
        ValueError: unknown name (the message lists the registered ones), or bad arguments.
    """
    if name not in NETS:
        raise ValueError(f"unknown network {name!r}; registered: {', '.join(sorted(NETS))}")
    try:
        return NETS[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for network {name!r}: {exc}") from exc
