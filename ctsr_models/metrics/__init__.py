"""The one evaluator, used by tests, benchmarks, training and docs: PSNR, 3D and mean axial 2D SSIM,
MAE in HU inside the body and PSNR in the [-1000, 1000] window, on HU clipped to [-1024, 3071] and
mapped to [0, 1] (data range 1), computed on arrays (:func:`evaluate_arrays`) or on two volumes compared
in physical space on the reference grid over the z-range both cover (:func:`compare_volumes`)."""
from __future__ import annotations

from .compare import compare_volumes
from .image_metrics import HU_MAX, HU_MIN, evaluate_arrays, mae_body, psnr, psnr_from_mse, ssim2d, ssim3d, to_unit
from .noise import homogeneous_mask, insert_spheres, noise_power_spectrum, noise_std, sphere_cnr
from .texture import laa_bias, laa_percent, restored_band_ratio

__all__ = ["HU_MAX", "HU_MIN", "compare_volumes", "evaluate_arrays", "mae_body", "psnr", "psnr_from_mse", "ssim2d",
           "ssim3d", "to_unit", "laa_bias", "laa_percent", "restored_band_ratio",
           "homogeneous_mask", "insert_spheres", "noise_power_spectrum", "noise_std", "sphere_cnr"]
