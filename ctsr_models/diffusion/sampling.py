"""The one sampling loop: network + scheduler + conditioning -> a clean sample."""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from tqdm import tqdm

from .base import FewStepScheduler

log = logging.getLogger(__name__)

NetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Constrain = Callable[[torch.Tensor, int], torch.Tensor]


@torch.no_grad()
def sample(net_fn: NetFn, scheduler: FewStepScheduler, y: torch.Tensor, cond: torch.Tensor, steps: int,
           generator: torch.Generator | None = None, constrain: Constrain | None = None,
           progress: bool = False) -> torch.Tensor:
    """Draw one sample per batch element in ``steps`` network evaluations.

    Each step: 1. the network sees ``scheduler.scale_model_input(x_t, t)``, the ``(B,)`` timesteps and
    ``cond``; 2. its output becomes a predicted clean sample (``predict_x0``); 3. ``constrain`` (e.g. data
    consistency with the acquired slabs) replaces that prediction; 4. the scheduler steps from it. The
    last step returns the last constrained prediction itself, so a constraint holds on the result.

    Args:
        net_fn: ``net_fn(x, t, cond) -> output`` with ``x`` ``(B, C, D, H, W)``, ``t`` ``(B,)`` long and the
            output in the scheduler's ``prediction_type``, shape of ``x``.
        scheduler: the noise maths.
        y: ``(B, C, D, H, W)`` low-quality estimate of the result (start of residual shifting; shape,
            dtype and device of the result for every scheduler).
        cond: ``(B, C_cond, D, H, W)`` conditioning channels handed to ``net_fn`` unchanged.
        steps: number of inference steps (network evaluations).
        generator: random source; the same seed gives the same sample.
        constrain: ``constrain(x0_pred, t) -> x0_pred`` applied to every predicted clean sample.
        progress: show a progress bar.

    Returns:
        ``(B, C, D, H, W)`` the sample.
    """
    if cond.shape[0] != y.shape[0] or cond.shape[2:] != y.shape[2:]:
        raise ValueError(f"cond {tuple(cond.shape)} must match y {tuple(y.shape)} in batch and spatial size")
    scheduler.set_timesteps(steps)
    x = scheduler.prior_sample(y, generator)
    for t in tqdm(scheduler.timesteps.tolist(), desc=f"{scheduler.name} sampling", disable=not progress):
        t_batch = torch.full((y.shape[0],), t, dtype=torch.long, device=y.device)
        out = net_fn(scheduler.scale_model_input(x, t), t_batch, cond)
        x0_pred = scheduler.predict_x0(out, t, x)
        if constrain is not None:
            x0_pred = constrain(x0_pred, t)
        x = scheduler.step(x0_pred, t, x, generator)
    log.debug("sampled %s with %s in %d steps", tuple(y.shape), scheduler.name, steps)
    return x
