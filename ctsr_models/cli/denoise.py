"""``ctsr-denoise IN OUT``: low-dose CT denoising with a shipped model (same grid out).

The result is an AI-processed image and says so (findings, JSON report, DICOM SeriesDescription). With the
latent diffusion denoiser (``--model diffusion`` or its name) OUT is the mean of ``--samples`` K samples (the
sample itself for K = 1) and ``--uncertainty STD_OUT`` writes their per-voxel standard deviation (float32 HU,
same grid); ``--steps/--samples/--seed/--uncertainty`` with a regression model exit 2 with one line.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from ctsr_models.inference import DEVICES
from ctsr_models.inference.denoise import TASK
from ctsr_models.inference.ldm_denoise import LDMDenoiseOptions, denoise_detailed
from ctsr_models.inference.models import available_models
from ctsr_models.io import read_volume, write_volume

from .common import (add_common_args, add_read_args, add_write_args, check_output_path, print_json, read_options,
                     refuse_same_path, run_cli)
from .enhance import add_diffusion_args, check_diffusion_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctsr-denoise", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("input", help="low-dose CT: DICOM folder or file, study ZIP, .nii/.nii.gz/.nrrd/.mha")
    parser.add_argument("output", help="output .nii.gz/.nrrd/.mha file, or a folder for a derived DICOM series")
    parser.add_argument("--model", default="default", help=f"one of: {', '.join(available_models(TASK)) or 'none'}")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where the network runs (default auto)")
    add_diffusion_args(parser)
    add_read_args(parser)
    add_write_args(parser)
    add_common_args(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    refuse_same_path(args.input, args.output)
    check_output_path(args.output, overwrite=args.overwrite)
    name = check_diffusion_args(args, task=TASK)
    start = time.perf_counter()
    options = LDMDenoiseOptions(model=args.model, device=args.device, steps=args.steps, samples=args.samples,
                                seed=args.seed)
    volume = read_volume(args.input, **read_options(args))
    with tqdm(total=100, desc="denoise", unit="%", disable=args.quiet, leave=False) as bar:
        def progress(fraction: float, stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update(round(fraction * 100) - bar.n)

        result, details = denoise_detailed(volume, options, progress)
    generated = details.get("diffusion")
    description = f"AI-denoised {name}" if generated is None else f"AI-generated detail, denoised {name}"
    write_volume(result, args.output, dtype=args.dtype, overwrite=args.overwrite, series_description=description[:64])
    report = {"output": str(Path(args.output)), "model": name, "geometry": result.geometry_dict(),
              "seconds": round(time.perf_counter() - start, 2), "findings": result.findings}
    if generated is not None:
        report["diffusion"] = generated
    if args.uncertainty is not None and "uncertainty" in details:
        write_volume(details["uncertainty"], args.uncertainty, dtype="float32", overwrite=args.overwrite,
                     series_description=f"uncertainty (std HU), denoised {name}"[:64])
        report["uncertainty"] = str(args.uncertainty)
    print_json(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)
