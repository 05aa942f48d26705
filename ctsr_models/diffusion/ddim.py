"""DDIM through MONAI's ``DDIMScheduler``: a variance-preserving noise-to-data chain in a few steps.

``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; the network predicts ``eps`` (``"epsilon"``), ``x_0``
(``"sample"``) or ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (``"v_prediction"``). MONAI does the
update; this wrapper chooses the timesteps so that MONAI's step (which moves from ``t`` to
``t - T // n``) lands exactly on the next timestep and the last step on ``abar = 1`` (the clean sample):
``t_i = (n - 1 - i) k + k - 1`` with ``k = T // n`` ("trailing" spacing when ``n`` divides ``T``).
"""
from __future__ import annotations

import torch
from monai.networks.schedulers import DDIMScheduler

from .base import FewStepScheduler, check_choice, check_positive_int, per_sample

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
SCHEDULES = ("linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine")


class DDIMFewStep(FewStepScheduler):
    """DDIM (Song et al. 2021) with MONAI's noise schedules and update.

    Args:
        num_train_timesteps: ``T`` (>= 1).
        schedule: MONAI noise schedule, one of :data:`SCHEDULES`.
        prediction_type: one of :data:`PREDICTION_TYPES`.
        eta: DDIM stochasticity (0 deterministic, 1 DDPM-like), in ``[0, 1]``.
        clip_sample: clip the predicted clean sample to ``[-1, 1]`` inside MONAI's step.
    """

    name = "ddim"

    def __init__(self, num_train_timesteps: int = 1000, schedule: str = "linear_beta",
                 prediction_type: str = "epsilon", eta: float = 0.0, clip_sample: bool = False) -> None:
        super().__init__()
        check_positive_int("num_train_timesteps", num_train_timesteps)
        check_choice("schedule", schedule, SCHEDULES)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta!r}")
        self.num_train_timesteps = num_train_timesteps
        self.prediction_type = prediction_type
        self.eta = float(eta)
        # MONAI steps from the predicted clean sample: the conversion from the network output is ours
        self._monai = DDIMScheduler(num_train_timesteps, schedule=schedule, clip_sample=clip_sample,
                                    set_alpha_to_one=True, prediction_type="sample")
        self.alphas_cumprod = self._monai.alphas_cumprod.to(torch.float64)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """``t_i = (n - 1 - i) k + k - 1`` for ``i = 0..n-1``, ``k = T // n`` (1 to ``T`` steps)."""
        check_positive_int("num_inference_steps", num_inference_steps, high=self.num_train_timesteps)
        self._monai.set_timesteps(num_inference_steps)
        k = self.num_train_timesteps // num_inference_steps
        self.timesteps = torch.arange(num_inference_steps - 1, -1, -1, dtype=torch.long) * k + (k - 1)
        self._monai.timesteps = self.timesteps.clone()

    def prior_sample(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal noise of ``y``'s shape."""
        return torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  y: torch.Tensor | None = None) -> torch.Tensor:
        """``sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise`` (MONAI's ``add_noise``)."""
        return self._monai.add_noise(x0, noise, t)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                        y: torch.Tensor | None = None) -> torch.Tensor:
        """``noise``, ``x0`` or MONAI's velocity, per :attr:`prediction_type`."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        return self._monai.get_velocity(x0, noise, t)

    def predict_x0(self, model_output: torch.Tensor, t: int | torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Invert :meth:`training_target` at ``(sample, t)`` (DDIM paper eq. 12 for ``"epsilon"``)."""
        if self.prediction_type == "sample":
            return model_output
        abar = per_sample(self.alphas_cumprod, t, sample)
        if self.prediction_type == "epsilon":
            return (sample - (1 - abar).sqrt() * model_output) / abar.sqrt()
        return abar.sqrt() * sample - (1 - abar).sqrt() * model_output

    def step(self, x0_pred: torch.Tensor, t: int, sample: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """MONAI's DDIM update from ``x0_pred`` to the next inference timestep."""
        self._next_timestep(t)  # validates t
        prev, _ = self._monai.step(x0_pred, t, sample, eta=self.eta, generator=generator)
        return prev
