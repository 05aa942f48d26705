"""Whole-volume inference: the output grid, interpolation baselines, shipped models (checked weights)
and the sliding-window super-resolution pipeline used by ``ctsr-enhance`` and the server."""
from __future__ import annotations

from .enhance import DEVICES, EnhanceOptions, enhance, pick_device
from .grid import ZGrid, through_plane_grid
from .interpolation import INTERPOLATORS, interpolate_to_grid
from .models import ModelSpec, WeightsError, available_models, load_network, read_manifest, resolve_model

__all__ = [
    "DEVICES", "INTERPOLATORS", "EnhanceOptions", "ModelSpec", "WeightsError", "ZGrid", "available_models",
    "enhance", "interpolate_to_grid", "load_network", "pick_device", "read_manifest", "resolve_model",
    "through_plane_grid",
]
