"""3D CT autoencoder (MONAI ``AutoencoderKL``): the latent space of the latent diffusion denoiser.

Contract:
    * ``x``: ``(B, in_channels, Z, Y, X)`` float CT in the network's intensity scale
      (:func:`ctsr_models.data.intensity.hu_to_net`: ``clip(HU, -1024, 3071) / 1000``), each of ``Z, Y, X``
      divisible by :attr:`CTAutoencoder.factor`.
    * latent ``z``: ``(B, latent_channels, Z / factor, Y / factor, X / factor)``: the posterior mean times
      :attr:`CTAutoencoder.latent_scale`, so that latents of training CT have about unit standard deviation
      (what a diffusion model on them expects).
    * reconstruction: the shape and scale of ``x``.

No attention anywhere (a convolutional autoencoder runs on any window size and costs little memory).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import AutoencoderKL
from torch import nn

from .registry import register_net


class CTAutoencoder(nn.Module):
    """A 3D KL autoencoder with a stored latent scale.

    Args:
        in_channels: image channels (1 for CT).
        channels: feature channels per level; the latent is downsampled by ``2 ** (len(channels) - 1)``
            along each axis.
        latent_channels: channels of the latent.
        num_res_blocks: residual blocks per level.
        norm_num_groups: GroupNorm groups (must divide every entry of ``channels``).
        latent_momentum: default weight of a batch in :meth:`update_latent_scale` (the training task calls
            it; ``forward`` never changes the scale).

    Attributes:
        factor: downsampling factor of the latent along each axis.
        latent_scale: 0-d float buffer (saved in the state dict): ``1 / std`` of the posterior means of
            training patches. ``encode`` multiplies by it, ``decode`` divides by it.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (16, 32), latent_channels: int = 4,
                 num_res_blocks: int = 1, norm_num_groups: int = 8, latent_momentum: float = 0.05) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if in_channels < 1 or latent_channels < 1 or num_res_blocks < 1:
            raise ValueError(f"in_channels, latent_channels and num_res_blocks must be >= 1, got {in_channels}, "
                             f"{latent_channels}, {num_res_blocks}")
        if len(channels) < 1 or min(channels) < 1:
            raise ValueError(f"channels needs at least one positive channel count, got {list(channels)}")
        if norm_num_groups < 1 or any(c % norm_num_groups for c in channels):
            raise ValueError(f"norm_num_groups ({norm_num_groups}) must divide every entry of channels {list(channels)}")
        if not 0.0 <= latent_momentum <= 1.0:
            raise ValueError(f"latent_momentum must be in [0, 1], got {latent_momentum}")
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.factor = 2 ** (len(channels) - 1)
        self.latent_momentum = float(latent_momentum)
        self.net = AutoencoderKL(spatial_dims=3, in_channels=in_channels, out_channels=in_channels,
                                 channels=channels, latent_channels=latent_channels,
                                 num_res_blocks=(num_res_blocks,) * len(channels),
                                 attention_levels=(False,) * len(channels), norm_num_groups=norm_num_groups,
                                 with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
        self.register_buffer("latent_scale", torch.tensor(1.0))

    def _check(self, x: torch.Tensor, channels: int, what: str, multiple: int) -> None:
        if x.ndim != 5 or x.shape[1] != channels or any(n % multiple for n in x.shape[2:]):
            raise ValueError(f"{what} must have shape (B, {channels}, Z, Y, X) with Z, Y, X divisible by {multiple}, "
                             f"got {tuple(x.shape)}")

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unscaled posterior of ``x``.

        Args:
            x: ``(B, in_channels, Z, Y, X)`` network scale, ``Z, Y, X`` divisible by :attr:`factor`.

        Returns:
            ``(mu, sigma)``, each ``(B, latent_channels, Z / factor, Y / factor, X / factor)``.
        """
        self._check(x, self.in_channels, "x", self.factor)
        return self.net.encode(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic latent: the posterior mean times :attr:`latent_scale`.

        Args:
            x: ``(B, in_channels, Z, Y, X)`` network scale, ``Z, Y, X`` divisible by :attr:`factor`.

        Returns:
            ``(B, latent_channels, Z / factor, Y / factor, X / factor)``.
        """
        mu, _ = self.posterior(x)
        return mu * self.latent_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Image of a scaled latent (divided by :attr:`latent_scale` first).

        Args:
            z: ``(B, latent_channels, z, y, x)`` scaled latent.

        Returns:
            ``(B, in_channels, z * factor, y * factor, x * factor)`` network scale.
        """
        self._check(z, self.latent_channels, "z", 1)
        return self.net.decode(z / self.latent_scale)

    def forward(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: a posterior sample decoded (no state changes: :attr:`latent_scale` is neither used
        nor updated here).

        Args:
            x: ``(B, in_channels, Z, Y, X)`` network scale, ``Z, Y, X`` divisible by :attr:`factor`.
            sample: decode ``mu + sigma * eps`` (``eps`` from the global torch RNG); ``False`` decodes ``mu``
                and draws no random numbers.

        Returns:
            ``(recon, mu, sigma)``: ``recon`` the shape of ``x``; ``mu`` and ``sigma`` the unscaled
            posterior, ``(B, latent_channels, Z / factor, Y / factor, X / factor)``.
        """
        # 1. posterior (B, L, Z/f, Y/f, X/f); 2. reparameterised sample; 3. decode to (B, C, Z, Y, X)
        mu, sigma = self.posterior(x)
        z = mu + sigma * torch.randn_like(sigma) if sample else mu
        recon = self.net.decode(z)
        return recon, mu, sigma

    @torch.no_grad()
    def update_latent_scale(self, mu: torch.Tensor, momentum: float | None = None) -> None:
        """Running estimate of the latent variance (like BatchNorm's): ``v <- (1 - m) v + m var(mu)`` with
        ``v = latent_scale ** -2``, then ``latent_scale = v ** -0.5``.

        Args:
            mu: unscaled posterior means of a training batch, any shape (the variance is over all of it).
            momentum: ``m`` in ``[0, 1]``, the weight of this batch (default: ``latent_momentum``).

        Raises:
            ValueError: ``momentum`` outside ``[0, 1]``.
        """
        momentum = self.latent_momentum if momentum is None else float(momentum)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"latent momentum must be in [0, 1], got {momentum}")
        var = mu.detach().float().var().clamp_min(1e-12)
        new = (1.0 - momentum) * self.latent_scale.float().pow(-2) + momentum * var
        self.latent_scale.copy_(new.rsqrt().to(self.latent_scale.dtype))

    @torch.no_grad()
    def set_latent_scale(self, std: float) -> None:
        """Set :attr:`latent_scale` to ``1 / std`` (``std``: of the unscaled posterior means).

        Raises:
            ValueError: ``std`` not positive and finite.
        """
        if not (std > 0 and std < float("inf")):
            raise ValueError(f"latent std must be positive and finite, got {std}")
        self.latent_scale.fill_(1.0 / float(std))


@register_net("autoencoder_kl")
def autoencoder_kl(in_channels: int = 1, channels: Sequence[int] = (16, 32), latent_channels: int = 4,
                   num_res_blocks: int = 1, norm_num_groups: int = 8, latent_momentum: float = 0.05) -> CTAutoencoder:
    """Build a :class:`CTAutoencoder` (see there for the arguments); registered as ``autoencoder_kl``."""
    return CTAutoencoder(in_channels=in_channels, channels=channels, latent_channels=latent_channels,
                         num_res_blocks=num_res_blocks, norm_num_groups=norm_num_groups,
                         latent_momentum=latent_momentum)
