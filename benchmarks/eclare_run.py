"""Run ECLARE (``pip install eclare``, its own virtual environment) on one NIfTI file, on the CPU if need be.

ECLARE's training and inference call ``torch.amp.autocast("cuda")`` and ``GradScaler("cuda")``; without
a GPU, torch disables both with a warning per call. This wrapper turns them into no-ops on a CPU-only
machine (the same arithmetic, float32, without the warnings) and runs ECLARE's own command line; no
ECLARE code is copied here. It writes ``<stem>_eclare.nii.gz`` and ``<stem>_eclare.json`` (wall time,
peak RSS) into ``OUT_DIR``.

Run with ECLARE's interpreter, e.g.::

    /work/eclare-venv/bin/python benchmarks/eclare_run.py IN.nii.gz OUT_DIR --n-patches 64000
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from pathlib import Path


def patch_cpu_amp() -> bool:
    """Make ``torch.amp.autocast("cuda")`` and ``GradScaler("cuda")`` quiet no-ops when CUDA is absent."""
    import torch

    if torch.cuda.is_available():
        return False
    real_autocast, real_scaler = torch.amp.autocast, torch.amp.GradScaler

    def autocast(device_type: str, *args, **kwargs):  # noqa: ANN001, ANN202 - mirrors torch's signature
        if device_type == "cuda":
            return contextlib.nullcontext()
        return real_autocast(device_type, *args, **kwargs)

    def grad_scaler(device: str = "cuda", *args, **kwargs):  # noqa: ANN001, ANN202
        return real_scaler("cpu" if device == "cuda" else device, *args, **{**kwargs, "enabled": False})

    torch.amp.autocast, torch.amp.GradScaler = autocast, grad_scaler
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="thick-slice NIfTI")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n-patches", type=int, default=1_000_000, help="ECLARE's training budget (its default 1e6)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--slice-thickness", type=float, default=None,
                        help="relative slice thickness (slab thickness / in-plane pixel); default: ESPRESO estimates it")
    parser.add_argument("--profile", default="rect", help="relative slice profile type when --slice-thickness is given")
    args = parser.parse_args()
    patched = patch_cpu_amp()
    from eclare.main import main as eclare_main

    argv = ["--in-fpath", str(args.input), "--out-dir", str(args.out_dir), "--n-patches", str(args.n_patches),
            "--batch-size", str(args.batch_size), "--gpu-id", "0"]
    if args.slice_thickness is not None:
        argv += ["--relative-slice-thickness", str(args.slice_thickness),
                 "--relative-slice-profile-type", args.profile]
    start = time.perf_counter()
    eclare_main(argv)
    seconds = time.perf_counter() - start
    stem = args.input.name.split(".nii")[0]
    report = {"input": args.input.name, "output": f"{stem}_eclare.nii.gz", "seconds": seconds,
              "n_patches": args.n_patches, "batch_size": args.batch_size, "cpu_amp_patched": patched,
              "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              "slice_thickness": args.slice_thickness, "profile": args.profile if args.slice_thickness else "espreso"}
    (args.out_dir / f"{stem}_eclare.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
