"""Biplanar X-ray → CT: 2D encoders, geometry-aware lifting at every decoder scale, a 3D decoder.

Contract:
    * ``frontal``, ``lateral``: ``(B, 1, h, w)`` radiographs normalised with
      :func:`ctsr_models.data.xray_pairs.normalize_xray` (``h = w = detector_px``).
    * ``coords``: ``(B, 2, d', d', d', 2)`` from :func:`ctsr_models.physics.lifting.lifting_coords` with
      ``d' =`` :attr:`XrayToCT.lifting_size`: where each voxel's ray lands on each detector (frontal
      first), ``grid_sample`` coordinates over the detector's pixel centres. The network never guesses
      geometry: any pose, distance or detector the coordinates describe is used as given.
    * output: ``(B, 1, size, size, size)`` in the CT scale of
      :func:`ctsr_models.data.xray_pairs.hu_to_ct_net` (``[0, 1]`` for ``[-1000, 1500]`` HU).

Each view has its own 2D encoder (MONAI residual units, a stride-2 level per decoder scale). The 3D
decoder starts at ``size / 2^(levels-1)`` voxels with position channels, and at every scale takes the
features of both views lifted along the rays (:func:`ctsr_models.physics.lifting.lift`, the same
geometry as the projector) beside the upsampled decoder features. The coordinates of the other scales
are the given ones averaged (coarser) or trilinearly interpolated (finer): the ray map is smooth, so
both are exact to well under a pixel.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit, UpSample
from torch import nn

from ctsr_models.physics.lifting import edge_coords, lift

from .registry import register_net

N_VIEWS = 2


def _check_levels(name: str, features: Sequence[int], levels: int) -> None:
    if len(features) != levels or min(features) < 1:
        raise ValueError(f"{name} needs {levels} positive channel counts (finest first), got {list(features)}")


def coords_at(coords: torch.Tensor, size: int) -> torch.Tensor:
    """Lifting coordinates ``(B, D, D, D, 2)`` of the same box at ``size`` voxels per axis.

    Coarser: the mean over each block of voxels (whose centre is the mean of the centres); finer:
    trilinear interpolation at the finer voxel centres.
    """
    d = coords.shape[1]
    if size == d:
        return coords
    c = coords.permute(0, 4, 1, 2, 3)
    c = F.avg_pool3d(c, d // size) if size < d else F.interpolate(c, size=(size,) * 3, mode="trilinear",
                                                                  align_corners=False)
    return c.permute(0, 2, 3, 4, 1).contiguous()


def position_channels(batch: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """``(B, 3, size, size, size)`` normalised voxel positions (z, y, x) in ``[-1, 1]``."""
    axis = torch.linspace(-1.0, 1.0, size, dtype=like.dtype, device=like.device)
    zyx = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"))
    return zyx[None].expand(batch, -1, -1, -1, -1)


class ViewEncoder(nn.Module):
    """2D encoder of one view: a stem at full resolution, then a stride-2 residual unit per level.

    Returns the feature maps finest first, ``features[k]`` channels at ``detector_px / 2^k``.
    """

    def __init__(self, features: Sequence[int], norm: str | tuple) -> None:
        super().__init__()
        self.stem = Convolution(2, 1, features[0], norm=norm)
        self.down = nn.ModuleList(ResidualUnit(2, features[k - 1], features[k], strides=2, norm=norm)
                                  for k in range(1, len(features)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = [self.stem(x)]
        for block in self.down:
            maps.append(block(maps[-1]))
        return maps


@register_net("xray2ct")
class XrayToCT(nn.Module):
    """Biplanar X-ray → CT network (see the module docstring).

    Args:
        size: output voxels per axis; divisible by ``2^(levels-1)``.
        detector_px: input radiograph pixels per side; divisible by ``2^(levels-1)``.
        features_2d: encoder channels per level, finest first (``levels`` values).
        features_3d: decoder channels per level, finest first (``levels`` values).
        lifting_size: voxels per axis of the coordinates the caller gives (default ``size // 2``); a
            power-of-two multiple or fraction of each decoder scale.
        norm: ``instance``, ``batch`` or ``none``.
    """

    def __init__(self, size: int = 128, detector_px: int = 128, features_2d: Sequence[int] = (8, 16, 32, 64),
                 features_3d: Sequence[int] = (8, 24, 48, 96), lifting_size: int | None = None,
                 norm: str = "instance") -> None:
        super().__init__()
        levels = len(features_3d)
        _check_levels("features_2d", features_2d, levels)
        _check_levels("features_3d", features_3d, levels)
        if levels < 1 or size % 2 ** (levels - 1) or detector_px % 2 ** (levels - 1):
            raise ValueError(f"size ({size}) and detector_px ({detector_px}) must be divisible by "
                             f"2^(levels-1) = {2 ** (levels - 1)}")
        if norm not in ("instance", "batch", "none"):
            raise ValueError(f"norm must be one of instance, batch, none, got {norm!r}")
        self.size, self.detector_px, self.levels = int(size), int(detector_px), levels
        self.lifting_size = int(lifting_size) if lifting_size is not None else max(self.size // 2, 1)
        if not self._lifting_size_ok():
            raise ValueError(f"lifting_size {self.lifting_size} must be a power-of-two multiple or fraction of "
                             f"every decoder scale of size {size}")
        adn = None if norm == "none" else norm
        self.encoders = nn.ModuleList(ViewEncoder(features_2d, adn) for _ in range(N_VIEWS))
        coarse = levels - 1
        self.blocks = nn.ModuleList()
        self.ups = nn.ModuleList()
        for k in range(levels):
            inputs = N_VIEWS * features_2d[k] + (3 if k == coarse else features_3d[k])
            # a pointwise fusion of lifted and decoder features, then residual 3x3x3 convolutions (two
            # at the cheap coarse scales, one at the two finest, where a voxel costs the most)
            self.blocks.append(nn.Sequential(
                Convolution(3, inputs, features_3d[k], kernel_size=1, norm=adn),
                ResidualUnit(3, features_3d[k], features_3d[k], norm=adn, subunits=1 if k < 2 else 2)))
            if k < coarse:
                self.ups.append(UpSample(3, features_3d[k + 1], features_3d[k], 2, mode="nontrainable",
                                         interp_mode="trilinear", align_corners=False))
        self.head = nn.Conv3d(features_3d[0], 1, kernel_size=1)

    def _lifting_size_ok(self) -> bool:
        for k in range(self.levels):
            s = self.size // 2**k
            ratio = max(s, self.lifting_size) / min(s, self.lifting_size)
            if max(s, self.lifting_size) % min(s, self.lifting_size) or int(ratio) & (int(ratio) - 1):
                return False
        return True

    def _check(self, frontal: torch.Tensor, lateral: torch.Tensor, coords: torch.Tensor) -> None:
        want = (self.detector_px, self.detector_px)
        for name, x in (("frontal", frontal), ("lateral", lateral)):
            if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) != want:
                raise ValueError(f"{name} must be (B, 1, {want[0]}, {want[1]}), got {tuple(x.shape)}")
        d = self.lifting_size
        if tuple(coords.shape[1:]) != (N_VIEWS, d, d, d, 2) or coords.shape[0] != frontal.shape[0]:
            raise ValueError(f"coords must be (B, {N_VIEWS}, {d}, {d}, {d}, 2), got {tuple(coords.shape)}")

    def forward(self, frontal: torch.Tensor, lateral: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """``(B, 1, h, w)`` × 2 and ``(B, 2, d', d', d', 2)`` → ``(B, 1, size, size, size)``."""
        self._check(frontal, lateral, coords)
        b = frontal.shape[0]
        # 1. 2D features of each view, finest first: maps[v][k] is (B, f2d[k], px / 2^k, px / 2^k)
        maps = [enc(x) for enc, x in zip(self.encoders, (frontal, lateral))]
        # 2. detector-edge coordinates (resolution-independent sampling) of each view
        edges = edge_coords(coords.float(), (self.detector_px, self.detector_px))
        x = None
        # 3. coarse to fine: lift both views at the scale, join the decoder features, refine, upsample
        for k in reversed(range(self.levels)):
            s = self.size // 2**k
            lifted = [lift(maps[v][k], coords_at(edges[:, v], s)) for v in range(N_VIEWS)]
            extra = position_channels(b, s, frontal) if x is None else self.ups[k](x)
            x = self.blocks[k](torch.cat([*lifted, extra.to(lifted[0].dtype)], dim=1))
        # 4. one channel in the CT scale
        return self.head(x)
