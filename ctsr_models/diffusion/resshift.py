"""ResShift: residual shifting between the clean sample and its low-quality estimate in a few steps.

Yue et al. 2023, "ResShift: Efficient Diffusion Model for Image Super-resolution by Residual Shifting".
With ``e_0 = y_0 - x_0`` (the residual), paper timestep ``t = 1..T`` stored at index ``i = t - 1``:

    * marginal:   ``x_t = x_0 + eta_t e_0 + kappa sqrt(eta_t) eps``, ``eps ~ N(0, I)``;
    * schedule:   ``sqrt(eta_t) = sqrt(eta_1) b_0 ** beta_t``, ``beta_t = ((t-1)/(T-1)) ** p (T-1)``,
      ``b_0 = exp(log(eta_T / eta_1) / (2 (T-1)))``, so ``eta_1 < ... < eta_T`` with both ends exact;
    * posterior:  ``q(x_s | x_t, x_0) = N(eta_s/eta_t x_t + a/eta_t x_0, kappa^2 eta_s/eta_t a I)``,
      ``a = eta_t - eta_s``, for any ``s < t`` (``s = t - 1`` in the paper; ``eta_0 = 0`` ends at ``x_0``);
    * prior:      ``x_T = y_0 + kappa sqrt(eta_T) eps``.

The network predicts ``x_0`` (``prediction_type = "sample"``).
"""
from __future__ import annotations

import math

import torch

from .base import FewStepScheduler, check_positive_int, per_sample

MAX_STEPS = 15


def eta_schedule(num_steps: int, eta_1: float, eta_t: float, power: float) -> torch.Tensor:
    """The ResShift eta schedule.

    Args:
        num_steps: ``T`` (>= 2).
        eta_1: first value, ``0 < eta_1 < eta_t``.
        eta_t: last value ``eta_T``, ``< 1``.
        power: ``p`` (> 0); smaller values spend more steps near ``eta_T``.

    Returns:
        ``(T,)`` float64, ``eta[i] = eta_{i+1}``.
    """
    t = torch.arange(1, num_steps + 1, dtype=torch.float64)
    beta = ((t - 1) / (num_steps - 1)) ** power * (num_steps - 1)
    b0 = math.exp(math.log(eta_t / eta_1) / (2 * (num_steps - 1)))
    sqrt_eta = math.sqrt(eta_1) * b0**beta
    return sqrt_eta**2


class ResShiftScheduler(FewStepScheduler):
    """Residual-shifting noise maths (see the module docstring for the equations).

    Args:
        num_train_timesteps: ``T``, 2 to :data:`MAX_STEPS`.
        kappa: noise scale ``kappa`` (> 0), in the network's intensity units.
        eta_1: first eta; ``None`` takes the paper's ``min((0.04 / kappa) ** 2, 0.001)``.
        eta_T: last eta, ``eta_1 < eta_T < 1``.
        power: schedule exponent ``p`` (> 0).
        normalize_input: divide the network input ``x_t`` by ``sqrt(1 + kappa^2 eta_t)`` (its standard
            deviation for unit-variance data), as the paper's implementation does.
    """

    name = "resshift"
    prediction_type = "sample"

    def __init__(self, num_train_timesteps: int = MAX_STEPS, kappa: float = 2.0, eta_1: float | None = None,
                 eta_T: float = 0.99, power: float = 0.3, normalize_input: bool = True) -> None:  # noqa: N803
        super().__init__()
        check_positive_int("num_train_timesteps", num_train_timesteps, low=2, high=MAX_STEPS)
        if not kappa > 0:
            raise ValueError(f"kappa must be > 0, got {kappa!r}")
        eta_1 = min((0.04 / kappa) ** 2, 0.001) if eta_1 is None else eta_1
        if not 0 < eta_1 < eta_T < 1:
            raise ValueError(f"need 0 < eta_1 < eta_T < 1, got eta_1={eta_1!r}, eta_T={eta_T!r}")
        if not power > 0:
            raise ValueError(f"power must be > 0, got {power!r}")
        self.num_train_timesteps = num_train_timesteps
        self.kappa = float(kappa)
        self.normalize_input = normalize_input
        self.etas = eta_schedule(num_train_timesteps, float(eta_1), float(eta_T), float(power))

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Visit ``num_inference_steps`` (1 to ``T``) indices evenly spread from ``T - 1`` down to ``0``."""
        check_positive_int("num_inference_steps", num_inference_steps, high=self.num_train_timesteps)
        last = self.num_train_timesteps - 1
        self.timesteps = torch.linspace(last, 0, num_inference_steps, dtype=torch.float64).round().long()

    def prior_sample(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x_T = y + kappa sqrt(eta_T) eps``."""
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        return y + self.kappa * math.sqrt(float(self.etas[-1])) * noise

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  y: torch.Tensor | None = None) -> torch.Tensor:
        """``x_t = x_0 + eta_t (y - x_0) + kappa sqrt(eta_t) noise`` (``t`` are indices ``0..T-1``)."""
        if y is None:
            raise ValueError("residual shifting needs y, the low-quality estimate of x0")
        eta = per_sample(self.etas, t, x0)
        return x0 + eta * (y - x0) + self.kappa * eta.sqrt() * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                        y: torch.Tensor | None = None) -> torch.Tensor:
        """The clean sample ``x_0``."""
        return x0

    def predict_x0(self, model_output: torch.Tensor, t: int | torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The network predicts ``x_0`` directly."""
        return model_output

    def scale_model_input(self, sample: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """``x_t / sqrt(1 + kappa^2 eta_t)`` when ``normalize_input``, else ``x_t``."""
        if not self.normalize_input:
            return sample
        return sample / (1 + self.kappa**2 * per_sample(self.etas, t, sample)).sqrt()

    def step(self, x0_pred: torch.Tensor, t: int, sample: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``x_s ~ q(x_s | x_t, x0_pred)``, ``s`` the next inference timestep (``eta_s = 0`` after the last)."""
        prev = self._next_timestep(t)
        eta_t = float(self.etas[t])
        eta_s = float(self.etas[prev]) if prev >= 0 else 0.0
        alpha = eta_t - eta_s
        mean = (eta_s / eta_t) * sample + (alpha / eta_t) * x0_pred
        if prev < 0:
            return mean
        noise = torch.randn(sample.shape, generator=generator, dtype=sample.dtype, device=sample.device)
        return mean + self.kappa * math.sqrt(eta_s / eta_t * alpha) * noise
