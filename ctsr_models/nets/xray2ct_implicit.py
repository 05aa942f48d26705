"""Biplanar X-ray → CT with an implicit (resolution-free) decoder: HU at any 3D point from the two views'
features along that point's rays (DIF-Net / PerX2CT style).

Contract (the same inputs as :class:`~ctsr_models.nets.xray2ct.XrayToCT`, so the training task and the
inference pipeline run both):
    * ``frontal``, ``lateral``: ``(B, 1, h, w)`` radiographs normalised with
      :func:`ctsr_models.data.xray_pairs.normalize_xray` (``h = w = detector_px``).
    * ``coords``: ``(B, 2, *S, 2)``, for every query point (any spatial layout ``S``: a list of ``N``
      points or a ``d × h × w`` grid) where its ray lands on each detector (frontal first), as
      :func:`ctsr_models.physics.lifting.detector_coords` gives them (``grid_sample`` coordinates over
      the detector's pixel centres, from :meth:`ProjectionGeometry.to_detector`). The network never
      guesses geometry: the points' positions in mm enter only through these coordinates.
    * output: ``(B, 1, *S)`` in the CT scale of :func:`ctsr_models.data.xray_pairs.hu_to_ct_net`.

Per point: each view's 2D encoder (the :class:`~ctsr_models.nets.xray2ct.ViewEncoder` of the cube
model) gives multi-scale feature maps; the point samples every level of both views at its detector
point (bilinear, zero outside the detector); a Fourier positional encoding of its four detector
coordinates (which fix the 3D point for two views far from parallel) is appended; a pointwise MLP
(MONAI 1D convolutions of kernel 1) predicts the value. The MLP's first layer is linear in the sampled
features and bilinear sampling is linear too, so the layer is applied to the 2D maps once per image
(a 1×1 convolution per view and level) and the points sample its ``hidden[0]`` channels, summed: the same
function as sampling the features, concatenating and applying the layer, at a fraction of the cost per
point. The coarser levels' maps are upsampled (bilinear) to the finest and summed, so a point samples one
map per view. Points are decoded in chunks of
``chunk_points``, so memory is bounded for any output grid and the cost grows only with the number
of points asked for.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from ctsr_models.physics.lifting import edge_coords

from .registry import register_net
from .xray2ct import N_VIEWS, ViewEncoder


def fourier_features(coords: torch.Tensor, frequencies: int) -> torch.Tensor:
    """Positional encoding ``[c, sin(2^k π c), cos(2^k π c)]`` for ``k < frequencies``.

    Args:
        coords: ``(B, C, N)`` values of order 1.
        frequencies: number of octaves (0: the coordinates alone).

    Returns:
        ``(B, C * (1 + 2 * frequencies), N)``.
    """
    parts = [coords]
    for k in range(frequencies):
        arg = coords * (math.pi * 2.0**k)
        parts += [torch.sin(arg), torch.cos(arg)]
    return torch.cat(parts, dim=1)


def sample_views(maps: Sequence[Sequence[torch.Tensor]], edges: torch.Tensor) -> torch.Tensor:
    """Sum over views and levels of the bilinear samples of 2D maps at the points' detector positions.

    Args:
        maps: ``maps[v][k]`` ``(B, C, h_k, w_k)``, maps covering the whole detector (same ``C``).
        edges: ``(B, V, N, 2)`` detector-edge coordinates (:func:`~ctsr_models.physics.lifting.edge_coords`).

    Returns:
        ``(B, C, N)``.
    """
    total = None
    for v, levels in enumerate(maps):
        grid = edges[:, v, :, None, :]  # (B, N, 1, 2)
        for fmap in levels:
            s = F.grid_sample(fmap, grid.to(fmap.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
            total = s[..., 0] if total is None else total + s[..., 0]
    return total


@register_net("xray2ct_implicit")
class XrayToCTImplicit(nn.Module):
    """Biplanar X-ray → CT network with a point decoder (see the module docstring).

    Args:
        size: voxels per axis of the cube the training task asks for (its ``lifting_size``: one
            detector coordinate per voxel); the network itself decodes any set of points.
        detector_px: input radiograph pixels per side; divisible by ``2^(levels-1)``.
        features_2d: encoder channels per level, finest first.
        hidden: channels of the MLP's hidden layers (one value per layer, at least one).
        frequencies: octaves of the positional encoding of the four detector coordinates.
        norm: 2D encoder normalisation, ``instance``, ``batch`` or ``none`` (the MLP has none).
        chunk_points: points decoded at once.
    """

    #: the X-ray → CT task trains it on sampled points instead of whole cubes
    point_decoder = True

    def __init__(self, size: int = 128, detector_px: int = 128, features_2d: Sequence[int] = (16, 32, 64),
                 hidden: Sequence[int] = (64, 64, 32), frequencies: int = 4, norm: str = "instance",
                 chunk_points: int = 2**16) -> None:
        super().__init__()
        levels = len(features_2d)
        if levels < 1 or min(features_2d) < 1 or not hidden or min(hidden) < 1:
            raise ValueError(f"need >= 1 positive features_2d and hidden, got {list(features_2d)}, {list(hidden)}")
        if size < 1 or detector_px % 2 ** (levels - 1):
            raise ValueError(f"detector_px ({detector_px}) must be divisible by 2^(levels-1) = {2 ** (levels - 1)}")
        if norm not in ("instance", "batch", "none"):
            raise ValueError(f"norm must be one of instance, batch, none, got {norm!r}")
        if frequencies < 0 or chunk_points < 1:
            raise ValueError(f"need frequencies >= 0 and chunk_points >= 1, got {frequencies}, {chunk_points}")
        self.size, self.detector_px, self.frequencies = int(size), int(detector_px), int(frequencies)
        self.lifting_size = self.size
        self.chunk_points = int(chunk_points)
        adn = None if norm == "none" else norm
        self.encoders = nn.ModuleList(ViewEncoder(features_2d, adn) for _ in range(N_VIEWS))
        # first MLP layer: one 1x1 convolution per view and level on the 2D maps, one on the encoding
        self.first = nn.ModuleList(nn.ModuleList(nn.Conv2d(f, hidden[0], 1, bias=False) for f in features_2d)
                                   for _ in range(N_VIEWS))
        self.first_position = nn.Conv1d(2 * N_VIEWS * (1 + 2 * self.frequencies), hidden[0], 1)
        layers, channels = [], hidden[0]
        for width in hidden[1:]:
            layers.append(Convolution(1, channels, width, kernel_size=1, act="RELU", norm=None))
            channels = width
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Conv1d(channels, 1, kernel_size=1)

    def _check(self, frontal: torch.Tensor, lateral: torch.Tensor, coords: torch.Tensor) -> None:
        want = (self.detector_px, self.detector_px)
        for name, x in (("frontal", frontal), ("lateral", lateral)):
            if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) != want:
                raise ValueError(f"{name} must be (B, 1, {want[0]}, {want[1]}), got {tuple(x.shape)}")
        if coords.ndim < 4 or coords.shape[1] != N_VIEWS or coords.shape[-1] != 2 or coords.shape[0] != frontal.shape[0]:
            raise ValueError(f"coords must be (B, {N_VIEWS}, *points, 2), got {tuple(coords.shape)}")

    def decode(self, maps: Sequence[Sequence[torch.Tensor]], coords: torch.Tensor) -> torch.Tensor:
        """CT-scale values ``(B, 1, N)`` of points with detector coordinates ``(B, 2, N, 2)`` (one chunk).

        ``maps`` are the first-layer maps (:meth:`first_maps`).
        """
        b, _, n, _ = coords.shape
        edges = edge_coords(coords.float(), (self.detector_px, self.detector_px))
        position = fourier_features(coords.float().permute(0, 1, 3, 2).reshape(b, 2 * N_VIEWS, n), self.frequencies)
        x = sample_views(maps, edges) + self.first_position(position.to(maps[0][0].dtype))
        return self.head(self.mlp(torch.relu(x)))

    def first_maps(self, frontal: torch.Tensor, lateral: torch.Tensor) -> list[list[torch.Tensor]]:
        """Encoder features of both views through the first MLP layer, the coarser levels upsampled
        (bilinear) to the finest and summed: ``[v][0]`` ``(B, hidden[0], px, px)``, one map per view."""
        maps = [enc(x) for enc, x in zip(self.encoders, (frontal, lateral))]
        out = []
        for convs, levels in zip(self.first, maps):
            size = levels[0].shape[-2:]
            total = convs[0](levels[0])
            for conv, f in zip(convs[1:], levels[1:]):
                total = total + F.interpolate(conv(f), size=size, mode="bilinear", align_corners=False)
            out.append([total])
        return out

    def forward(self, frontal: torch.Tensor, lateral: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """``(B, 1, h, w)`` × 2 and ``(B, 2, *S, 2)`` → ``(B, 1, *S)``."""
        self._check(frontal, lateral, coords)
        b, spatial = coords.shape[0], tuple(coords.shape[2:-1])
        # 1. 2D features of each view, finest first, through the first MLP layer: (B, hidden[0], px/2^k, px/2^k)
        maps = self.first_maps(frontal, lateral)
        # 2. the query points as a flat list (B, 2, N, 2), decoded chunk by chunk
        flat = coords.reshape(b, N_VIEWS, -1, 2)
        out = [self.decode(maps, flat[:, :, i:i + self.chunk_points]) for i in range(0, flat.shape[2], self.chunk_points)]
        # 3. back to the callers' layout
        return torch.cat(out, dim=2).reshape(b, 1, *spatial)
