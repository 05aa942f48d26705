"""The hooks a task gives the trainer: its config, data, model, loss and validation."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ctsr_models.data import VolumeSource, matched_paths
from ctsr_models.nets import build_net

from ..config import ConfigError, TrainerConfig


def check_sources_and_net(train: list[VolumeSource], val: list[VolumeSource], net_name: str,
                          net_kwargs: dict[str, Any]) -> nn.Module:
    """The checks of a volume-based task: training sources given, every source matches files, the network builds.

    Returns:
        The network built from ``net_name`` and ``net_kwargs`` (for further checks).

    Raises:
        ConfigError: one line naming the config entry.
    """
    if not train:
        raise ConfigError("data.train lists no sources: give at least one volume, folder, ZIP or glob")
    for i, source in enumerate(train):
        matched_paths(source, f"data.train[{i}]")
    for i, source in enumerate(val):
        matched_paths(source, f"val.sources[{i}]")
    try:
        return build_net(net_name, **net_kwargs)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None


class Task(ABC):
    """One kind of training (SR, and later denoising, X-ray to CT, diffusion), as small hook methods.

    A subclass sets :attr:`name`, :attr:`config_class` (a dataclass with a ``trainer:``
    :class:`~ctsr_models.training.config.TrainerConfig` field) and :attr:`val_metrics`, and implements
    the hooks. The trainer owns everything else (devices, DDP, AMP, EMA, checkpoints, logging).

    Args:
        cfg: the resolved config, an instance of :attr:`config_class`.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    val_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @property
    def trainer_cfg(self) -> TrainerConfig:
        """The ``trainer:`` section."""
        return self.cfg.trainer

    def check(self) -> None:
        """Fast checks before any process group starts (data paths exist, settings fit together).

        Raises:
            InputError or ConfigError: with one line a person can act on.
        """

    def prepare(self) -> None:
        """Load or build what the datasets need (e.g. decode volumes into a cache); runs on every rank
        before the process group starts, so its errors are one clean line too."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The network to train (on the CPU, freshly initialised from the seeded torch RNG)."""

    @abstractmethod
    def train_dataset(self, rank: int) -> Dataset:
        """Training examples: a map-style dataset whose item ``i`` is fixed by ``(seed, rank, i)``."""

    def val_dataset(self) -> Dataset | None:
        """Validation samples (a fixed, finite list), or ``None`` for no validation."""
        return None

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar training loss of a batch already on the device (called under autocast)."""

    @abstractmethod
    def val_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[dict[str, float]]:
        """Metrics of each sample of a validation batch (keys from :attr:`val_metrics`; NaN if undefined)."""

    def panels(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Images ``(H, W)`` in ``[0, 1]`` for TensorBoard from one validation sample (default: none)."""
        return {}

    @abstractmethod
    def flops_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[Any, ...]:
        """Positional model inputs of one sample of ``batch``, for counting FLOPs."""
