"""Rectified flow through MONAI's ``RFlowScheduler``: a straight path from noise to data.

With ``s = t / T``: ``x_t = (1 - s) x_0 + s eps`` (``t = T`` is pure noise, ``t = 0`` the clean sample).
The network predicts the velocity ``v = x_0 - eps`` (``"v_prediction"``), so ``x_0 = x_t + s v``; MONAI's
Euler step moves ``x`` by ``v (t - t_next) / T``. Inference timesteps are ``T (1 - i / n)``, ``i = 0..n-1``
(MONAI's, integers), and the last step goes to ``t = 0``, i.e. to the predicted clean sample.
"""
from __future__ import annotations

import torch
from monai.networks.schedulers import RFlowScheduler

from .base import FewStepScheduler, check_choice, check_positive_int, per_sample

SAMPLE_METHODS = ("uniform", "logit-normal")


class RFlowFewStep(FewStepScheduler):
    """Rectified flow (Liu et al. 2023) with MONAI's noise path and Euler update.

    Args:
        num_train_timesteps: ``T`` (>= 1).
        sample_method: how training draws timesteps, one of :data:`SAMPLE_METHODS`: uniform integers, or
            ``T sigmoid(loc + scale n)``, ``n ~ N(0, 1)`` (MONAI's logit-normal, Esser et al. 2024).
        loc, scale: the logit-normal's parameters (``scale > 0``).
    """

    name = "rflow"
    prediction_type = "v_prediction"

    def __init__(self, num_train_timesteps: int = 1000, sample_method: str = "uniform", loc: float = 0.0,
                 scale: float = 1.0) -> None:
        super().__init__()
        check_positive_int("num_train_timesteps", num_train_timesteps)
        check_choice("sample_method", sample_method, SAMPLE_METHODS)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.num_train_timesteps = num_train_timesteps
        self.sample_method, self.loc, self.scale = sample_method, float(loc), float(scale)
        self._monai = RFlowScheduler(num_train_timesteps, use_discrete_timesteps=True)
        self._fraction = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps

    def set_timesteps(self, num_inference_steps: int) -> None:
        """MONAI's ``T (1 - i / n)`` rounded to integers (1 to ``T`` steps)."""
        check_positive_int("num_inference_steps", num_inference_steps, high=self.num_train_timesteps)
        self._monai.set_timesteps(num_inference_steps)
        self.timesteps = self._monai.timesteps.to(torch.long)

    def sample_timesteps(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training timesteps ``(B,)`` long in ``[0, T)``, drawn by ``sample_method`` from ``generator``."""
        if self.sample_method == "uniform":
            return super().sample_timesteps(x0, generator)
        n = torch.randn((x0.shape[0],), generator=generator, device=x0.device, dtype=torch.float64)
        return (torch.sigmoid(self.loc + self.scale * n) * self.num_train_timesteps).long()

    def prior_sample(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal noise of ``y``'s shape."""
        return torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  y: torch.Tensor | None = None) -> torch.Tensor:
        """``(1 - t/T) x_0 + (t/T) noise`` (MONAI's ``add_noise``)."""
        return self._monai.add_noise(x0, noise, t)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                        y: torch.Tensor | None = None) -> torch.Tensor:
        """The velocity ``x0 - noise``."""
        return x0 - noise

    def predict_x0(self, model_output: torch.Tensor, t: int | torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """``x_t + (t / T) v``."""
        return sample + per_sample(self._fraction, t, sample) * model_output

    def step(self, x0_pred: torch.Tensor, t: int, sample: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """MONAI's Euler step with the velocity ``(x0_pred - x_t) T / t`` to the next timestep (0 after the last)."""
        nxt = max(self._next_timestep(t), 0)
        velocity = (x0_pred - sample) / float(self._fraction[t])
        prev, _ = self._monai.step(velocity, t, sample, next_timestep=nxt)
        return prev
