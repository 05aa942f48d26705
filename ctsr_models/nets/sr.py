"""Through-plane super-resolution networks: refine a linearly resampled thick-slice input.

Contract shared by every SR network here:
    * ``x``: ``(B, 1, D, H, W)`` float, the thick slabs linearly interpolated (at their physical
      centres) onto the thin grid, in the network's intensity scale (see
      :mod:`ctsr_models.data.intensity`); ``D`` is the degraded (through-plane) axis.
    * ``ratios``: ``(B, 2)`` float, ``(thickness / s, slab spacing / s)`` with ``s`` the thin target
      spacing, i.e. how much blur and how much missing sampling the input has.
    * output: ``(B, 1, D, H, W)``, same scale; ``x + residual``. The residual head starts at zero,
      so an untrained network returns its input (linear interpolation) exactly.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import ResidualUnit
from monai.networks.nets import UNet
from torch import nn

from .registry import register_net

N_COND = 2
ACTS = ("prelu", "relu", "leakyrelu", "gelu")
NORMS = ("none", "instance", "batch", "group")


def sr_condition(ratios: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Constant conditioning channels from the degradation ratios.

    Args:
        ratios: ``(B, 2)`` thickness / target spacing and slab spacing / target spacing (> 0).
        shape: spatial shape ``(D, H, W)`` of the channels to make.

    Returns:
        ``(B, 2, D, H, W)`` channels holding ``log(ratio)``, same dtype and device as ``ratios``.
    """
    if ratios.ndim != 2 or ratios.shape[1] != N_COND:
        raise ValueError(f"ratios must have shape (B, {N_COND}), got {tuple(ratios.shape)}")
    logs = torch.log(ratios.clamp_min(1e-3))
    return logs[:, :, None, None, None].expand(-1, -1, *shape)


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _norm_arg(norm: str, features: int) -> str | tuple | None:
    if norm == "none":
        return None
    if norm == "group":
        return ("group", {"num_groups": math.gcd(8, features)})
    return norm


def _zero_head(in_channels: int) -> nn.Conv3d:
    head = nn.Conv3d(in_channels, 1, kernel_size=1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def _check_input(x: torch.Tensor, ratios: torch.Tensor) -> None:
    if x.ndim != 5 or x.shape[1] != 1:
        raise ValueError(f"x must have shape (B, 1, D, H, W), got {tuple(x.shape)}")
    if ratios.shape[0] != x.shape[0]:
        raise ValueError(f"ratios has {ratios.shape[0]} rows for a batch of {x.shape[0]}")


@register_net("sr_unet")
class SRUNet(nn.Module):
    """Residual 3D U-Net (MONAI ``UNet`` with residual units) conditioned by constant ratio channels.

    Args:
        features: channels per level, e.g. ``(16, 32, 64)``; the input is downsampled by 2 between levels.
        num_res_units: residual units per block (MONAI ``UNet``).
        act: activation, one of :data:`ACTS`.
        norm: normalisation, one of :data:`NORMS` (``"none"``: none, the usual choice for SR).
    """

    def __init__(self, features: Sequence[int] = (16, 32, 64), num_res_units: int = 2, act: str = "prelu",
                 norm: str = "none") -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) < 2 or min(features) < 1:
            raise ValueError(f"features needs at least 2 positive channel counts, got {features}")
        if num_res_units < 0:
            raise ValueError(f"num_res_units must be >= 0, got {num_res_units}")
        _check_choice("act", act, ACTS)
        _check_choice("norm", norm, NORMS)
        self.multiple = 2 ** (len(features) - 1)
        self.body = UNet(spatial_dims=3, in_channels=1 + N_COND, out_channels=features[0], channels=features,
                         strides=(2,) * (len(features) - 1), num_res_units=num_res_units, act=act,
                         norm=_norm_arg(norm, features[0]))
        self.act = nn.PReLU() if act == "prelu" else nn.Identity()
        self.head = _zero_head(features[0])

    def forward(self, x: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
        """Refine ``x``.

        Args:
            x: ``(B, 1, D, H, W)`` linearly resampled input, network scale; any size (padded inside
                by replication to a multiple of ``2 ** (levels - 1)`` and cropped back).
            ratios: ``(B, 2)`` thickness and slab spacing over the target spacing.

        Returns:
            ``(B, 1, D, H, W)``: ``x`` plus the predicted residual.
        """
        _check_input(x, ratios)
        # 1. pad (D, H, W) up to a multiple of the total downsampling
        size = x.shape[2:]
        pad = [(-n) % self.multiple for n in size]
        xp = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate") if any(pad) else x
        # 2. input channels: image + constant log-ratio channels -> (B, 3, D', H', W')
        inp = torch.cat([xp, sr_condition(ratios.to(xp.dtype), xp.shape[2:])], dim=1)
        # 3. U-Net body -> (B, features[0], D', H', W'), zero-initialised 1x1x1 head -> residual
        residual = self.head(self.act(self.body(inp)))
        # 4. crop back and add the residual to the input
        return x + residual[:, :, : size[0], : size[1], : size[2]]


@register_net("sr_resnet")
class SRResNet(nn.Module):
    """Full-resolution residual CNN (MONAI ``ResidualUnit`` stack): small and fast, for smoke runs.

    Args:
        features: channels of every residual unit.
        num_blocks: number of residual units (each two 3x3x3 convolutions).
        act: activation, one of :data:`ACTS`.
    """

    def __init__(self, features: int = 16, num_blocks: int = 2, act: str = "prelu") -> None:
        super().__init__()
        if features < 1 or num_blocks < 1:
            raise ValueError(f"features and num_blocks must be >= 1, got {features} and {num_blocks}")
        _check_choice("act", act, ACTS)
        self.stem = nn.Conv3d(1 + N_COND, features, kernel_size=3, padding=1)
        self.blocks = nn.Sequential(*[
            ResidualUnit(spatial_dims=3, in_channels=features, out_channels=features, subunits=2, act=act,
                         norm=None)
            for _ in range(num_blocks)
        ])
        self.head = _zero_head(features)

    def forward(self, x: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
        """Refine ``x`` ``(B, 1, D, H, W)`` given ``ratios`` ``(B, 2)``; returns ``(B, 1, D, H, W)``."""
        _check_input(x, ratios)
        inp = torch.cat([x, sr_condition(ratios.to(x.dtype), x.shape[2:])], dim=1)
        return x + self.head(self.blocks(self.stem(inp)))
