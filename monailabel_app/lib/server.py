"""What CT Enhance changes in MONAI Label 0.8.5's HTTP server, and why.

1. ``POST /infer/{model}`` is an ``async def`` that calls the synchronous ``run_inference``, so one
   inference blocks the event loop: ``/info/`` and every other request wait until it ends, and
   ``MONAI_LABEL_INFER_CONCURRENCY`` does not help (the event loop still waits on the pool's
   future). :func:`infer_endpoint` answers that route in its place: a plain ``def`` around MONAI
   Label's own ``run_inference``: FastAPI runs it in its worker threads, and the event loop keeps serving.
   It also answers every failure as JSON (a bad ``params`` JSON, an unknown task and a timeout are
   bare 500s in MONAI Label), removes the uploaded files when a request fails (MONAI Label's
   clean-up runs only after a successful response), refuses server paths as ``image`` (MONAI Label
   would read any file on the server), and moves a client's ``model`` parameter out of the way of
   MONAI Label's task name (:func:`~lib.params.protect_reserved`). A ``label`` upload named
   ``*.bin`` (which MONAI Label would convert as OHIF scribbles before any check, reading the
   working directory as DICOM) and ``output=dicom_seg`` (DICOMweb datastores only) answer 400.
   With ``output=image`` the result file streams back as it is, and the result JSON (geometry,
   timings, notes) comes along in the ``X-CTSR-Result`` header, so a client needs neither the
   multipart answer of ``output=all`` (built in memory) nor a second request.
2. ``GET /ctsr/result/{result_id}/uncertainty`` hands out, once, the uncertainty volume a diffusion
   inference kept under that id (:mod:`lib.output`; the id is 32 hex characters, 400 otherwise; 404 when
   unknown, expired or already fetched); the file is removed after it is sent.
3. ``GET /health`` answers ``{"status": "ok", ...}`` without touching the datastore or any model.
4. :mod:`lib.security` goes in front of everything (route policy, id checks, read-only datastore,
   CORS without wildcard, bearer token, size limits), in place of MONAI Label's CORS middleware,
   which echoes any origin with credentials. MONAI Label's datastore handlers (served only with
   ``--conf datastore_writable true``) answer an unknown image or label id and a form field that is
   not JSON with 500; handlers for those exceptions answer 404 and 400.
5. MONAI Label's loggers that write request contents and file names at INFO (``Infer Request:
   {...}``, ``Adding New Image: <id> => <file>``, session uploads) are raised to WARNING, since file
   names and datastore ids may name patients; ``--conf log_file_names true`` keeps them.
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, HTTPException, UploadFile
from fastapi.middleware import Middleware
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.endpoints.infer import ResultType, run_inference
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.exception import (ImageNotFoundException, LabelNotFoundException, MONAILabelError,
                                             MONAILabelException)
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.others.generic import remove_file

from ctsr_models.io.errors import InputError

from .errors import NotFoundError, to_http
from .output import UNCERTAINTY_PATH, take_uncertainty
from .params import protect_reserved
from .security import ROUTES, Refusal, RoutePolicy, SecurityConfig, SecurityMiddleware

log = logging.getLogger(__name__)

RESULT_HEADER = "X-CTSR-Result"
_MAX_HEADER_CHARS = 8000
INFER_PATH = "/infer/{model}"
HEALTH_PATH = "/health"
QUIET_LOGGERS = ("monailabel.endpoints.infer", "monailabel.endpoints.session", "monailabel.endpoints.datastore",
                 "monailabel.datastore.local", "monailabel.utils.sessions")
"""MONAI Label loggers whose INFO lines carry file names, datastore ids or request contents."""


class Activity:
    """Counts the inferences in progress (for ``/health``); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.served = 0

    def __enter__(self) -> Activity:
        with self._lock:
            self.running += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.running -= 1
            self.served += 1


_request = threading.local()


def remember_result(result_json: dict[str, Any]) -> None:
    """Keep the result JSON of the request this thread serves, for the ``X-CTSR-Result`` header."""
    _request.result = result_json


def _result_header() -> str | None:
    result = getattr(_request, "result", None)
    _request.result = None
    if result is None:
        return None
    text = json.dumps(result, separators=(",", ":"))
    if len(text) > _MAX_HEADER_CHARS:
        text = json.dumps({**result, "findings": [], "notes": ["findings left out of the header: too long"]},
                          separators=(",", ":"))
    return text


def quiet_monailabel_logs() -> None:
    """Raise MONAI Label's loggers that write file names and request contents to WARNING."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def infer_endpoint(
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile = File(None),
    label: UploadFile = File(None),
    output: ResultType | None = None,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
) -> Any:
    """``POST /infer/{model}``: MONAI Label's handler in a worker thread (see the module docstring)."""
    try:
        if not (file or image or session_id):
            raise InputError("no image: upload it as the form field 'file', or give ?image=ID (a datastore image) "
                             "or ?session_id=ID")
        if image and (os.path.isabs(image) or os.sep in image or image.startswith(".")):
            raise InputError("image must be the id of a datastore image (GET /datastore/ lists them), not a path; "
                             "upload a file as the form field 'file' instead")
        if output == ResultType.dicom_seg:
            raise InputError("output=dicom_seg needs a DICOMweb datastore; use output=image, json or all")
        if label is not None and (label.filename or "").lower().endswith(".bin"):
            raise InputError("label must be an image file (NIfTI, NRRD, MHA, DICOM, PNG...); "
                             "OHIF scribbles (.bin) are not supported")
        if session_id and not (file or image) and _session_missing(session_id):
            raise NotFoundError(f"session {session_id!r} is unknown or has expired; create one with PUT /session/")
        request_params = json.dumps(protect_reserved(_json_object(params)))
        _request.result = None
        response = run_inference(background_tasks, model, image, session_id, request_params, file, label, output)
        header = _result_header()
        if isinstance(response, FileResponse) and header:
            response.headers[RESULT_HEADER] = header
        return response
    except Exception as exc:
        for task in background_tasks.tasks:  # the uploads: MONAI Label removes them only after a response
            if task.func is remove_file:
                task.func(*task.args, **task.kwargs)
        raise _as_http(exc, model) from exc


def uncertainty_endpoint(
    result_id: str,
    background_tasks: BackgroundTasks,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
) -> Any:
    """``GET /ctsr/result/{result_id}/uncertainty``: the kept uncertainty volume (float32 HU), once."""
    try:
        path = take_uncertainty(result_id)
    except ValueError as exc:
        raise HTTPException(400, f"bad result id: {exc}") from None
    if path is None:
        raise to_http(NotFoundError("no uncertainty is kept under this result id: it was fetched already, has "
                                    "expired, or never existed; run the inference again"), "uncertainty")
    background_tasks.add_task(path.unlink, missing_ok=True)
    return FileResponse(path, media_type="application/octet-stream", filename=f"uncertainty_{result_id}.nrrd")


def _session_missing(session_id: str) -> bool:
    sessions = app_instance().sessions()
    return sessions is None or sessions.get_session(session_id) is None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise InputError(f"params is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise InputError('params must be a JSON object, e.g. {"target_spacing": 1.0}')
    return value


def _as_http(exc: BaseException, task: str) -> HTTPException:
    if isinstance(exc, MONAILabelException) and exc.error == MONAILabelError.INVALID_INPUT:
        exc = NotFoundError(f"no infer task {task!r} on this server; GET /info/ lists them under 'models'")
    elif isinstance(exc, concurrent.futures.TimeoutError):
        exc = HTTPException(503, f"the inference did not finish within {settings.MONAI_LABEL_INFER_TIMEOUT} s "
                                 "(MONAI_LABEL_INFER_TIMEOUT); the server is busy, try again later")
    return to_http(exc, task)


def install(health: Callable[[], dict[str, Any]], security: SecurityConfig) -> bool:
    """Put :func:`infer_endpoint` and ``/health`` in front of MONAI Label's routes and
    :class:`~lib.security.SecurityMiddleware` in front of everything (idempotent).

    The new routes are inserted at the top of the app's route list, which Starlette and every
    FastAPI version search in order, so MONAI Label's own ``POST /infer/{model}`` is shadowed
    without reaching into FastAPI's router internals.

    Args:
        health: returns the ``/health`` answer.
        security: the security settings.

    Returns:
        Whether the routes were installed (False when MONAI Label's FastAPI app is not the one served).
    """
    module = sys.modules.get("monailabel.app")
    if module is None:
        log.error("MONAI Label's FastAPI app is not loaded (a custom --uvicorn_app?): an inference will block "
                  "other requests, and that app must apply lib.security.SecurityMiddleware itself")
        return False

    async def health_endpoint() -> dict[str, Any]:
        """Liveness and load; touches no datastore or model."""
        return health()

    routes = module.app.router.routes
    routes[:] = [r for r in routes if not getattr(getattr(r, "endpoint", None), "ctsr_route", False)]
    prefix = settings.MONAI_LABEL_API_STR
    routes[0:0] = [_route(prefix + INFER_PATH, infer_endpoint, "POST", "Run inference (off the event loop)"),
                   _route(prefix + HEALTH_PATH, health_endpoint, "GET", "Health check"),
                   _route(prefix + UNCERTAINTY_PATH, uncertainty_endpoint, "GET",
                          "Fetch the uncertainty of a diffusion result once")]
    module.app.openapi_schema = None
    _install_middleware(module.app, security, prefix)
    return True


def _install_middleware(app: Any, security: SecurityConfig, prefix: str) -> None:
    """Replace MONAI Label's CORS middleware by ours and :class:`SecurityMiddleware` (inside it, so that
    an allowed page can read a refusal). The app's lifespan is already running when the MONAI Label
    app is created, so the middleware stack is rebuilt in place; requests after this see the new one."""
    kept = [m for m in app.user_middleware if m.cls not in (CORSMiddleware, SecurityMiddleware)]
    cors = Middleware(CORSMiddleware, allow_origins=list(security.cors_origins), allow_credentials=False,
                      allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
                      allow_headers=["Authorization", "Content-Type"], expose_headers=[RESULT_HEADER])
    app.user_middleware[:] = [cors, Middleware(SecurityMiddleware, config=security, prefix=prefix), *kept]
    for kind, status in ((ImageNotFoundException, 404), (LabelNotFoundException, 404), (json.JSONDecodeError, 400)):
        app.add_exception_handler(kind, _answer_with(status))
    if app.middleware_stack is not None:
        app.middleware_stack = app.build_middleware_stack()
    policy = RoutePolicy(ROUTES, prefix)
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or ()):
            try:
                policy.match(method, route.path)
            except Refusal:
                log.warning("route %s %s is not in the security policy table: refused", method, route.path)
    log.info("security: datastore %s, %d CORS origin(s), API token %s, uploads up to %d bytes",
             "writable" if security.datastore_writable else "read-only", len(security.cors_origins),
             "required" if security.api_token else "off", security.max_upload_bytes)


def _answer_with(status: int) -> Callable[[Any, Exception], JSONResponse]:
    """An exception handler for MONAI Label's own routes (the writable datastore's): a client's
    unknown id or malformed JSON form field is a 4xx, not the 500 MONAI Label answers."""

    def handler(request: Any, exc: Exception) -> JSONResponse:
        what = "is not valid JSON" if isinstance(exc, json.JSONDecodeError) else "names no image or label here"
        log.info("%s refused with %d (%s)", request.method, status, type(exc).__name__)
        return JSONResponse({"detail": f"a parameter or form field {what}"}, status_code=status)

    return handler


def _route(path: str, endpoint: Callable[..., Any], method: str, summary: str) -> APIRoute:
    endpoint.ctsr_route = True  # type: ignore[attr-defined]
    router = APIRouter()
    router.add_api_route(path, endpoint, methods=[method], summary=summary, tags=["CT Enhance"])
    return router.routes[0]  # type: ignore[return-value]
