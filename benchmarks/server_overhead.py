"""What the MONAI Label server adds to an inference: client wall time minus the task's inference time.

One real server (``monailabel start_server --app monailabel_app``, started as the tests start it) on
127.0.0.1 enhances a 512x512x60 CT with 5 mm slabs (the first 60 slabs simulated from the sample chest
CT, ``ctsr-sample``) to 1 mm (512x512x300). For each model the client uploads the CT as int16 NIfTI
(``file`` form field), receives the int16 ``.nrrd`` result and its JSON (``output=image``: the file
streamed, the JSON in the ``X-CTSR-Result`` header; or ``output=all``: MONAI Label's multipart), and
compares its own wall time with the ``timings_s`` the task reports:

    overhead = client wall time - inference     (upload, read, write, response, HTTP)

Models: the baselines ``linear`` and ``cubic``, and the shipped network ``default``. With ``--formats`` it also times ``write_volume`` of the
512x512x300 result as ``.nrrd``, ``.nii`` and ``.nii.gz`` (int16 and float32).

Run: ``.venv/bin/python benchmarks/server_overhead.py [--models linear,cubic,default] [--outputs image,all]
[--repeats 3] [--formats] [--out docs/benchmarks.md]``. Prints one JSON line per measurement.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch

from ctsr_models.inference import read_manifest
from ctsr_models.io import Volume, read_volume, write_volume
from ctsr_models.io.sample_data import sample_ct
from ctsr_models.physics import simulate_thick_slices

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from server_fixture import running_server  # noqa: E402  (the tests' way of starting the real server)

from report import write_section  # noqa: E402

log = logging.getLogger("server_overhead")
TASK = "ct_super_resolution"
N_SLABS, THICKNESS, TARGET = 60, 5.0, 1.0
TARGET_PCT = 15.0


def job_input(folder: Path) -> Path:
    """The 512x512x60 5 mm CT (int16 NIfTI) the client uploads."""
    thick = simulate_thick_slices(read_volume(sample_ct()), THICKNESS)
    thick = thick.replace(array=thick.array[:N_SLABS])
    path = folder / "thick_5mm.nii.gz"
    write_volume(thick, path)
    return path


def one_request(url: str, upload: Path, model: str, out: Path, output: str) -> dict[str, Any]:
    """Time one upload-enhance-download round trip; return the client's and the task's numbers.

    ``output="image"`` streams the result to disk and takes the JSON from the ``X-CTSR-Result`` header;
    ``output="all"`` is MONAI Label's multipart answer (image and JSON in one body, built in memory).
    """
    start = time.perf_counter()
    with upload.open("rb") as f:
        response = requests.post(f"{url}/infer/{TASK}", params={"output": output},
                                 data={"params": json.dumps({"target_spacing": TARGET, "model": model})},
                                 files={"file": (upload.name, f)}, timeout=7200, stream=True)
    response.raise_for_status()
    if output == "image":
        result = json.loads(response.headers["X-CTSR-Result"])
        with out.open("wb") as f:
            for chunk in response.iter_content(chunk_size=1 << 20):
                f.write(chunk)
    else:
        result = _save_multipart(response, out)
    wall = time.perf_counter() - start
    task = result["timings_s"]
    return {"model": model, "output": output, "wall_s": wall, "inference_s": task["inference"],
            "overhead_s": wall - task["inference"], "read_s": task["read"], "write_s": task["write"],
            "http_s": wall - task["total"], "output_size": result["output"]["geometry"]["size_xyz"],
            "result_mb": out.stat().st_size / 1e6}


def _save_multipart(response: requests.Response, out: Path) -> dict[str, Any]:
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    result: dict[str, Any] = {}
    for part in MultipartDecoder.from_response(response).parts:
        if b'name="params"' in part.headers[b"Content-Disposition"]:
            result = json.loads(part.content)
        else:
            out.write_bytes(part.content)
    return result


def measure_server(upload: Path, models: list[str], outputs: list[str], repeats: int, env: dict[str, str],
                   folder: Path) -> list[dict]:
    """Median numbers per model (the first request of each model is a warm-up when ``repeats`` > 1)."""
    studies = folder / "studies"
    studies.mkdir(exist_ok=True)
    rows = []
    with running_server(studies, env=env, workdir=folder / "server") as server:
        for model, output in [(m, o) for m in models for o in outputs]:
            runs = [one_request(server.url, upload, model, folder / "result.nrrd", output)
                    for _ in range(repeats + (1 if repeats > 1 else 0))]
            runs = runs[1:] if repeats > 1 else runs
            row = {k: statistics.median(r[k] for r in runs) if isinstance(runs[0][k], float) else runs[0][k]
                   for k in runs[0]}
            row["overhead_pct"] = 100 * row["overhead_s"] / row["inference_s"]
            row["runs"] = len(runs)
            sys.stdout.write(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}) + "\n")
            rows.append(row)
    return rows


def measure_formats(result: Path, folder: Path) -> list[dict]:
    """Seconds and MB to write the 512x512x300 result in each format and type (best of 2)."""
    volume = read_volume(result)
    volume = volume.replace(array=volume.array.astype(np.float32))
    rows = []
    for dtype in ("int16", "float32"):
        for ext in (".nrrd", ".nii", ".nii.gz"):
            path = folder / f"w{ext}"
            seconds = min(_timed_write(volume, path, dtype) for _ in range(2))
            rows.append({"dtype": dtype, "extension": ext, "seconds": seconds, "mb": path.stat().st_size / 1e6})
            sys.stdout.write(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                         for k, v in rows[-1].items()}) + "\n")
            path.unlink()
    return rows


def _timed_write(volume: Volume, path: Path, dtype: str) -> float:
    start = time.perf_counter()
    write_volume(volume, path, dtype=dtype)
    return time.perf_counter() - start


def report(rows: list[dict], formats: list[dict], model_note: str, command: str, load: float) -> str:
    """The server section of ``docs/benchmarks.md`` (``load``: the 1-minute load average when measuring ended)."""
    lines = [
        "## Server overhead (MONAI Label, `ct_super_resolution`)", "",
        f"Command: `{command}`  ",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), CPU only; 1-minute load average when measuring ended {load:.1f} "
        "(other jobs may share the machine: compare rows of one run, not runs).  ",
        f"Job: 512x512x{N_SLABS} CT, {THICKNESS:g} mm slabs (simulated from the sample chest CT), enhanced to "
        f"{TARGET:g} mm (512x512x300), uploaded as int16 `.nii.gz`, result int16 `.nrrd`. "
        "Overhead = client wall time - the task's inference time (read + write + upload/download + HTTP).  ",
        model_note, "",
        "| model | output | client wall s | inference s | overhead s | overhead / inference | read s | write s | "
        "HTTP+transfer s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | `{r['output']}` | {r['wall_s']:.2f} | {r['inference_s']:.2f} | "
                     f"{r['overhead_s']:.2f} | {r['overhead_pct']:.1f} % | {r['read_s']:.2f} | {r['write_s']:.2f} | "
                     f"{r['http_s']:.2f} |")
    streamed = [r for r in rows if r["output"] == "image"]
    if streamed:
        lo, hi = min(r["overhead_s"] for r in streamed), max(r["overhead_s"] for r in streamed)
        write = statistics.median(r["write_s"] for r in streamed)
        lines += ["", f"The overhead hardly depends on the model ({lo:.1f}-{hi:.1f} s with `output=image`); "
                      f"writing the int16 result takes {write:.1f} s of it. An inference longer than "
                      f"{100 / TARGET_PCT:.1f} times the overhead meets the target, as the network does; the "
                      "interpolation baselines take only a few seconds, so the fixed overhead weighs on them."]
    lines += ["", f"Target: overhead ≤ {TARGET_PCT:g} % of inference on CPU (streamed `output=image`)."]
    for r in streamed:
        verdict = "met" if r["overhead_pct"] <= TARGET_PCT else "not met"
        lines.append(f"- `{r['model']}`: {r['overhead_s']:.1f} s overhead against {r['inference_s']:.1f} s of "
                     f"inference ({r['overhead_pct']:.1f} %): {verdict}.")
    if formats:
        lines += ["", "Writing the 512x512x300 result (`ctsr_models.io.write_volume`, best of 2):", "",
                  "| type | format | seconds | MB |", "|---|---|---:|---:|"]
        lines += [f"| {f['dtype']} | `{f['extension']}` | {f['seconds']:.2f} | {f['mb']:.0f} |" for f in formats]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="linear,cubic,default", help="comma-separated models to time")
    parser.add_argument("--outputs", default="image",
                        help="comma-separated answer kinds: image (streamed, JSON in a header) and/or all (multipart)")
    parser.add_argument("--repeats", type=int, default=1, help="timed requests per model (median; plus one warm-up)")
    parser.add_argument("--formats", action="store_true", help="also time writing the result in each format")
    parser.add_argument("--out", type=Path, help="write the markdown section into this page (docs/benchmarks.md)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="ctsr_bench_") as tmp:
        folder = Path(tmp)
        env, note = {}, f"Network: the shipped `default` model ({read_manifest()[1]})."
        upload = job_input(folder)
        rows = measure_server(upload, args.models.split(","), args.outputs.split(","), args.repeats, env, folder)
        load = os.getloadavg()[0]
        formats = measure_formats(folder / "result.nrrd", folder) if args.formats else []
    if args.out:
        command = "python benchmarks/server_overhead.py " + " ".join(
            a if not a.startswith("/") else Path(a).name for a in sys.argv[1:])
        write_section("server_overhead", report(rows, formats, note, command.strip(), load), args.out)
        log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
