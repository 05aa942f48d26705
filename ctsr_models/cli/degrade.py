"""``ctsr-degrade IN OUT --thickness MM``: simulate a thick-slice scan from a thin one, in physical space."""
from __future__ import annotations

import argparse

from ctsr_models.io import read_volume, write_volume
from ctsr_models.physics import PROFILES, simulate_thick_slices

from .common import (add_common_args, add_read_args, add_write_args, non_negative_float, positive_float, print_json,
                     read_options, refuse_same_path, run_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctsr-degrade", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("input", help="thin-slice CT: DICOM folder/ZIP/file or NIfTI/NRRD/MHA")
    parser.add_argument("output", help="output .nii.gz/.nrrd/.mha file, or a folder for a DICOM series")
    parser.add_argument("--thickness", type=positive_float, required=True, metavar="MM", help="slab thickness (mm)")
    parser.add_argument("--spacing", type=positive_float, metavar="MM",
                        help="distance between slab centres (mm); default: the thickness")
    parser.add_argument("--profile", choices=PROFILES, default="rect",
                        help="slice-sensitivity profile: rect (box) or gaussian (FWHM = thickness)")
    parser.add_argument("--noise-hu", type=non_negative_float, default=0.0, metavar="SD",
                        help="add Gaussian noise of this SD (HU)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    add_write_args(parser)
    add_read_args(parser)
    add_common_args(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    refuse_same_path(args.input, args.output)
    thin = read_volume(args.input, **read_options(args))
    thick = simulate_thick_slices(thin, thickness=args.thickness, spacing=args.spacing, profile=args.profile,
                                  noise_hu=args.noise_hu, seed=args.seed)
    write_volume(thick, args.output, dtype=args.dtype, overwrite=args.overwrite,
                 series_description=f"simulated {args.thickness:g} mm slabs")
    print_json({"output": str(args.output), "geometry": thick.geometry_dict(), "findings": thick.findings})
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)
