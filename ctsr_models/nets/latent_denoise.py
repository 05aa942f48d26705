"""The latent diffusion denoiser of low-dose CT: a 3D autoencoder and a small diffusion U-Net in its latent.

Contract (the two parts are the modules ``autoencoder`` and ``denoiser``, so a training config can freeze
one or give it its own learning rate by name):
    * ``encode(x)``: ``(B, 1, Z, Y, X)`` network units (``hu_to_net``) -> ``(B, C, Z/f, Y/f, X/f)`` latent
      (the autoencoder's posterior mean times its ``latent_scale``, about unit variance), ``f`` = ``factor``.
    * ``decode(z)``: the inverse map back to network units.
    * ``forward(z_t, timesteps, z_low)``: the denoiser. ``z_t`` ``(B, C, z, y, x)`` is the noisy latent (as the
      scheduler's ``scale_model_input`` gives it), ``timesteps`` ``(B,)`` long, ``z_low`` the latent of the
      low-dose input (the conditioning, concatenated as channels). Output: the predicted standard-dose latent
      ``z_0 = z_low + residual`` (``prediction_type = "sample"``); MONAI zero-initialises the last convolution, so
      an untrained denoiser returns the low-dose latent exactly.

Scheduler (chosen for this model, see ``docs/denoise.md``): ResShift. Its chain starts at the low-dose latent
plus a little noise and shifts the residual ``z_low - z_std`` to zero in a few steps, the design of the SR
diffusion model; the network only has to learn the noise residual, not a whole CT latent from pure noise.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from .autoencoder import CTAutoencoder
from .registry import build_net, register_net

Noising = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@register_net("ldm_denoiser")
class LatentDenoiser(nn.Module):
    """A :class:`CTAutoencoder` and a 3D ``DiffusionModelUNet`` (no attention) that denoises in its latent.

    Args:
        autoencoder: keyword arguments of the ``autoencoder_kl`` network (:mod:`.autoencoder`).
        channels: feature channels of the denoiser per level (multiples of ``norm_num_groups``); the latent
            is downsampled by 2 between levels, so its size must be a multiple of ``2 ** (len(channels) - 1)``.
        num_res_blocks: residual blocks per level.
        norm_num_groups: groups of the group normalisation.

    Attributes:
        latent_channels: ``C``, channels of the latent.
        factor: downsampling factor of the autoencoder per axis.
        multiple: image sizes ``Z, Y, X`` must be multiples of this (``factor * 2 ** (len(channels) - 1)``).
    """

    def __init__(self, autoencoder: dict[str, Any] | None = None, channels: Sequence[int] = (32, 64),
                 num_res_blocks: int = 1, norm_num_groups: int = 8) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {tuple(channels)}")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks!r}")
        if any(c % norm_num_groups for c in channels):
            raise ValueError(f"channels {tuple(channels)} must be multiples of norm_num_groups ({norm_num_groups})")
        self.autoencoder: CTAutoencoder = build_net("autoencoder_kl", **dict(autoencoder or {}))
        self.factor = int(self.autoencoder.factor)
        self.latent_channels = int(self.autoencoder.latent_channels)
        self.latent_multiple = 2 ** (len(channels) - 1)
        self.multiple = self.factor * self.latent_multiple
        c = self.latent_channels
        self.denoiser = DiffusionModelUNet(spatial_dims=3, in_channels=2 * c, out_channels=c,
                                           num_res_blocks=num_res_blocks, channels=tuple(channels),
                                           attention_levels=(False,) * len(channels),
                                           norm_num_groups=norm_num_groups)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, Z, Y, X)`` network units -> ``(B, C, Z/f, Y/f, X/f)`` scaled latent."""
        return self.autoencoder.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, C, z, y, x)`` scaled latent -> ``(B, 1, z f, y f, x f)`` network units."""
        return self.autoencoder.decode(z)

    def _check(self, z_t: torch.Tensor, timesteps: torch.Tensor, z_low: torch.Tensor) -> None:
        if z_t.ndim != 5 or z_t.shape[1] != self.latent_channels:
            raise ValueError(f"z_t must have shape (B, {self.latent_channels}, z, y, x), got {tuple(z_t.shape)}")
        if z_low.shape != z_t.shape:
            raise ValueError(f"z_low must have the shape of z_t {tuple(z_t.shape)}, got {tuple(z_low.shape)}")
        if timesteps.shape != (z_t.shape[0],):
            raise ValueError(f"timesteps must have shape ({z_t.shape[0]},), got {tuple(timesteps.shape)}")
        if any(size % self.latent_multiple for size in z_t.shape[2:]):
            raise ValueError(f"latent sizes must be multiples of {self.latent_multiple}, got {tuple(z_t.shape[2:])}")

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor, *,
                noising: Noising | None = None, decode: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """Predict the standard-dose latent; or, for training, encode, noise, predict and decode in one call
        (one ``forward``, so DDP sees every parameter that takes part).

        Args:
            x: ``(B, C, z, y, x)`` noisy latent ``z_t``; with ``noising``: ``(B, 1, Z, Y, X)`` the standard-dose
                image, network units.
            timesteps: ``(B,)`` integer timesteps.
            cond: ``(B, C, z, y, x)`` latent of the low-dose input; with ``noising``: the low-dose image.
            noising: ``noising(z_std, z_low) -> z_t`` as the network sees it (the scheduler's ``add_noise``
                then ``scale_model_input``); switches to the training pass.
            decode: training pass only: also decode the prediction and the standard-dose latent.

        Returns:
            ``(B, C, z, y, x)`` predicted ``z_0``; with ``noising`` a dict: ``z0`` that prediction, ``z_std``
            the target latent, and with ``decode`` ``image`` (decoded ``z0``) and ``recon`` (decoded ``z_std``),
            ``(B, 1, Z, Y, X)``.
        """
        if noising is None:
            return self._denoise(x, timesteps, cond)
        # 1. latents of both images (B, C, z, y, x); no graph through a frozen autoencoder
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.autoencoder_trains):
            z_std, z_low = self.encode(x), self.encode(cond)
        # 2. the noisy latent and the denoiser's prediction of z_std
        z0 = self._denoise(noising(z_std, z_low), timesteps, z_low)
        out = {"z0": z0, "z_std": z_std}
        # 3. back to images (B, 1, Z, Y, X) for image-space losses
        if decode:
            out["image"], out["recon"] = self.decode(z0), self.decode(z_std)
        return out

    @property
    def autoencoder_trains(self) -> bool:
        """Whether any autoencoder parameter takes gradients now (False while frozen)."""
        return any(p.requires_grad for p in self.autoencoder.parameters())

    def _denoise(self, z_t: torch.Tensor, timesteps: torch.Tensor, z_low: torch.Tensor) -> torch.Tensor:
        # 1. shapes: z_t and z_low (B, C, z, y, x), timesteps (B,)
        self._check(z_t, timesteps, z_low)
        # 2. noisy latent and conditioning side by side: (B, 2C, z, y, x)
        inputs = torch.cat([z_t, z_low], dim=1)
        # 3. the residual the low-dose latent lacks, modulated by the timestep embedding: (B, C, z, y, x)
        residual = self.denoiser(inputs, timesteps)
        # 4. z0 = z_low + residual
        return z_low + residual
