"""``ctsr-info IN``: geometry, intensity range and geometry findings of a CT input, as JSON.

A series whose geometry is irregular is reported (``"regular": false`` with its findings), not
refused: finding such problems is this command's job. Unreadable input exits with status 2.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ctsr_models.io import GeometryError, Volume, file_suffix, list_dicom_series, read_volume

from .common import add_common_args, add_read_args, print_json, read_options, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctsr-info", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("input", help="DICOM folder or study ZIP, DICOM file, or NIfTI/NRRD/MHA file")
    add_read_args(parser)
    add_common_args(parser)
    return parser


def describe(path: str | Path, **read_opts: Any) -> dict[str, Any]:
    """Everything ``ctsr-info`` prints, as a dict (no patient data)."""
    path = Path(path)
    is_series = path.is_dir() or path.suffix.lower() == ".zip"
    report: dict[str, Any] = {"input": path.name, "format": file_suffix(path).lstrip(".") or "dicom"}
    if is_series:
        series = list_dicom_series(path)
        report["series"] = [vars(s) for s in series]
        if len(series) > 1 and not read_opts.get("series_uid"):
            report["message"] = "several series: choose one with --series-uid"
            return report
    try:
        volume = read_volume(path, **read_opts)
    except GeometryError as exc:
        report.update(regular=False, findings=exc.findings, message=str(exc))
        return report
    report.update(regular=True, geometry=volume.geometry_dict(), hu=hu_stats(volume), findings=volume.findings)
    return report


def hu_stats(volume: Volume) -> dict[str, float]:
    """Min, max, mean and 1st/99th percentiles of the voxel values (HU)."""
    a = volume.array
    p1, p99 = np.percentile(a[:: max(1, a.shape[0] // 32)], [1, 99])
    return {"min": float(a.min()), "max": float(a.max()), "mean": round(float(a.mean(dtype=np.float64)), 3),
            "p1": float(p1), "p99": float(p99)}


def run(args: argparse.Namespace) -> int:
    print_json(describe(args.input, **read_options(args)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)
