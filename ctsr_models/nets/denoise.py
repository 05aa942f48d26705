"""2.5D denoising network: a few adjacent low-dose axial slices in, the centre slice denoised out.

Contract:
    * ``x``: ``(B, C, H, W)`` float, ``C`` (odd) adjacent axial slices of a low-dose CT in the network's
      intensity scale (:mod:`ctsr_models.data.intensity`), the slice to denoise in the middle.
    * output: ``(B, 1, H, W)``, same scale: the centre slice plus a predicted residual. The residual head
      starts at zero, so an untrained network returns the centre slice unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from .registry import register_net
from .sr import ACTS, _check_choice


@register_net("denoise_unet")
class DenoiseUNet(nn.Module):
    """Residual 2D U-Net (MONAI ``UNet`` with residual units) over ``in_slices`` adjacent slices.

    Args:
        in_slices: adjacent slices in (odd, >= 1); the centre one is denoised.
        features: channels per level, e.g. ``(16, 32, 64)``; downsampled by 2 between levels.
        num_res_units: residual units per block (MONAI ``UNet``).
        act: activation, one of :data:`ctsr_models.nets.sr.ACTS`.
    """

    def __init__(self, in_slices: int = 3, features: Sequence[int] = (16, 32, 64), num_res_units: int = 1,
                 act: str = "prelu") -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        if in_slices < 1 or in_slices % 2 == 0:
            raise ValueError(f"in_slices must be an odd number >= 1, got {in_slices}")
        if len(features) < 2 or min(features) < 1:
            raise ValueError(f"features needs at least 2 positive channel counts, got {features}")
        if num_res_units < 0:
            raise ValueError(f"num_res_units must be >= 0, got {num_res_units}")
        _check_choice("act", act, ACTS)
        self.in_slices = in_slices
        self.multiple = 2 ** (len(features) - 1)
        self.body = UNet(spatial_dims=2, in_channels=in_slices, out_channels=features[0], channels=features,
                         strides=(2,) * (len(features) - 1), num_res_units=num_res_units, act=act, norm=None)
        self.act = nn.PReLU() if act == "prelu" else nn.Identity()
        self.head = nn.Conv2d(features[0], 1, kernel_size=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise the centre slice.

        Args:
            x: ``(B, in_slices, H, W)`` low-dose slices, network scale; any ``H, W`` (padded inside by
                replication to a multiple of ``2 ** (levels - 1)`` and cropped back).

        Returns:
            ``(B, 1, H, W)``: the centre slice plus the predicted residual.
        """
        if x.ndim != 4 or x.shape[1] != self.in_slices:
            raise ValueError(f"x must have shape (B, {self.in_slices}, H, W), got {tuple(x.shape)}")
        # 1. pad (H, W) up to a multiple of the total downsampling
        size = x.shape[2:]
        pad = [(-n) % self.multiple for n in size]
        xp = F.pad(x, (0, pad[1], 0, pad[0]), mode="replicate") if any(pad) else x
        # 2. U-Net body -> (B, features[0], H', W'); zero-initialised 1x1 head -> residual (B, 1, H', W')
        residual = self.head(self.act(self.body(xp)))
        # 3. crop back and add the residual to the centre slice
        centre = x[:, self.in_slices // 2: self.in_slices // 2 + 1]
        return centre + residual[:, :, : size[0], : size[1]]
