"""The one trainer and its tasks: DDP through ``torchrun`` (NCCL on GPU, gloo on CPU) or one plain
process, AMP, gradient accumulation and clipping, EMA weights, warm-up + cosine schedule, complete
atomic checkpoints with exact resume, validation split across ranks, TensorBoard and a JSON summary.

Entry point: :func:`run` (the ``python -m train`` CLI is a thin layer over it). Tasks (``sr``) are
:class:`Task` subclasses registered in :data:`TASKS`. Per-scan adaptation (:mod:`.adapt`) runs the
``sr_adapt`` task in memory and hands inference the network it made.
"""
from __future__ import annotations

from .adapt import AdaptOptions, AdaptResult, adapt_network, enhance_adapted, load_adapted, save_adapted
from .checkpoint import load_checkpoint
from .config import ConfigError, TrainerConfig, build_config, dump_yaml, load_config, to_dict
from .distributed import DistInfo
from .runner import run
from .tasks import TASKS, SRConfig, SRTask, Task, get_task
from .trainer import Trainer, param_digest

__all__ = [
    "TASKS", "AdaptOptions", "AdaptResult", "adapt_network", "enhance_adapted", "load_adapted", "save_adapted", "ConfigError", "DistInfo", "SRConfig", "SRTask", "Task", "Trainer", "TrainerConfig", "build_config",
    "dump_yaml", "get_task", "load_checkpoint", "load_config", "param_digest", "run", "to_dict",
]
