"""Networks only: tensors in, tensors out, chosen by a registered name.

Every network here maps normalised tensors to normalised tensors; the intensity scale, the data and
the losses belong to the tasks in :mod:`ctsr_models.training`. Build one with
``build_net("sr_unet", **kwargs)`` or ``build_net("xray2ct", **kwargs)``; ``NETS`` lists the names.
"""
from __future__ import annotations

from .autoencoder import CTAutoencoder, autoencoder_kl
from .denoise import DenoiseUNet
from .latent_denoise import LatentDenoiser
from .registry import NETS, build_net, register_net
from .sr import SRResNet, SRUNet, sr_condition
from .sr_diffusion import SRDiffusionUNet
from .xray2ct import XrayToCT
from .xray2ct_implicit import XrayToCTImplicit

__all__ = ["NETS", "CTAutoencoder", "autoencoder_kl", "DenoiseUNet", "LatentDenoiser", "SRDiffusionUNet", "SRResNet", "SRUNet", "XrayToCT", "XrayToCTImplicit", "build_net", "register_net", "sr_condition"]
