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

Residual autoencoding (``shortcut=True``, the space-to-channel shortcut of DC-AE, Chen et al. 2024, here with
an orthonormal basis): the posterior mean is ``B · s2c(x)`` plus the encoder's output, and the reconstruction
is ``c2s(Bᵀ z)`` plus the decoder's output, where ``s2c`` puts each ``f × f × f`` block of voxels into
``f³`` channels and ``B`` holds the ``latent_channels`` lowest-frequency rows of the separable orthonormal
DCT-II of size ``f`` (for ``f = 2``: the 3D Haar transform; the block mean and the three first-order
differences). The encoder's ``quant_conv_mu`` and the decoder's last convolution start at zero, so an
untrained network reconstructs exactly the projection of ``x`` on that linear code: on held-out real CT
45.9 to 49.3 dB for ``f = 2`` and 4 channels, the best any linear code of that size reaches (block PCA
of real CT finds the same basis). The networks then learn only what the linear code misses.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
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
        shortcut: residual autoencoding with the orthonormal space-to-channel shortcut (module docstring);
            needs ``latent_channels <= factor ** 3``.

    Attributes:
        factor: downsampling factor of the latent along each axis.
        latent_scale: 0-d float buffer (saved in the state dict): ``1 / std`` of the posterior means of
            training patches. ``encode`` multiplies by it, ``decode`` divides by it.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (16, 32), latent_channels: int = 4,
                 num_res_blocks: int = 1, norm_num_groups: int = 8, latent_momentum: float = 0.05,
                 shortcut: bool = False) -> None:
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
        self.shortcut = bool(shortcut)
        if self.shortcut:
            if latent_channels > self.factor ** 3 * in_channels:
                raise ValueError(f"a shortcut keeps at most factor**3 * in_channels = "
                                 f"{self.factor ** 3 * in_channels} channels, got latent_channels {latent_channels}")
            self.register_buffer("basis", torch.from_numpy(block_basis(self.factor, latent_channels, in_channels)),
                                 persistent=False)
            self._start_as_linear_code()

    @torch.no_grad()
    def _start_as_linear_code(self) -> None:
        """Zero the encoder's mean head and the decoder's last convolution; a tiny posterior sigma."""
        for conv in (self.net.quant_conv_mu.conv, self.net.decoder.blocks[-1].conv):
            conv.weight.zero_()
            conv.bias.zero_()
        self.net.quant_conv_log_sigma.conv.weight.zero_()
        self.net.quant_conv_log_sigma.conv.bias.fill_(_LOG_VAR_START)

    def _s2c(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, Z, Y, X)`` -> ``(B, C f^3, Z/f, Y/f, X/f)``, channel ``c f^3 + (i f + j) f + k`` = voxel
        ``(i, j, k)`` of each block of channel ``c``."""
        b, c, z, y, x_ = x.shape
        f = self.factor
        x = x.reshape(b, c, z // f, f, y // f, f, x_ // f, f).permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, c * f ** 3, z // f, y // f, x_ // f)

    def _c2s(self, v: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`_s2c`."""
        b, cf, z, y, x = v.shape
        f = self.factor
        c = cf // f ** 3
        v = v.reshape(b, c, f, f, f, z, y, x).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return v.reshape(b, c, z * f, y * f, x * f)

    def linear_code(self, x: torch.Tensor) -> torch.Tensor:
        """The shortcut's latent ``B · s2c(x)``, ``(B, latent_channels, Z/f, Y/f, X/f)``."""
        return torch.einsum("lk,bkzyx->blzyx", self.basis.to(x.dtype), self._s2c(x))

    def linear_image(self, z: torch.Tensor) -> torch.Tensor:
        """The shortcut's image of an unscaled latent, ``c2s(Bᵀ z)``."""
        return self._c2s(torch.einsum("lk,blzyx->bkzyx", self.basis.to(z.dtype), z))

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
        mu, sigma = self.net.encode(x)
        return (mu + self.linear_code(x), sigma) if self.shortcut else (mu, sigma)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """Image of an unscaled latent: the decoder's output (plus the shortcut's image)."""
        out = self.net.decode(z)
        return out + self.linear_image(z) if self.shortcut else out

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
        return self._decode(z / self.latent_scale)

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
        recon = self._decode(z)
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


#: initial log-variance of the posterior with a shortcut: sigma = exp(-7) ~ 1e-3 network units (~1 HU), so the
#: first reparameterised samples do not drown the linear code (the KL weight is tiny, as in latent diffusion)
_LOG_VAR_START = -14.0


def block_basis(factor: int, rows: int, in_channels: int = 1) -> np.ndarray:
    """The ``rows`` lowest-frequency rows of the separable orthonormal DCT-II of ``factor³`` blocks.

    Rows are ordered by the sum of the three frequency indices (then lexicographically), so for ``factor = 2``
    the first four are the block mean and the first-order differences along x, y and z (3D Haar). With several
    input channels each row acts on one channel, and rows are taken frequency by frequency across the channels
    (all channels' block means first).

    Returns:
        ``(rows, in_channels * factor**3)`` float32 with orthonormal rows.
    """
    n = np.arange(factor)
    dct = np.sqrt(2.0 / factor) * np.cos(np.pi * (n[None, :] + 0.5) * n[:, None] / factor)
    dct[0] /= math.sqrt(2.0)
    freqs = sorted(((i, j, k) for i in n for j in n for k in n), key=lambda t: (sum(t), t))
    single = np.stack([np.kron(np.kron(dct[i], dct[j]), dct[k]) for i, j, k in freqs])
    full = np.kron(np.eye(in_channels), single)  # (in_channels f^3, in_channels f^3), channel by channel
    order = [c * factor ** 3 + r for r in range(factor ** 3) for c in range(in_channels)]
    if not 1 <= rows <= full.shape[0]:
        raise ValueError(f"rows must be in [1, {full.shape[0]}], got {rows}")
    return full[order[:rows]].astype(np.float32)


@register_net("autoencoder_kl")
def autoencoder_kl(in_channels: int = 1, channels: Sequence[int] = (16, 32), latent_channels: int = 4,
                   num_res_blocks: int = 1, norm_num_groups: int = 8, latent_momentum: float = 0.05,
                   shortcut: bool = False) -> CTAutoencoder:
    """Build a :class:`CTAutoencoder` (see there for the arguments); registered as ``autoencoder_kl``."""
    return CTAutoencoder(in_channels=in_channels, channels=channels, latent_channels=latent_channels,
                         num_res_blocks=num_res_blocks, norm_num_groups=norm_num_groups,
                         latent_momentum=latent_momentum, shortcut=shortcut)
