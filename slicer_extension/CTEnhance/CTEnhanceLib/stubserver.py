"""A stand-in for the CT Enhance server, for the module's self-test: the same HTTP API, no model.

``python -m CTEnhanceLib.stubserver [--port 0] [--token T]`` serves on 127.0.0.1 and prints one line,
``{"url": "http://127.0.0.1:PORT"}``, then answers until it is ended:

* ``GET /info/`` and ``GET /health``: like the real server, with two tasks, ``ct_super_resolution``
  (parameters ``target_spacing``, ``model``, ``samples``, ``steps``; result ``.nrrd``) and
  ``ct_denoise`` (``model``, ``samples``, ``steps``), each with a regression-like model and a
  ``diffusion`` one (``model_kinds``).
* ``POST /infer/ct_super_resolution?output=image`` with the multipart fields ``params`` and
  ``file`` (an uncompressed 3D int16 NRRD, as Slicer writes with compression off): answers an
  int16 NRRD on the grid :func:`~CTEnhanceLib.geometry.super_resolution_grid` predicts, each thin
  slice copied from the slab that contains its centre (nearest-slab upsampling), with the
  ``X-CTSR-Result`` header. ``POST /infer/ct_denoise`` answers the upload itself (same grid).
  With a diffusion model the result JSON says ``ai_generated`` and names an uncertainty volume
  (float32, the result's grid: per slice, its distance in mm from the centre of its slab; 0 for
  denoising) at ``uncertainty.url``, ``GET /ctsr/result/<id>/uncertainty``, handed out once, as the
  real server does. ``samples``/``steps`` with another model, or out of bounds, are refused (422), and
  anything else the stub cannot do gets a 4xx ``{"detail": ...}``.
* With ``--token``, every request must carry ``Authorization: Bearer <token>`` (else 401).

The Slicer module's self-test runs it so that Reload and Test passes with no real server; it is
not a product component (the real server is ``monailabel_app``).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
import secrets
import struct
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .geometry import Grid, super_resolution_grid
from .tasks import DENOISE_TASK, DIFFUSION_KIND, SR_TASK
from .transfer import RESULT_HEADER

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 512 * 1024 * 1024
INT16_TYPES = {"short", "int16", "signed short", "int16_t", "short int", "signed short int"}
SAMPLING = {"samples": {"type": "integer", "default": None, "exclusive_minimum": 0, "maximum": 16},
            "steps": {"type": "integer", "default": None, "exclusive_minimum": 0, "maximum": 50}}
MODEL_KINDS = {SR_TASK: {"stub": "interpolation", "stub_diffusion": DIFFUSION_KIND},
               DENOISE_TASK: {"stub_denoise": "regression", "stub_denoise_diffusion": DIFFUSION_KIND}}
UNCERTAINTY_ROUTE = re.compile(r"/ctsr/result/([^/]*)/uncertainty")


def _task_info(task: str, description: str, params: dict[str, Any]) -> dict[str, Any]:
    models = list(MODEL_KINDS[task])
    return {"type": "others", "dimension": 3, "description": description,
            "params": {**params, "model": {"type": "string", "default": models[0], "choices": models}, **SAMPLING},
            "inputs": {"image": "a CT volume"}, "output": {"extensions": [".nrrd"]}, "models": models,
            "default_model": models[0], "model_kinds": MODEL_KINDS[task]}


INFO = {"name": "CT Enhance stub server", "version": "stub",
        "models": {SR_TASK: _task_info(SR_TASK, "stub: nearest-slab through-plane upsampling (self-test only)",
                                       {"target_spacing": {"type": "number", "default": 1.0}}),
                   DENOISE_TASK: _task_info(DENOISE_TASK, "stub: returns the input (self-test only)", {})}}


class StubError(Exception):
    """A request the stub refuses, with its HTTP status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def parse_nrrd(data: bytes) -> tuple[dict[str, str], bytes]:
    """The header fields and the raw voxel bytes of an attached, uncompressed NRRD.

    Raises:
        StubError: not such a NRRD.
    """
    head, separator, body = data.partition(b"\n\n")
    if not separator or not head.startswith(b"NRRD"):
        raise StubError(415, "The upload is not a NRRD file.")
    fields = {}
    for line in head.decode("latin-1").splitlines()[1:]:
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.lstrip("=").strip()
    if fields.get("encoding") != "raw" or fields.get("type", "").lower() not in INT16_TYPES:
        raise StubError(415, "The stub takes uncompressed int16 NRRD only.")
    if fields.get("endian", "little") != "little" or "data file" in fields or "datafile" in fields:
        raise StubError(415, "The stub takes little-endian NRRD with attached data only.")
    return fields, body


def nrrd_grid(fields: Mapping[str, str]) -> Grid:
    """The voxel grid of a 3D NRRD header (its own frame: ``space`` is kept as it is).

    Raises:
        StubError: not 3D, or no space directions/origin.
    """
    sizes = tuple(int(v) for v in fields.get("sizes", "").split())
    vectors = [tuple(float(x) for x in v.split(","))
               for v in re.findall(r"\(([^)]*)\)", fields.get("space directions", ""))]
    origin = re.findall(r"\(([^)]*)\)", fields.get("space origin", ""))
    if len(sizes) != 3 or len(vectors) != 3 or any(len(v) != 3 for v in vectors) or len(origin) != 1:
        raise StubError(415, "The stub takes a 3D NRRD with space directions and a space origin.")
    spacing = tuple(math.sqrt(sum(x * x for x in v)) for v in vectors)
    axes = tuple(tuple(x / s for x in v) for v, s in zip(vectors, spacing))
    return Grid(sizes, spacing, tuple(float(x) for x in origin[0].split(",")), axes)  # type: ignore[arg-type]


def enhance_nrrd(data: bytes, target_spacing: float) -> tuple[bytes, Grid]:
    """The stub's result for an uploaded NRRD: nearest-slab upsampling onto the predicted grid.

    Raises:
        StubError: the upload or the target spacing cannot be used.
    """
    fields, voxels = parse_nrrd(data)
    grid = nrrd_grid(fields)
    try:
        out = super_resolution_grid(grid, target_spacing)
    except ValueError as exc:
        raise StubError(422, str(exc)) from None
    slice_bytes = grid.size[0] * grid.size[1] * 2
    if len(voxels) < slice_bytes * grid.size[2]:
        raise StubError(415, "The NRRD's data is shorter than its sizes say.")
    slab = grid.spacing[2]
    slices = [min(grid.size[2] - 1, int((k + 0.5) * target_spacing // slab)) for k in range(out.size[2])]
    body = b"".join(voxels[j * slice_bytes:(j + 1) * slice_bytes] for j in slices)
    directions = " ".join("(" + ",".join(f"{x * s:.17g}" for x in axis) + ")" for axis, s in zip(out.axes, out.spacing))
    header = (f"NRRD0004\ntype: short\ndimension: 3\nspace: {fields.get('space', 'left-posterior-superior')}\n"
              f"sizes: {' '.join(map(str, out.size))}\nspace directions: {directions}\nkinds: domain domain domain\n"
              f"endian: little\nencoding: raw\nspace origin: ({','.join(f'{x:.17g}' for x in out.origin)})\n\n")
    return header.encode("latin-1") + body, out


def uncertainty_nrrd(grid: Grid, slice_values: list[float], space: str) -> bytes:
    """A float32 NRRD on ``grid`` whose slice ``k`` holds ``slice_values[k]`` everywhere."""
    plane = grid.size[0] * grid.size[1]
    body = b"".join(struct.pack("<f", value) * plane for value in slice_values)
    directions = " ".join("(" + ",".join(f"{x * s:.17g}" for x in axis) + ")"
                          for axis, s in zip(grid.axes, grid.spacing))
    header = (f"NRRD0004\ntype: float\ndimension: 3\nspace: {space}\nsizes: {' '.join(map(str, grid.size))}\n"
              f"space directions: {directions}\nkinds: domain domain domain\nendian: little\nencoding: raw\n"
              f"space origin: ({','.join(f'{x:.17g}' for x in grid.origin)})\n\n")
    return header.encode("latin-1") + body


def slab_distances(thick: Grid, thin: Grid) -> list[float]:
    """For each output slice, the distance in mm from its centre to the centre of the slab it lies in."""
    slab = thick.spacing[2]
    distances = []
    for k in range(thin.size[2]):
        position = (k + 0.5) * thin.spacing[2]
        distances.append(abs(position - (min(thick.size[2] - 1, int(position // slab)) + 0.5) * slab))
    return distances


def sampling(task: str, params: Mapping[str, Any]) -> tuple[str, dict[str, int]]:
    """The model and the sampling values of a request, checked as the real server checks them.

    Raises:
        StubError: an unknown model (404), or sampling values out of bounds or for another model (422).
    """
    model = params.get("model") or next(iter(MODEL_KINDS[task]))
    if model not in MODEL_KINDS[task]:
        raise StubError(404, f"unknown model {model!r}; available: {', '.join(MODEL_KINDS[task])}")
    values = {}
    for name, entry in SAMPLING.items():
        value = params.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= entry["maximum"]:
            raise StubError(422, f"{name} must be a whole number from 1 to {entry['maximum']}; got {value!r}")
        if MODEL_KINDS[task][model] != DIFFUSION_KIND:
            raise StubError(422, f"{name} applies to diffusion models only, not to {model!r}")
        values[name] = value
    return model, values


def multipart_fields(content_type: str, body: bytes) -> dict[str, bytes]:
    """Form field name -> its bytes, from a ``multipart/form-data`` body.

    Raises:
        StubError: not multipart form data.
    """
    match = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not content_type.startswith("multipart/form-data") or not match:
        raise StubError(415, "Send the input as multipart/form-data.")
    fields = {}
    for part in body.split(b"--" + match.group(1).encode())[1:]:
        head, separator, value = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if separator and name:
            fields[name.group(1).decode()] = value[:-2] if value.endswith(b"\r\n") else value
    return fields


class StubHandler(BaseHTTPRequestHandler):
    """The stub's HTTP API (see the module docstring); ``server.token`` is the required token or ""."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._answer(self._post)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        log.debug("stub: " + format, *args)

    def _answer(self, handler) -> None:
        try:
            self._check_token()
            status, body, headers = handler(urlsplit(self.path).path)
        except StubError as exc:
            status, body, headers = exc.status, json.dumps({"detail": str(exc)}).encode(), {}
        self.send_response(status)
        self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _check_token(self) -> None:
        token = getattr(self.server, "token", "")
        if token and self.headers.get("Authorization", "") != f"Bearer {token}":
            length = int(self.headers.get("Content-Length") or 0)
            if length <= MAX_UPLOAD_BYTES:
                self.rfile.read(length)
            raise StubError(401, "This server needs an access token: enter it in the Token field.")

    def _get(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        if path in ("/info", "/info/"):
            return 200, json.dumps(INFO).encode(), {}
        if path == "/health":
            return 200, json.dumps({"status": "ok", "tasks": list(INFO["models"])}).encode(), {}
        route = UNCERTAINTY_ROUTE.fullmatch(path)
        if route:
            if not re.fullmatch(r"[0-9a-f]{32}", route.group(1)):
                raise StubError(400, "a result id is 32 hex characters (0-9, a-f)")
            with self.server.lock:  # type: ignore[attr-defined]
                body = self.server.kept.pop(route.group(1), None)  # type: ignore[attr-defined]
            if body is None:
                raise StubError(404, "no uncertainty is kept under this result id: it was fetched already")
            return 200, body, {"Content-Type": "application/octet-stream",
                               "Content-Disposition": f'attachment; filename="uncertainty_{route.group(1)}.nrrd"'}
        raise StubError(404, f"No such address on this server: {path}")

    def _post(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_UPLOAD_BYTES:
            raise StubError(413, "The upload is too large for the stub server.")
        body = self.rfile.read(length)
        task = path.rstrip("/").removeprefix("/infer/")
        if task not in MODEL_KINDS:
            raise StubError(404, f"No such task on this server: {path}")
        fields = multipart_fields(self.headers.get("Content-Type", ""), body)
        try:
            params = json.loads(fields.get("params", b"{}") or b"{}")
            target = float(params.get("target_spacing", 1.0))
        except (ValueError, TypeError, AttributeError):
            raise StubError(422, "params must be a JSON object with a numeric target_spacing.") from None
        if "file" not in fields:
            raise StubError(422, "Upload the CT in the form field 'file'.")
        model, values = sampling(task, params)
        header, _ = parse_nrrd(fields["file"])
        thick = nrrd_grid(header)
        if task == SR_TASK:
            result, grid = enhance_nrrd(fields["file"], target)
        else:
            result, grid = fields["file"], thick
        details = {"task": task, "model": model, "ai_generated": task == SR_TASK,
                   "output": {"size": list(grid.size), "spacing": list(grid.spacing)}, "notes": []}
        if MODEL_KINDS[task][model] == DIFFUSION_KIND:
            per_slice = slab_distances(thick, grid) if task == SR_TASK else [0.0] * grid.size[2]
            space = header.get("space", "left-posterior-superior")
            details.update(self._keep(uncertainty_nrrd(grid, per_slice, space)), ai_generated=True,
                           diffusion={"samples": values.get("samples", 2), "steps": values.get("steps", 2)})
        return 200, result, {"Content-Type": "application/octet-stream",
                             "Content-Disposition": 'attachment; filename="result.nrrd"',
                             RESULT_HEADER: json.dumps(details)}

    def _keep(self, uncertainty: bytes) -> dict[str, Any]:
        """Keep an uncertainty volume for one fetch; its result JSON entry."""
        result_id = secrets.token_hex(16)
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.kept[result_id] = uncertainty  # type: ignore[attr-defined]
        return {"uncertainty": {"result_id": result_id, "url": f"/ctsr/result/{result_id}/uncertainty",
                                "unit": "HU", "dtype": "float32"}}


def start(port: int = 0, token: str = "") -> ThreadingHTTPServer:
    """A stub server bound to 127.0.0.1:``port`` (0: a free one); call ``serve_forever()`` on it."""
    server = ThreadingHTTPServer(("127.0.0.1", port), StubHandler)
    server.token = token  # type: ignore[attr-defined]
    server.kept = {}  # type: ignore[attr-defined]  # result id -> uncertainty NRRD, until fetched once
    server.lock = threading.Lock()  # type: ignore[attr-defined]
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m CTEnhanceLib.stubserver", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--token", default="", help="require this bearer token")
    args = parser.parse_args(argv)
    server = start(args.port, args.token)
    print(json.dumps({"url": f"http://127.0.0.1:{server.server_address[1]}"}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
