"""Throughput accounting: model FLOPs per sample and model FLOP utilisation (MFU) on GPUs.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` on one forward pass of a copy
of the model and multiplied by 3 for forward + backward (the usual estimate: the backward pass costs
about twice the forward). MFU divides the achieved model FLOP/s by the dense bf16/fp16 tensor-core
peak of the GPU (from the table below, or ``CTSR_PEAK_TFLOPS`` when set).
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)

# dense bf16/fp16 tensor-core peaks (TFLOP/s) by a substring of torch.cuda.get_device_name()
PEAK_TFLOPS = {"H200": 989.5, "H100": 989.5, "GH200": 989.5, "A100": 312.0, "A10G": 70.0, "L40S": 362.0,
               "L4": 121.0, "A6000": 154.8, "4090": 165.2, "3090": 71.0, "V100": 125.0, "T4": 65.0}


def flops_per_sample(model: nn.Module, inputs: tuple[Any, ...]) -> float | None:
    """Estimated training FLOPs (forward + backward) of one sample.

    Args:
        model: the network (not wrapped); a deep copy is measured, the model itself is untouched.
        inputs: positional inputs for one sample (batch size 1).

    Returns:
        ``3 x`` the forward FLOPs, or ``None`` when counting fails.
    """
    try:
        probe = copy.deepcopy(model)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            probe(*inputs)
        return 3.0 * float(counter.get_total_flops())
    except Exception as exc:  # counting is a report, never a reason to stop training
        log.warning("FLOP counting failed: %s", exc)
        return None


def peak_tflops(device: torch.device) -> float | None:
    """Dense tensor-core peak of ``device`` in TFLOP/s, ``None`` on the CPU or an unknown GPU."""
    if os.environ.get("CTSR_PEAK_TFLOPS"):
        return float(os.environ["CTSR_PEAK_TFLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def throughput_report(flops: float | None, samples_per_s: float, world_size: int,
                      device: torch.device) -> dict[str, float | None]:
    """``achieved_tflops`` (all ranks) and ``mfu`` (per GPU, 0-1; ``None`` on the CPU)."""
    if flops is None or samples_per_s <= 0:
        return {"flops_per_sample": flops, "achieved_tflops": None, "peak_tflops_per_device": None, "mfu": None}
    achieved = flops * samples_per_s / 1e12
    peak = peak_tflops(device)
    return {"flops_per_sample": flops, "achieved_tflops": achieved, "peak_tflops_per_device": peak,
            "mfu": None if peak is None else achieved / (peak * world_size)}
