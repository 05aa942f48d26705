"""Task definitions, chosen by name: ``get_task("sr")``. Each task is a small :class:`Task` subclass."""
from __future__ import annotations

from ..config import ConfigError
from .base import Task
from .sr import SRConfig, SRTask

TASKS: dict[str, type[Task]] = {SRTask.name: SRTask}


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name``.

    Raises:
        ConfigError: unknown name (the message lists the known ones).
    """
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


__all__ = ["TASKS", "SRConfig", "SRTask", "Task", "get_task"]
