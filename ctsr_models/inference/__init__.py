"""Whole-volume inference: the output grid, the models (typed manifest, checked weights), one predictor
per model kind (interpolation, regression, diffusion), the through-plane super-resolution pipeline
used by ``ctsr-enhance`` and the server, and X-ray to CT. Nothing here trains: per-scan adaptation lives
in :mod:`ctsr_models.training.adapt` and hands this package the network it made."""
from __future__ import annotations

from .denoise import DenoiseOptions, denoise
from .device import DEVICES, Progress, pick_device
from .enhance import EnhanceOptions, EnhancePlan, enhance, enhance_detailed, plan_enhancement
from .grid import ZGrid, through_plane_grid
from .interpolation import INTERPOLATORS, interpolate_to_grid
from .models import (
    DiffusionSettings, ModelKind, ModelSpec, WeightsError, available_models, load_network, read_manifest, resolve_model,
)
from .diffusion_predictor import DiffusionPredictor
from .predictor import InterpolationPredictor, Prediction, Predictor, RegressionPredictor, predictor_for

__all__ = [
    "DEVICES", "DenoiseOptions", "denoise", "INTERPOLATORS", "DiffusionPredictor", "DiffusionSettings", "EnhanceOptions", "EnhancePlan",
    "InterpolationPredictor", "ModelKind", "ModelSpec", "Prediction", "Predictor", "Progress", "RegressionPredictor",
    "WeightsError", "ZGrid", "available_models", "enhance",
    "enhance_detailed", "interpolate_to_grid", "load_network", "pick_device", "plan_enhancement", "predictor_for",
    "read_manifest", "resolve_model", "through_plane_grid",
]
