"""Task definitions, chosen by name: ``get_task("sr")``. Each task is a small :class:`Task` subclass
(``sr``: through-plane SR training; ``sr_diffusion``: diffusion SR on the same pairs; ``sr_adapt``:
fine-tuning a shipped SR model on one scan; ``denoise``: low-dose CT denoising; ``xray2ct``: biplanar X-ray to CT)."""
from __future__ import annotations

from ..config import ConfigError
from .base import Task
from .autoencoder import AutoencoderConfig, AutoencoderTask
from .denoise import DenoiseConfig, DenoiseTask
from .ldm_denoise import LDMDenoiseConfig, LDMDenoiseTask
from .sr import SRConfig, SRTask
from .sr_adapt import SRAdaptConfig, SRAdaptTask
from .sr_diffusion import SRDiffusionConfig, SRDiffusionTask
from .xray2ct import Xray2CTConfig, XrayToCTTask

TASKS: dict[str, type[Task]] = {AutoencoderTask.name: AutoencoderTask, SRTask.name: SRTask, DenoiseTask.name: DenoiseTask, SRAdaptTask.name: SRAdaptTask,
                                SRDiffusionTask.name: SRDiffusionTask, LDMDenoiseTask.name: LDMDenoiseTask,
                                XrayToCTTask.name: XrayToCTTask}


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name``.

    Raises:
        ConfigError: unknown name (the message lists the known ones).
    """
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


__all__ = ["TASKS", "AutoencoderConfig", "AutoencoderTask", "DenoiseConfig", "DenoiseTask", "LDMDenoiseConfig", "LDMDenoiseTask", "SRAdaptConfig", "SRAdaptTask", "SRConfig", "SRDiffusionConfig", "SRDiffusionTask", "SRTask", "Task",
           "Xray2CTConfig", "XrayToCTTask", "get_task"]
