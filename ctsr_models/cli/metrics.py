"""``ctsr-metrics PRED REF``: score a prediction against a reference CT on the reference grid, as JSON.

Convention: HU clipped to [-1024, 3071] -> [0, 1], data range 1; PSNR, SSIM 3D (Gaussian sigma 1.5),
mean axial 2D SSIM, MAE in HU inside the body (reference > -500 HU), PSNR in the [-1000, 1000] window.
Only reference slices inside the z-range both volumes cover are scored, less ``--border-mm`` at each end.
"""
from __future__ import annotations

import argparse

from ctsr_models.io import read_volume
from ctsr_models.metrics import compare_volumes

from .common import add_common_args, add_read_args, non_negative_float, print_json, read_options, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctsr-metrics", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pred", help="the volume to score")
    parser.add_argument("ref", help="the reference (ground truth) volume")
    parser.add_argument("--border-mm", type=non_negative_float, default=0.0, metavar="MM",
                        help="leave this many mm out at each end of the common z-range (default 0)")
    add_read_args(parser)
    add_common_args(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    opts = read_options(args)
    pred, ref = read_volume(args.pred, **opts), read_volume(args.ref, **opts)
    print_json(compare_volumes(pred, ref, border_mm=args.border_mm))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)
