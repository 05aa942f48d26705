"""Reconstruction quality of the 3D autoencoder on held-out real CT, beside the 25 %-dose input.

The latent space caps every model built on it: a latent diffusion denoiser cannot score higher than the
autoencoder's reconstruction of the standard-dose image. For each held-out case a ``(16, 256, 256)`` crop
of standard-dose CT goes through ``decode(encode(x))`` in overlapping windows (MONAI
``SlidingWindowInferer``, Gaussian blending) and is scored against itself; the 25 %-dose simulation of the
same slices (:func:`ctsr_models.physics.dose.simulate_low_dose` on whole slices, fixed seed, then cropped:
what denoising starts from) is scored against the same reference. Metrics follow the project convention
(:mod:`ctsr_models.metrics`: PSNR over [-1024, 3071] HU → [0, 1], 3D SSIM σ 1.5, MAE in HU inside the body).
With a residual autoencoder (``shortcut``) it also scores the shortcut's linear block code alone (what an
untrained network of the same size gives: the orthonormal projection of each 2 x 2 x 2 block on its
lowest-frequency vectors), the reference the trained networks must beat. It also reports the standard deviation of the scaled latents (``encode``) of training patches, which
``latent_scale`` should bring to about 1.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/autoencoder_recon.py [--model autoencoder_kl_v1 |
--checkpoint runs/autoencoder_v1/checkpoints/last.pt]``; prints a markdown table.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer

from ctsr_models.data import hu_to_net, net_to_hu
from ctsr_models.inference.models import load_network, resolve_model
from ctsr_models.io import read_volume
from ctsr_models.metrics import mae_body, psnr, ssim3d
from ctsr_models.nets import CTAutoencoder, build_net
from ctsr_models.physics.dose import DoseSettings, simulate_low_dose
from ctsr_models.training import load_checkpoint
from ctsr_models.training.config import load_config
from ctsr_models.training.tasks.autoencoder import AutoencoderConfig, AutoencoderTask

log = logging.getLogger("autoencoder_recon")
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SEED = 14
DOSE = 0.25


@dataclass(frozen=True)
class Case:
    """A held-out crop: ``slices`` ``[start, stop)`` and the in-plane centre ``(y, x)`` of a ``size``² crop."""

    name: str
    path: str
    slices: tuple[int, int]
    centre: tuple[int, int]
    size: int = 256


CASES = (Case("chest lung1 (5 mm slices)", "ct/pyradiomics_lung1/lung1_image.nrrd", (4, 20), (320, 290)),
         Case("head CPTAC-GBM (1.25 mm)", "ct/tcia_cptac_gbm_head/head_ct_1.25mm.nii.gz", (80, 96), (285, 228)),
         Case("chest 4D-CT, last 20 % (2 mm)", "ct/chest_4dct_phase00_dicom", (118, 134), (256, 256)))


def load_autoencoder(model: str | None, checkpoint: str | None) -> CTAutoencoder:
    """The shipped model ``model`` (SHA-256 checked) or the EMA weights of a training checkpoint."""
    if checkpoint is None:
        return load_network(resolve_model(model or "autoencoder_kl_v1", task="autoencoder"), torch.device("cpu"))
    state = load_checkpoint(checkpoint)
    weights = {k.removeprefix("module."): v for k, v in (state["ema"] or state["model"]).items() if k != "n_averaged"}
    net = build_net(state["config"]["model"]["name"], **state["config"]["model"]["kwargs"])
    net.load_state_dict(weights)
    log.info("checkpoint %s at step %d", checkpoint, state["step"])
    return net.eval()


def reconstruct(net: CTAutoencoder, hu: np.ndarray, roi: tuple[int, int, int], linear_only: bool = False) -> np.ndarray:
    """``decode(encode(x))`` of a ``(z, y, x)`` HU array in Gaussian-blended windows of ``roi`` voxels, HU out;
    ``linear_only``: the shortcut's linear block code alone (``linear_image(linear_code(x))``)."""
    inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=1, overlap=0.25, mode="gaussian")
    x = torch.from_numpy(hu_to_net(hu))[None, None]
    codec = (lambda t: net.linear_image(net.linear_code(t))) if linear_only else (lambda t: net.decode(net.encode(t)))
    with torch.no_grad():
        out = inferer(x, codec)
    return net_to_hu(out[0, 0].numpy())


def crop_case(case: Case, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(standard, low dose)`` ``(n, size, size)`` HU crops; the low dose is simulated on whole slices (cached)."""
    volume = read_volume(DATA / case.path)
    z0, z1 = case.slices
    block = volume.array[z0:z1].astype(np.float32)
    path = cache / f"{Path(case.path).name.split('.')[0]}_{z0}_{z1}_d{DOSE:g}_s{SEED}.npy"
    if path.exists():
        low = np.load(path)
    else:
        t = time.perf_counter()
        low = simulate_low_dose(volume.replace(array=block, origin=tuple(volume.index_to_physical([0, 0, z0]))),
                                DoseSettings(dose=DOSE), seed=SEED).array.astype(np.float32)
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, low)
        log.info("%s: %d low-dose slices simulated in %.0f s", case.name, z1 - z0, time.perf_counter() - t)
    h = case.size // 2
    y0 = int(np.clip(case.centre[0] - h, 0, block.shape[1] - case.size))
    x0 = int(np.clip(case.centre[1] - h, 0, block.shape[2] - case.size))
    window = (slice(None), slice(y0, y0 + case.size), slice(x0, x0 + case.size))
    return block[window], low[window]


def scores(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """PSNR (dB), 3D SSIM, MAE in the body (HU)."""
    return psnr(pred, ref), ssim3d(pred, ref), mae_body(pred, ref)


def training_latent_std(net: CTAutoencoder, config: Path, n: int) -> float:
    """Standard deviation of the scaled latents ``encode(x)`` of ``n`` training patches of ``config``."""
    cfg = load_config(AutoencoderConfig, config)
    task = AutoencoderTask(cfg)
    task.prepare()
    data = task.train_dataset(rank=0)
    with torch.no_grad():
        z = torch.cat([net.encode(data[10_000_000 + i]["image"][None]).flatten() for i in range(n)])
    return float(z.std())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="shipped autoencoder (default autoencoder_kl_v1)")
    parser.add_argument("--checkpoint", default=None, help="a training checkpoint instead of a shipped model")
    parser.add_argument("--roi", type=int, nargs=3, default=(16, 128, 128), help="sliding window (z, y, x)")
    parser.add_argument("--config", default=str(REPO / "train" / "configs" / "autoencoder.yaml"),
                        help="config whose training patches give the latent std")
    parser.add_argument("--latent-patches", type=int, default=32)
    parser.add_argument("--cache", default=str(REPO / ".cache" / "autoencoder_recon"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    net = load_autoencoder(args.model, args.checkpoint)
    rows = ["| case | image vs standard dose | PSNR dB | SSIM 3D | MAE HU (body) |", "|---|---|---|---|---|"]
    for case in CASES:
        standard, low = crop_case(case, Path(args.cache))
        t = time.perf_counter()
        recon = reconstruct(net, standard, tuple(args.roi))
        log.info("%s: %s crop reconstructed in %.1f s", case.name, standard.shape, time.perf_counter() - t)
        images = [("autoencoder reconstruction", recon), (f"{DOSE:.0%} dose input", low)]
        if net.shortcut:
            images.append(("linear block code alone (untrained shortcut)",
                           reconstruct(net, standard, tuple(args.roi), linear_only=True)))
        for label, image in images:
            p, s, m = scores(image, standard)
            rows.append(f"| {case.name} | {label} | {p:.2f} | {s:.4f} | {m:.1f} |")
    std = training_latent_std(net, Path(args.config), args.latent_patches)
    print("\n".join(rows))
    print(f"\nlatent_scale {float(net.latent_scale):.4f}; std of the scaled latents of {args.latent_patches} "
          f"training patches: {std:.3f}")


if __name__ == "__main__":
    main()
