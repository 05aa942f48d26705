"""The network intensity scale of CT: HU clipped to the metric range, divided by 1000.

``net = clip(HU, -1024, 3071) / 1000`` puts air at about -1, water at 0 and dense bone near 1-3, so
soft-tissue contrast keeps its full float precision; ``HU = net * 1000`` inverts it. The clip range is
the one the metrics use (:mod:`ctsr_models.metrics`), so clipping loses nothing that is scored.
"""
from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from ctsr_models.metrics import HU_MAX, HU_MIN

HU_SCALE = 1000.0

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def hu_to_net(hu: ArrayT) -> ArrayT:
    """HU (any shape, numpy or torch) -> network scale, ``clip(hu, -1024, 3071) / 1000``."""
    if isinstance(hu, torch.Tensor):
        return hu.clamp(HU_MIN, HU_MAX) / HU_SCALE
    return (np.clip(hu, HU_MIN, HU_MAX) / HU_SCALE).astype(np.float32)


def net_to_hu(net: ArrayT) -> ArrayT:
    """Network scale -> HU (``net * 1000``); no clipping, so a model's overshoot stays visible."""
    if isinstance(net, torch.Tensor):
        return net * HU_SCALE
    return (np.asarray(net) * HU_SCALE).astype(np.float32)
