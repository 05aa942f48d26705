"""``ctsr-enhance IN OUT``: through-plane super-resolution of a thick-slice CT to thin slices."""
from __future__ import annotations

import argparse
import time

from tqdm import tqdm

from ctsr_models.inference import DEVICES, EnhanceOptions, available_models, enhance
from ctsr_models.io import read_volume, write_volume

from .common import (add_common_args, add_read_args, add_write_args, positive_float, print_json, read_options,
                     refuse_same_path, run_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctsr-enhance", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("input", help="thick-slice CT: DICOM folder/ZIP/file or NIfTI/NRRD/MHA")
    parser.add_argument("output", help="output .nii.gz/.nrrd/.mha file, or a folder for a derived DICOM series")
    parser.add_argument("--target-spacing", type=positive_float, default=1.0, metavar="MM",
                        help="output slice spacing (default 1 mm)")
    parser.add_argument("--input-thickness", type=positive_float, metavar="MM",
                        help="slab thickness of the input (default: from the header, else the slice spacing)")
    parser.add_argument("--model", default="default", help=f"one of: {', '.join(available_models())}")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where the network runs (default auto)")
    add_write_args(parser)
    add_read_args(parser)
    add_common_args(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    refuse_same_path(args.input, args.output)
    start = time.perf_counter()
    volume = read_volume(args.input, **read_options(args))
    options = EnhanceOptions(target_spacing=args.target_spacing, model=args.model,
                             input_thickness=args.input_thickness, device=args.device)
    with tqdm(total=100, desc="enhance", unit="%", disable=args.quiet, leave=False) as bar:
        def progress(fraction: float, stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update(round(fraction * 100) - bar.n)

        result = enhance(volume, options, progress)
    write_volume(result, args.output, dtype=args.dtype, overwrite=args.overwrite)
    print_json({"output": str(args.output), "model": args.model, "geometry": result.geometry_dict(),
                "seconds": round(time.perf_counter() - start, 2), "findings": result.findings})
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)
