"""Whole-volume inference: the output grid, interpolation baselines, shipped models (checked weights),
per-scan adaptation and the sliding-window super-resolution pipeline used by ``ctsr-enhance`` and the server."""
from __future__ import annotations

from .adapt import AdaptOptions, AdaptResult, adapt_network, load_adapted, save_adapted
from .enhance import DEVICES, EnhanceOptions, enhance, enhance_detailed, pick_device
from .grid import ZGrid, through_plane_grid
from .interpolation import INTERPOLATORS, interpolate_to_grid
from .models import ModelSpec, WeightsError, available_models, load_network, read_manifest, resolve_model

__all__ = [
    "DEVICES", "INTERPOLATORS", "AdaptOptions", "AdaptResult", "EnhanceOptions", "ModelSpec", "WeightsError", "ZGrid",
    "adapt_network", "available_models", "enhance", "enhance_detailed", "interpolate_to_grid", "load_adapted",
    "load_network", "pick_device", "read_manifest", "resolve_model", "save_adapted", "through_plane_grid",
]
