"""``ctsr-drr CT OUT_DIR``: simulate radiographs (digitally reconstructed radiographs) of a CT.

For each view, a point-source projection of the CT's attenuation onto a flat detector centred on the
isocentre (default: the centre of the CT's box). OUT_DIR receives ``<view>.dcm`` (DICOM DX of the
log-domain line integrals, exact geometry inside), ``<view>.png`` (16-bit preview) with its
``<view>.geometry.json`` sidecar, and ``geometry.json`` (all views), atomically.
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
from tqdm import tqdm

from ctsr_models.io import InputError, Radiograph, Volume, read_volume, write_radiograph
from ctsr_models.io.atomic import atomic_dir
from ctsr_models.io.radiograph import sidecar_path
from ctsr_models.physics import (EFFECTIVE_ENERGY_KEV, ProjectionGeometry, VolumeGrid, drr, save_geometries,
                                 view_name)
from ctsr_models.io.xray_geometry import DEFAULT_SID_MM, DEFAULT_SOD_MM

from .common import (add_common_args, add_read_args, check_output_path, positive_float, positive_int, print_json,
                     read_options, refuse_same_path, run_cli)

log = logging.getLogger(__name__)

DEFAULT_VIEWS = "pa,lateral"
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_DETECTOR_PX = 256
DEFAULT_FIELD_MM = 400.0
"""Field of view at the isocentre covered by the detector when ``--pixel-mm`` is not given."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctsr-drr", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("input", help="CT: DICOM folder/ZIP/file or NIfTI/NRRD/MHA")
    parser.add_argument("output", help="folder to create for the radiographs")
    parser.add_argument("--views", type=views_list, default=DEFAULT_VIEWS,
                        help=f"comma-separated views: pa, ap, lateral (= ll), ll, rl (default {DEFAULT_VIEWS})")
    parser.add_argument("--sid", type=positive_float, default=DEFAULT_SID_MM, metavar="MM",
                        help=f"source-to-detector distance (default {DEFAULT_SID_MM:g})")
    parser.add_argument("--sod", type=positive_float, default=DEFAULT_SOD_MM, metavar="MM",
                        help=f"source-to-isocentre distance (default {DEFAULT_SOD_MM:g})")
    parser.add_argument("--detector-px", type=positive_int, default=DEFAULT_DETECTOR_PX, metavar="N",
                        help=f"detector rows = columns (default {DEFAULT_DETECTOR_PX})")
    parser.add_argument("--pixel-mm", type=positive_float, metavar="MM",
                        help=f"detector pixel size (default: the detector covers {DEFAULT_FIELD_MM:g} mm at the "
                             "isocentre)")
    parser.add_argument("--isocentre", type=isocentre_arg, default="auto", metavar="auto|X,Y,Z",
                        help="LPS point (mm) on every central ray (default auto: the centre of the CT's box)")
    parser.add_argument("--step-mm", type=positive_float, metavar="MM",
                        help="sampling step along each ray (default half the smallest voxel size)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where to project (default auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    add_read_args(parser)
    add_common_args(parser)
    return parser


def views_list(text: str) -> list[str]:
    """argparse type: comma-separated view names, each known and given once."""
    names = [v.strip().lower() for v in text.split(",") if v.strip()]
    try:
        canonical = [view_name(v) for v in names]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not names or len(set(canonical)) != len(canonical):
        raise argparse.ArgumentTypeError(f"{text!r}: give each view once (e.g. pa,lateral)")
    return names


def isocentre_arg(text: str) -> tuple[float, float, float] | None:
    """argparse type: ``auto`` (None) or ``x,y,z`` in mm."""
    if text.strip().lower() == "auto":
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not np.all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"{text!r}: use auto or three numbers x,y,z (mm, LPS)")
    return values  # type: ignore[return-value]


def box_centre(volume: Volume) -> tuple[float, float, float]:
    """LPS centre of a volume's box (midway between the first and last voxel centres)."""
    half = (np.asarray(volume.shape[::-1], dtype=np.float64) - 1) / 2
    return tuple(float(v) for v in volume.index_to_physical(half))


def projection_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is refused. (Not
    :func:`ctsr_models.inference.pick_device`: importing the inference package loads MONAI, seconds
    this command does not need.)"""
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(args: argparse.Namespace) -> int:
    refuse_same_path(args.input, args.output)
    check_output_path(args.output, kind="folder", overwrite=args.overwrite)
    if not args.sod < args.sid:
        raise ValueError(f"--sod ({args.sod:g} mm) must be less than --sid ({args.sid:g} mm)")
    start = time.perf_counter()
    volume = read_volume(args.input, **read_options(args))
    isocentre = args.isocentre if args.isocentre is not None else box_centre(volume)
    pixel_mm = args.pixel_mm or DEFAULT_FIELD_MM * args.sid / args.sod / args.detector_px
    device = projection_device(args.device)
    grid = VolumeGrid.of(volume)
    written: list[str] = []
    ranges: dict[str, list[float]] = {}
    geometries: dict[str, ProjectionGeometry] = {}
    with atomic_dir(args.output, overwrite=args.overwrite) as tmp:
        for name in tqdm(args.views, desc="drr", unit="view", disable=args.quiet, leave=False):
            geometry = ProjectionGeometry.standard(name, sid=args.sid, sod=args.sod, shape=(args.detector_px,) * 2,
                                                   pixel_mm=pixel_mm, isocentre=isocentre)
            image = drr(volume.array, grid, geometry, step_mm=args.step_mm, device=device)
            rad = Radiograph(image, geometry, "line_integral", dict(volume.meta),
                             [f"DRR at {EFFECTIVE_ENERGY_KEV:g} keV effective energy"], isocentre)
            write_radiograph(rad, tmp / f"{name}.dcm")
            write_radiograph(rad, tmp / f"{name}.png")
            written += [f"{name}.dcm", f"{name}.png", sidecar_path(f"{name}.png").name]
            geometries[name] = geometry
            ranges[name] = [float(image.min()), float(image.max())]
            log.info("%s: line integrals %.3f to %.3f", name, *ranges[name])
        save_geometries(geometries, tmp / "geometry.json")
        written.append("geometry.json")
    print_json({"output": str(args.output), "files": written, "isocentre": list(isocentre), "sid": args.sid,
                "sod": args.sod, "pixel_mm": pixel_mm, "device": str(device),
                "line_integral_range": ranges,
                "seconds": round(time.perf_counter() - start, 2), "findings": volume.findings})
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)
