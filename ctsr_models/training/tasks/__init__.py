"""Task definitions, chosen by name: ``get_task("sr")``. Each task is a small :class:`Task` subclass
(``sr``: through-plane SR training; ``sr_adapt``: fine-tuning a shipped SR model on one scan;
``xray2ct``: biplanar X-ray to CT)."""
from __future__ import annotations

from ..config import ConfigError
from .base import Task
from .sr import SRConfig, SRTask
from .sr_adapt import SRAdaptConfig, SRAdaptTask
from .xray2ct import Xray2CTConfig, XrayToCTTask

TASKS: dict[str, type[Task]] = {SRTask.name: SRTask, SRAdaptTask.name: SRAdaptTask,
                                XrayToCTTask.name: XrayToCTTask}


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name``.

    Raises:
        ConfigError: unknown name (the message lists the known ones).
    """
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


__all__ = ["TASKS", "SRAdaptConfig", "SRAdaptTask", "SRConfig", "SRTask", "Task", "Xray2CTConfig", "XrayToCTTask",
           "get_task"]
