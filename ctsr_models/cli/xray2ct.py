"""``ctsr-xray2ct FRONTAL LATERAL OUT``: a CT-like volume from a frontal and a lateral radiograph."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from ctsr_models.inference import DEVICES
from ctsr_models.inference.models import available_models
from ctsr_models.inference.xray2ct import TASK, XrayOptions, reconstruct
from ctsr_models.io import write_volume
from ctsr_models.io.radiograph import Radiograph, read_radiograph
from ctsr_models.physics import load_geometries

from .common import (add_common_args, add_write_args, check_output_path, positive_float, print_json, refuse_same_path,
                     run_cli)

GEOMETRY_KEYS = {"frontal": ("frontal", "pa", "ap"), "lateral": ("lateral", "ll", "rl")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctsr-xray2ct", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("frontal", help="frontal (PA or AP) radiograph: DICOM DX/CR/CT localizer, PNG or JPG")
    parser.add_argument("lateral", help="lateral radiograph, same formats")
    parser.add_argument("output", help="output .nii.gz/.nrrd/.mha file, or a folder for a derived DICOM series")
    parser.add_argument("--geometry", metavar="FILE",
                        help="JSON with the projection geometry of each view under 'frontal' and 'lateral' (as "
                             "ctsr-drr writes it); default: from the DICOM tags, else standard chest views")
    parser.add_argument("--frontal-view", default="pa", choices=("pa", "ap"),
                        help="view of the frontal image when its file does not say (default pa)")
    parser.add_argument("--sid", type=positive_float, metavar="MM",
                        help="source-to-detector distance when the files do not say")
    parser.add_argument("--sod", type=positive_float, metavar="MM",
                        help="source-to-patient (isocentre) distance when the files do not say")
    parser.add_argument("--pixel-mm", type=positive_float, metavar="MM",
                        help="detector pixel size when the files do not say (PNG/JPG)")
    parser.add_argument("--model", default="default", help=f"one of: {', '.join(available_models(TASK)) or 'none'}")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where the network runs (default auto)")
    parser.add_argument("--refine-steps", type=int, default=XrayOptions.refine_steps, metavar="N",
                        help=f"projection-consistency refinement steps, 0 to switch it off "
                             f"(default {XrayOptions.refine_steps})")
    parser.add_argument("--output-size", type=int, metavar="N",
                        help="output voxels per axis over the model's field (models with a point decoder only; "
                             "default: the model's own)")
    parser.add_argument("--no-pair-check", action="store_true",
                        help="do not refuse impossible pairs (same picture, same view, not radiographs, different "
                             "bodies); research use only")
    add_write_args(parser)
    add_common_args(parser)
    return parser


def read_pair(args: argparse.Namespace) -> tuple[Radiograph, Radiograph]:
    """The two radiographs with the geometry the options give them."""
    given = load_geometries(args.geometry) if args.geometry else {}
    rads = []
    for role, path, view in (("frontal", args.frontal, args.frontal_view), ("lateral", args.lateral, "lateral")):
        geometry = next((given[k] for k in GEOMETRY_KEYS[role] if k in given), None)
        if args.geometry and geometry is None:
            raise ValueError(f"the geometry file has no '{role}' entry")
        rads.append(read_radiograph(path, geometry=geometry, sid=args.sid, sod=args.sod, pixel_mm=args.pixel_mm,
                                    fallback_view=view))
    return rads[0], rads[1]


def run(args: argparse.Namespace) -> int:
    for source in (args.frontal, args.lateral):
        refuse_same_path(source, args.output)
    check_output_path(args.output, overwrite=args.overwrite)
    start = time.perf_counter()
    frontal, lateral = read_pair(args)
    options = XrayOptions(model=args.model, device=args.device, refine_steps=args.refine_steps,
                           check_pair=not args.no_pair_check, output_size=args.output_size)
    with tqdm(total=100, desc="xray2ct", unit="%", disable=args.quiet, leave=False) as bar:
        def progress(fraction: float, stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update(round(fraction * 100) - bar.n)

        result = reconstruct(frontal, lateral, options, progress)
    write_volume(result.volume, args.output, dtype=args.dtype, overwrite=args.overwrite,
                 series_description="CT Enhance X-ray to CT (estimate)")
    print_json({"output": str(Path(args.output)), "model": args.model, "geometry": result.volume.geometry_dict(),
                "projection_consistency_db": result.consistency, "timings_s": result.timings_s,
                "seconds": round(time.perf_counter() - start, 2), "findings": result.volume.findings})
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)
