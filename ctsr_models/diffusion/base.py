"""The scheduler interface every noise schedule implements, and its shared argument checks.

Conventions shared by every scheduler:
    * Tensors are ``(B, C, *spatial)`` (3D volumes: ``(B, C, D, H, W)``), in the network's intensity scale.
    * Timesteps are integers in ``[0, num_train_timesteps]``; :attr:`FewStepScheduler.timesteps` is a 1D
      ``torch.long`` tensor in strictly descending order (noisiest first) after :meth:`set_timesteps`.
    * The network's raw output has the meaning :attr:`FewStepScheduler.prediction_type` names;
      :meth:`predict_x0` turns it into a predicted clean sample, and :meth:`step` always steps from a
      predicted clean sample, so one place (the sampling loop) can enforce a constraint on it.
    * ``y`` is the low-quality estimate of the clean sample (resampled thick input or regression output).
      Residual shifting starts its chain there; the noise-to-data schedulers only take its shape.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch


def check_positive_int(name: str, value: int, low: int = 1, high: int | None = None) -> None:
    """Raise ``ValueError`` unless ``low <= value <= high`` for an ``int`` ``value``."""
    upper = "" if high is None else f" and <= {high}"
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an int >= {low}{upper}, got {value!r}")


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` listing ``allowed`` unless ``value`` is one of them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def per_sample(values: torch.Tensor, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Look up ``values[t]`` and shape it to broadcast against ``like``.

    Args:
        values: 1D table indexed by timestep.
        t: one timestep (int) or ``(B,)`` timesteps, one per batch element.
        like: ``(B, C, *spatial)`` tensor whose dtype, device and rank the result takes.

    Returns:
        a 0D tensor for an int ``t``, else ``(B, 1, ..., 1)`` with ``like.ndim`` dimensions.
    """
    table = values.to(device=like.device, dtype=like.dtype)
    if isinstance(t, int):
        return table[t]
    index = t.to(device=like.device, dtype=torch.long)
    if index.ndim != 1 or index.shape[0] != like.shape[0]:
        raise ValueError(f"timesteps must have shape ({like.shape[0]},), got {tuple(t.shape)}")
    return table[index].reshape(-1, *([1] * (like.ndim - 1)))


class FewStepScheduler(ABC):
    """Noise maths of one diffusion / flow process, stepped in a few inference steps.

    Attributes:
        name: the registered name.
        prediction_type: what the network is trained to output (``"sample"``, ``"epsilon"`` or
            ``"v_prediction"``); :meth:`training_target` makes it, :meth:`predict_x0` inverts it.
        num_train_timesteps: number of discrete training timesteps.
        timesteps: ``(n,)`` long, descending; empty until :meth:`set_timesteps`.
    """

    name: str = ""
    prediction_type: str = "sample"
    num_train_timesteps: int

    def __init__(self) -> None:
        self.timesteps = torch.empty(0, dtype=torch.long)

    @abstractmethod
    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose the ``num_inference_steps`` timesteps the sampling loop visits (noisiest first)."""

    @abstractmethod
    def prior_sample(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw the start of the chain: one standard normal tensor of ``y``'s shape, transformed.

        Args:
            y: ``(B, C, *spatial)`` low-quality estimate (shape, dtype and device of the result).
            generator: random source; the same seeded generator gives the same tensor.
        """

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  y: torch.Tensor | None = None) -> torch.Tensor:
        """Sample ``x_t ~ q(x_t | x_0, y)`` in closed form.

        Args:
            x0: ``(B, C, *spatial)`` clean samples.
            noise: standard normal tensor of the same shape.
            t: ``(B,)`` integer timesteps.
            y: ``(B, C, *spatial)`` low-quality estimates (needed by residual shifting only).
        """

    @abstractmethod
    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                        y: torch.Tensor | None = None) -> torch.Tensor:
        """What the network should output for ``add_noise(x0, noise, t, y)``, per :attr:`prediction_type`."""

    @abstractmethod
    def predict_x0(self, model_output: torch.Tensor, t: int | torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Turn the network's raw output at ``(sample, t)`` into a predicted clean sample."""

    @abstractmethod
    def step(self, x0_pred: torch.Tensor, t: int, sample: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Move ``sample`` from timestep ``t`` to the next (less noisy) one of :attr:`timesteps`.

        Args:
            x0_pred: ``(B, C, *spatial)`` predicted (possibly constrained) clean sample.
            t: a member of :attr:`timesteps`.
            sample: ``(B, C, *spatial)`` the current ``x_t``.
            generator: random source for stochastic steps.

        Returns:
            ``x`` at the next timestep; after the last timestep, the clean sample itself.
        """

    def sample_timesteps(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training timesteps, one per batch element: uniform integers in ``[0, num_train_timesteps)``.

        Args:
            x0: ``(B, C, *spatial)`` clean batch (batch size and device of the result).
            generator: random source, on ``x0``'s device.

        Returns:
            ``(B,)`` long.
        """
        return torch.randint(0, self.num_train_timesteps, (x0.shape[0],), generator=generator, device=x0.device)

    def scale_model_input(self, sample: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """The network input for ``sample`` at ``t`` (identity unless a scheduler says otherwise)."""
        return sample

    def _next_timestep(self, t: int) -> int:
        """The timestep after ``t`` in :attr:`timesteps`, or ``-1`` after the last one."""
        if self.timesteps.numel() == 0:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        positions = (self.timesteps == t).nonzero()
        if positions.numel() != 1:
            raise ValueError(f"timestep {t} is not one of the inference timesteps {self.timesteps.tolist()}")
        index = int(positions[0, 0]) + 1
        return int(self.timesteps[index]) if index < self.timesteps.numel() else -1
