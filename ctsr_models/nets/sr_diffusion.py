"""The 3D denoiser of diffusion super-resolution: MONAI's ``DiffusionModelUNet`` with channel conditioning.

Contract:
    * ``x``: ``(B, 1, D, H, W)`` the noisy sample ``x_t`` (as the scheduler's ``scale_model_input`` gives it),
      in the network's intensity scale; ``D`` is the through-plane axis.
    * ``timesteps``: ``(B,)`` long, the scheduler's timesteps (ResShift indices ``0..T-1``, DDIM / rectified
      flow ``0..1000``), embedded sinusoidally by MONAI.
    * ``cond``: ``(B, C_cond, D, H, W)`` conditioning channels on the same grid: channel 0 the thick input
      linearly resampled onto the thin grid; optionally channel 1 the regression network's output. The last
      channel is the *reference*, the best estimate the network refines.
    * output: ``(B, 1, D, H, W)`` ``reference + residual``, i.e. a prediction of the clean sample ``x_0``
      (``prediction_type = "sample"``, what ResShift expects) written as the detail the reference lacks.
      MONAI zero-initialises the last convolution, so an untrained network returns the reference exactly.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from .registry import register_net


@register_net("sr_diffusion_unet")
class SRDiffusionUNet(nn.Module):
    """Small 3D diffusion U-Net predicting ``x_0`` as a residual over the last conditioning channel.

    Args:
        cond_channels: number of conditioning channels (1: resampled input; 2: plus the regression output).
        channels: feature channels per level, each a multiple of ``norm_num_groups``; the input is
            downsampled by 2 between levels, so ``D, H, W`` must be multiples of ``2 ** (len(channels) - 1)``.
        num_res_blocks: residual blocks per level.
        attention_levels: self-attention per level (``False`` everywhere by default: 3D attention is costly).
        norm_num_groups: groups of the group normalisation.
        num_head_channels: channels per attention head where attention is on.
    """

    def __init__(self, cond_channels: int = 2, channels: Sequence[int] = (16, 32, 64), num_res_blocks: int = 1,
                 attention_levels: Sequence[bool] | None = None, norm_num_groups: int = 8,
                 num_head_channels: int = 8) -> None:
        super().__init__()
        if not isinstance(cond_channels, int) or cond_channels < 1:
            raise ValueError(f"cond_channels must be an int >= 1, got {cond_channels!r}")
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {tuple(channels)}")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks!r}")
        levels = tuple(attention_levels) if attention_levels is not None else (False,) * len(channels)
        self.cond_channels = cond_channels
        self.multiple = 2 ** (len(channels) - 1)
        self.unet = DiffusionModelUNet(spatial_dims=3, in_channels=1 + cond_channels, out_channels=1,
                                       num_res_blocks=num_res_blocks, channels=tuple(channels),
                                       attention_levels=levels, norm_num_groups=norm_num_groups,
                                       num_head_channels=num_head_channels)

    def _check(self, x: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"x must have shape (B, 1, D, H, W), got {tuple(x.shape)}")
        if cond.shape != (x.shape[0], self.cond_channels, *x.shape[2:]):
            raise ValueError(f"cond must have shape (B, {self.cond_channels}, D, H, W) = "
                             f"{(x.shape[0], self.cond_channels, *x.shape[2:])}, got {tuple(cond.shape)}")
        if timesteps.shape != (x.shape[0],):
            raise ValueError(f"timesteps must have shape ({x.shape[0]},), got {tuple(timesteps.shape)}")
        if any(size % self.multiple for size in x.shape[2:]):
            raise ValueError(f"D, H, W must be multiples of {self.multiple}, got {tuple(x.shape[2:])}")

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predict the clean sample.

        Args:
            x: ``(B, 1, D, H, W)`` noisy sample.
            timesteps: ``(B,)`` integer timesteps.
            cond: ``(B, C_cond, D, H, W)`` conditioning; the last channel is the reference.

        Returns:
            ``(B, 1, D, H, W)`` predicted ``x_0``.
        """
        # 1. shapes: x (B, 1, D, H, W), cond (B, C_cond, D, H, W), timesteps (B,)
        self._check(x, timesteps, cond)
        # 2. the noisy sample and its conditioning side by side: (B, 1 + C_cond, D, H, W)
        inputs = torch.cat([x, cond], dim=1)
        # 3. the detail the reference lacks, modulated by the timestep embedding: (B, 1, D, H, W)
        residual = self.unet(inputs, timesteps)
        # 4. x0 = reference + detail
        return cond[:, -1:] + residual
