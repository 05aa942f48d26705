"""``ctsr-degrade IN OUT [--dose D] [--thickness MM]``: simulate a lower-dose and/or thick-slice scan.

With both, the dose is simulated first, on the thin slices (the noise of the acquisition, see
:mod:`ctsr_models.physics.dose`), and the slabs are then formed from the noisy thin slices, as a scanner
reconstructs thick slices from the same low-dose raw data.
"""
from __future__ import annotations

import argparse

from ctsr_models.io import read_volume, write_volume
from ctsr_models.io.errors import InputError
from ctsr_models.io.volume import Volume
from ctsr_models.physics import PROFILES, DoseSettings, simulate_low_dose, simulate_thick_slices
from ctsr_models.physics.dose import DEFAULT_PHOTONS, DEFAULT_VIEWS, FILTERS

from .common import (add_common_args, add_read_args, add_write_args, check_output_path, non_negative_float,
                     positive_float, positive_int, print_json, read_options, refuse_same_path, run_cli)

_THICK_OPTIONS = {"spacing": "--spacing", "profile": "--profile", "noise_hu": "--noise-hu"}
_DOSE_OPTIONS = {"photons": "--photons", "electronic_noise": "--electronic-noise", "views": "--views",
                 "filter_name": "--filter"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctsr-degrade", description=__doc__.splitlines()[0].split(": ", 1)[1],
                                     epilog="With --dose and --thickness, the dose is simulated first, on the thin "
                                            "slices, then the slabs are formed from them.")
    parser.add_argument("input", help="thin-slice CT: DICOM folder/ZIP/file or NIfTI/NRRD/MHA")
    parser.add_argument("output", help="output .nii.gz/.nrrd/.mha file, or a folder for a DICOM series")
    dose = parser.add_argument_group("lower dose (noise insertion, see docs/dose.md)")
    dose.add_argument("--dose", type=float, metavar="D", help="dose fraction of the simulated scan, in (0, 1]")
    dose.add_argument("--photons", type=positive_float, metavar="N",
                      help=f"incident photons per ray of the input scan (default {DEFAULT_PHOTONS:g})")
    dose.add_argument("--electronic-noise", type=non_negative_float, metavar="SD",
                      help="electronic noise SD per ray, in photons (default 0)")
    dose.add_argument("--views", type=positive_int, metavar="V",
                      help=f"simulated views over 180 degrees (default {DEFAULT_VIEWS}); sets the cost, "
                           "not the noise level")
    dose.add_argument("--filter", choices=FILTERS, dest="filter_name",
                      help="FBP filter of the inserted noise (default ramp; hann is closer to a soft-tissue kernel)")
    thick = parser.add_argument_group("thick slices")
    thick.add_argument("--thickness", type=positive_float, metavar="MM", help="slab thickness (mm)")
    thick.add_argument("--spacing", type=positive_float, metavar="MM",
                       help="distance between slab centres (mm); default: the thickness")
    thick.add_argument("--profile", choices=PROFILES,
                       help="slice-sensitivity profile: rect (box, default) or gaussian (FWHM = thickness)")
    thick.add_argument("--noise-hu", type=non_negative_float, metavar="SD",
                       help="add Gaussian noise of this SD (HU) to the slabs")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    add_write_args(parser)
    add_read_args(parser)
    add_common_args(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    refuse_same_path(args.input, args.output)
    check_output_path(args.output, overwrite=args.overwrite)
    settings = _dose_settings(args)
    volume = read_volume(args.input, **read_options(args))
    volume = _simulate(volume, args, settings)
    write_volume(volume, args.output, dtype=args.dtype, overwrite=args.overwrite,
                 series_description=_description(args))
    print_json({"output": str(args.output), "geometry": volume.geometry_dict(), "findings": volume.findings})
    return 0


def _dose_settings(args: argparse.Namespace) -> DoseSettings | None:
    """Check the combination of options before any work; the dose settings, or None without ``--dose``."""
    if args.dose is None and args.thickness is None:
        raise InputError("nothing to simulate: give --dose FRACTION, --thickness MM, or both")
    for options, needs in ((_THICK_OPTIONS, "--thickness"), (_DOSE_OPTIONS, "--dose")):
        given = [flag for name, flag in options.items() if getattr(args, name) is not None]
        if given and getattr(args, needs.lstrip("-")) is None:
            raise InputError(f"{given[0]} only applies with {needs}")
    if args.dose is None:
        return None
    if args.noise_hu is not None:
        raise InputError("--noise-hu adds made-up Gaussian noise; with --dose the noise comes from the dose: "
                         "give one of them")
    if not (0.0 < args.dose <= 1.0):  # also false for nan
        raise InputError(f"--dose must be a fraction in (0, 1], got {args.dose:g}")
    return DoseSettings(args.dose, photons=args.photons or DEFAULT_PHOTONS,
                        electronic_noise=args.electronic_noise or 0.0, views=args.views or DEFAULT_VIEWS,
                        filter_name=args.filter_name or "ramp")


def _simulate(volume: Volume, args: argparse.Namespace, settings: DoseSettings | None) -> Volume:
    """Dose first, on the thin slices, then the slabs (module docstring)."""
    if settings is not None:
        volume = simulate_low_dose(volume, settings, seed=args.seed, progress=not args.quiet)
    if args.thickness is not None:
        volume = simulate_thick_slices(volume, thickness=args.thickness, spacing=args.spacing,
                                       profile=args.profile or "rect", noise_hu=args.noise_hu or 0.0,
                                       seed=args.seed)
    return volume


def _description(args: argparse.Namespace) -> str:
    parts = [] if args.dose is None else [f"simulated {100 * args.dose:g}% dose"]
    if args.thickness is not None:
        parts.append(f"simulated {args.thickness:g} mm slabs")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)
