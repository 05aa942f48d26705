"""Schedulers by registered name: ``build_scheduler("resshift", kappa=1.0)``."""
from __future__ import annotations

from typing import Any

from .base import FewStepScheduler
from .ddim import DDIMFewStep
from .resshift import ResShiftScheduler
from .rflow import RFlowFewStep

SCHEDULERS: dict[str, type[FewStepScheduler]] = {
    cls.name: cls for cls in (ResShiftScheduler, DDIMFewStep, RFlowFewStep)
}


def build_scheduler(name: str, **kwargs: Any) -> FewStepScheduler:
    """Build the scheduler registered as ``name`` with keyword arguments.

    Raises:
        ValueError: unknown name (the message lists the registered ones), or bad arguments.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; registered: {', '.join(sorted(SCHEDULERS))}")
    try:
        return SCHEDULERS[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for scheduler {name!r}: {exc}") from exc
