"""``ctsr-enhance IN OUT``: through-plane super-resolution of a thick-slice CT to thin slices.

With a diffusion model (``--model diffusion`` or its name) OUT is the mean of ``--samples`` K samples (the
sample itself for K = 1), each consistent with the input slabs, and ``--uncertainty STD_OUT`` writes their
calibrated per-voxel standard deviation (float32 HU, same grid); the result contains AI-generated detail
and says so (findings, JSON report, DICOM SeriesDescription).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from tqdm import tqdm

from ctsr_models.inference import DEVICES, EnhanceOptions, ModelKind, available_models, enhance_detailed, resolve_model
from ctsr_models.io import InputError, read_volume, write_volume
from ctsr_models.training.adapt import PROFILES, AdaptOptions, enhance_adapted

from .common import (add_common_args, add_read_args, add_write_args, check_output_path, positive_float, positive_int,
                     print_json, read_options, refuse_same_path, run_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctsr-enhance", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("input", help="thick-slice CT: DICOM folder/ZIP/file or NIfTI/NRRD/MHA")
    parser.add_argument("output", help="output .nii.gz/.nrrd/.mha file, or a folder for a derived DICOM series")
    parser.add_argument("--target-spacing", type=positive_float, default=1.0, metavar="MM",
                        help="output slice spacing (default 1 mm)")
    parser.add_argument("--input-thickness", type=positive_float, metavar="MM",
                        help="slab thickness of the input (default: from the header, else the slice spacing)")
    parser.add_argument("--input-profile", choices=("rect", "gaussian"), default="rect",
                        help="slab profile shape of that thickness (default rect)")
    parser.add_argument("--estimate-profile", action="store_true",
                        help="without --input-thickness, estimate the slab profile (shape and width) from the scan "
                             "itself and use it when the estimate is confident (docs/slice_profile.md)")
    parser.add_argument("--no-consistency", action="store_true",
                        help="return the network's output as it is, without projecting it onto the volumes that "
                             "reproduce the acquired slabs (the residual is still reported)")
    parser.add_argument("--model", default="default", help=f"one of: {', '.join(available_models())}")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where the network runs (default auto)")
    add_adapt_args(parser)
    add_diffusion_args(parser)
    add_write_args(parser)
    add_read_args(parser)
    add_common_args(parser)
    return parser


def add_adapt_args(parser: argparse.ArgumentParser) -> None:
    """Options of per-scan adaptation (``--adapt``)."""
    group = parser.add_argument_group("adapting the model to this scan")
    group.add_argument("--adapt", action="store_true",
                       help="first fine-tune a copy of the model on this scan's own in-plane detail (the shipped "
                            "weights are not changed; the pretrained model is kept if adaptation does not help)")
    group.add_argument("--adapt-steps", type=positive_int, metavar="N",
                       help=f"optimizer steps at most (default {AdaptOptions.steps})")
    group.add_argument("--adapt-seconds", type=positive_float, metavar="S",
                       help=f"time budget of the fine-tuning in seconds (default {AdaptOptions.seconds:g}; with "
                            "--adapt-steps alone: no time limit)")
    group.add_argument("--adapt-profile", choices=PROFILES, default=AdaptOptions.profile,
                       help="slice profile of the input: rect, gaussian or auto (estimated); default rect")
    group.add_argument("--save-adapted", type=Path, metavar="PATH",
                       help="save the weights used (adapted or pretrained) and the run's settings to PATH (.pt)")


def add_diffusion_args(parser: argparse.ArgumentParser) -> None:
    """Options of a diffusion model (refused for the other kinds)."""
    group = parser.add_argument_group("diffusion models (--model diffusion or a diffusion model's name)")
    group.add_argument("--steps", type=positive_int, metavar="N", help="sampling steps (default: the model's)")
    group.add_argument("--samples", type=positive_int, metavar="K",
                       help="samples to draw; OUT is their mean (default: the model's)")
    group.add_argument("--seed", type=non_negative_int, metavar="S", help="random seed (default 0)")
    group.add_argument("--uncertainty", metavar="STD_OUT",
                       help="also write the calibrated per-voxel standard deviation (float32 HU, same grid) here")


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def check_diffusion_args(args: argparse.Namespace, task: str = "sr") -> str:
    """Resolve the model of ``task`` (an unknown one fails before the input is read), refuse diffusion options
    for a model of another kind, and an unusable STD_OUT, before any work; return the model's name.

    Raises:
        InputError: one line naming the option.
    """
    spec = resolve_model(args.model, task=task)
    given = [name for name in ("steps", "samples", "seed", "uncertainty") if getattr(args, name) is not None]
    if given and spec.kind is not ModelKind.DIFFUSION:
        raise InputError(f"--{given[0]} applies to diffusion models only (--model diffusion or a diffusion "
                         f"model's name), not to {args.model!r}")
    if args.uncertainty is not None:
        refuse_same_path(args.input, args.uncertainty)
        if Path(args.uncertainty).resolve() == Path(args.output).resolve():
            raise InputError("--uncertainty must name another file than OUT")
        check_output_path(args.uncertainty, overwrite=args.overwrite)
    return spec.name


def adapt_options(args: argparse.Namespace) -> AdaptOptions | None:
    """The adaptation options of the command line (``None`` without ``--adapt``).

    Raises:
        InputError: an adaptation option without ``--adapt``.
    """
    given = [name for name in ("adapt_steps", "adapt_seconds", "save_adapted") if getattr(args, name) is not None]
    if not args.adapt:
        if given or args.adapt_profile != AdaptOptions.profile:
            shown = given[0] if given else "adapt_profile"
            raise InputError(f"--{shown.replace('_', '-')} needs --adapt")
        return None
    seconds = args.adapt_seconds
    if seconds is None and args.adapt_steps is None:
        seconds = AdaptOptions.seconds
    return AdaptOptions(steps=args.adapt_steps or AdaptOptions.steps, seconds=seconds, profile=args.adapt_profile,
                        save_path=args.save_adapted)


def run(args: argparse.Namespace) -> int:
    refuse_same_path(args.input, args.output)
    check_output_path(args.output, overwrite=args.overwrite)
    check_diffusion_args(args)
    start = time.perf_counter()
    adapt = adapt_options(args)
    volume = read_volume(args.input, **read_options(args))
    options = EnhanceOptions(target_spacing=args.target_spacing, model=args.model,
                             input_thickness=args.input_thickness, input_profile=args.input_profile,
                             estimate_profile=args.estimate_profile, consistency=not args.no_consistency,
                             device=args.device, steps=args.steps,
                             samples=args.samples, seed=args.seed)
    with tqdm(total=100, desc="enhance", unit="%", disable=args.quiet, leave=False) as bar:
        def progress(fraction: float, stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update(round(fraction * 100) - bar.n)

        if adapt is None:
            result, details = enhance_detailed(volume, options, progress)
        else:
            result, details = enhance_adapted(volume, options, adapt, progress)
    uncertainty = details.pop("uncertainty", None)
    generated = details.get("diffusion")
    description = None if generated is None else f"AI-generated detail, diffusion {details['model']}"[:64]
    write_volume(result, args.output, dtype=args.dtype, overwrite=args.overwrite, series_description=description)
    report = {"output": str(args.output), "model": args.model, "geometry": result.geometry_dict(),
              "seconds": round(time.perf_counter() - start, 2), "findings": result.findings,
              "data_consistency": details["data_consistency"]}
    if generated is not None:
        report["diffusion"] = generated
    if uncertainty is not None and args.uncertainty is not None:
        write_volume(uncertainty, args.uncertainty, dtype="float32", overwrite=args.overwrite,
                     series_description=f"uncertainty (std HU), diffusion {details['model']}"[:64])
        report["uncertainty"] = str(args.uncertainty)
    if "adaptation" in details:
        report["adaptation"] = details["adaptation"]
        if not details["adaptation"]["adapted"]:
            logging.getLogger("ctsr_models.cli").warning("%s", details["adaptation"]["message"])
        if args.save_adapted is not None:
            report["adaptation"]["saved"] = str(args.save_adapted)
    print_json(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)
