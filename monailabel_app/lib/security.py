"""The server's front door: route policy, id checks, read-only datastore, CORS, bearer token, size limits.

MONAI Label 0.8.5 serves every route of its API to anyone who reaches the port: datastore ids go
straight into file paths (``PUT /datastore/image?image=../../x`` writes outside the studies folder),
its CORS set-up echoes any origin with credentials, and uploads have no size limit.
:class:`SecurityMiddleware` answers before MONAI Label sees a request, in this order:

1. ``/health`` is always open (liveness for load balancers).
2. With a token (:attr:`SecurityConfig.api_token`), every other request needs
   ``Authorization: Bearer <token>`` (401 otherwise; compared in constant time; never logged).
3. The route must be in :data:`ROUTES` (built from MONAI Label 0.8.5's ``/openapi.json`` and its
   hidden routes): 404 otherwise, so a route added by a later MONAI Label is closed, not open.
4. ``off`` routes are refused with 403 (MONAI Label features this app does not have: its models,
   training, active learning, scoring, batch jobs, logs, proxies); ``write`` routes (those that
   change the studies folder) are refused with 403 unless ``datastore_writable``.
5. Every id a route takes (query or path: image, label, id, tag, session, model, ...) is checked
   (:func:`check_id`): 400 for separators, ``..``, a leading dot, control characters, too long.
6. The body: 413 when ``Content-Length`` or the bytes actually received exceed ``max_upload_bytes``;
   a multipart body is scanned as it streams: too many parts, oversized part headers or a file name
   that is not a plain name answer 400 before the upload is used.

CORS is Starlette's middleware with the named origins only (no wildcard, no credentials); it is
installed outside this one so that a refusal still reaches an allowed page. Every refusal is JSON
``{"detail": "..."}``.
"""
from __future__ import annotations

import enum
import hmac
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from python_multipart.multipart import MultipartParser, parse_options_header

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_ENV = "CTENHANCE_API_TOKEN"
MAX_ID_BYTES = 200
"""Longest id in UTF-8 bytes: a file name (255 bytes on Linux) less room for extensions."""
MAX_FILENAME_BYTES = 255
MAX_PART_HEADER_BYTES = 16 * 1024
MAX_QUERY_BYTES = 8 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Access(enum.Enum):
    """Who may use a route."""

    PUBLIC = "public"  # no token needed
    USER = "user"  # token (when set); reads the datastore, runs the app's tasks
    WRITE = "write"  # token and --conf datastore_writable true
    OFF = "off"  # never served by CT Enhance


@dataclass(frozen=True)
class Route:
    """One method and path of the API, and how it is guarded.

    Attributes:
        method: HTTP method (``GET`` also admits ``HEAD``).
        path: the path template without MONAI Label's API prefix, ``{name}`` for a path parameter.
        access: who may use it.
        ids: names of the query and path parameters that are datastore, session, model or task ids.
        why: one line for the route table of ``docs/server.md``.
        no_flags: query parameters that must not be true (e.g. ``uncompress`` of ``PUT /session/``).
        required: ids that must be given (MONAI Label would otherwise derive one from the file name).
    """

    method: str
    path: str
    access: Access
    ids: tuple[str, ...] = ()
    why: str = ""
    no_flags: tuple[str, ...] = ()
    required: tuple[str, ...] = ()


U, W, X = Access.USER, Access.WRITE, Access.OFF
ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", Access.PUBLIC, why="liveness and load; nothing about patients"),
    Route("GET", "/info/", U, why="tasks, models and their parameters"),
    Route("GET", "/", U, why="Swagger UI page"),
    Route("GET", "/docs", U, why="ReDoc page"),
    Route("GET", "/openapi.json", U, why="the API description"),
    Route("GET", "/favicon.ico", U, why="icon"),
    Route("POST", "/infer/{model}", U, ("model", "image", "session_id"), "run a task (CT Enhance's handler)"),
    Route("POST", "/infer/wsi_v2/{model}", X, ("model", "image", "session_id"), "whole-slide pathology: no such task"),
    Route("POST", "/infer/wsi/{model}", X, ("model", "image", "session_id"), "whole-slide pathology: no such task"),
    Route("GET", "/ctsr/result/{result_id}/uncertainty", U, ("result_id",),
          "fetch once the uncertainty volume a diffusion inference kept (id: 32 hex characters)"),
    Route("GET", "/datastore/", U, why="list the studies"),
    Route("GET", "/datastore/image", U, ("image",), "download a study"),
    Route("GET", "/datastore/image/info", U, ("image",), "a study's info"),
    Route("GET", "/datastore/label", U, ("label", "tag"), "download a label"),
    Route("HEAD", "/datastore/label", U, ("image", "tag"), "does a label exist"),
    Route("GET", "/datastore/label/info", U, ("label", "tag"), "a label's info"),
    Route("PUT", "/datastore/image", W, ("image",), "add a study (?image=ID required)", required=("image",)),
    Route("PUT", "/datastore/", W, ("image",), "add a study (deprecated path)", required=("image",)),
    Route("DELETE", "/datastore/image", W, ("id",), "remove a study and its labels"),
    Route("DELETE", "/datastore/", W, ("id",), "remove a study (deprecated path)"),
    Route("PUT", "/datastore/image/info", W, ("image",), "change a study's info"),
    Route("PUT", "/datastore/label", W, ("image", "tag"), "save a label"),
    Route("DELETE", "/datastore/label", W, ("id", "tag"), "remove a label"),
    Route("PUT", "/datastore/label/info", W, ("label", "tag"), "change a label's info"),
    Route("PUT", "/datastore/updatelabelinfo", W, ("label", "tag"), "change a label's info (deprecated path)"),
    Route("GET", "/datastore/dataset", X, why="bulk export of every study into an archive left in TMPDIR"),
    Route("PUT", "/session/", U, why="upload files for one request (kept in the session folder, not the "
          "studies)", no_flags=("uncompress",)),
    Route("GET", "/session/{session_id}", U, ("session_id",), "a session's info or image"),
    Route("DELETE", "/session/{session_id}", U, ("session_id",), "remove a session"),
    Route("GET", "/model/{model}", X, ("model",), "MONAI Label model weights: this app has none (its weights "
          "are checked files of ctsr_models)"),
    Route("GET", "/model/info/{model}", X, ("model",), "MONAI Label model weights: none here"),
    Route("PUT", "/model/{model}", X, ("model",), "replace model weights: none here; never over HTTP"),
    Route("DELETE", "/model/{model}", X, ("model",), "delete model weights: none here; never over HTTP"),
    Route("GET", "/train/", U, why="training status (no trainers here)"),
    Route("POST", "/train/{model}", X, ("model",), "start training: no trainers here (training is the train CLI)"),
    Route("POST", "/train/", X, why="start all training: no trainers here"),
    Route("DELETE", "/train/", X, why="stop training: no trainers here"),
    Route("POST", "/activelearning/{strategy}", X, ("strategy",), "next study to label: no strategies here"),
    Route("GET", "/scoring/", U, why="scoring status (no scorers here)"),
    Route("POST", "/scoring/{method}", X, ("method",), "start scoring: no scorers here"),
    Route("POST", "/scoring/", X, why="start all scoring: no scorers here"),
    Route("DELETE", "/scoring/", X, why="stop scoring: no scorers here"),
    Route("GET", "/batch/infer", U, why="batch inference status"),
    Route("POST", "/batch/infer/{model}", X, ("model",), "batch inference: it would store results as labels"),
    Route("DELETE", "/batch/infer", X, why="stop batch inference: none runs"),
    Route("GET", "/logs/", X, why="the server log: names files and studies"),
    Route("GET", "/logs/gpu", X, why="runs nvidia-smi"),
    Route("POST", "/reload", X, why="drops the app instance"),
    Route("GET", "/ohif/{path}", X, ("path",), "OHIF viewer files (not shipped)"),
    Route("GET", "/static/{path}", X, ("path",), "MONAI Label's static files"),
    Route("GET", "/proxy/dicom/{path}", X, ("path",), "DICOMweb proxy (no DICOMweb datastore)"),
    Route("POST", "/proxy/dicom/{path}", X, ("path",), "DICOMweb proxy (no DICOMweb datastore)"),
)
"""Every route of MONAI Label 0.8.5 (its ``/openapi.json`` and its hidden routes) and its policy."""


def check_id(name: str, value: str) -> str | None:
    """Why ``value`` is not a usable id for parameter ``name``, or None when it is.

    An id becomes part of a file name inside the studies, label, session or model folder, so it must
    be one plain name: no ``/`` or ``\\``, no ``..``, no leading ``.``, no control characters (NUL),
    no ``:`` and at most :data:`MAX_ID_BYTES` bytes of UTF-8.
    """
    if value == "":
        return None
    problems = (("/" in value or "\\" in value, "a path separator"), (".." in value, "'..'"),
                (value.startswith("."), "a leading '.'"), (bool(_CONTROL.search(value)), "a control character"),
                (":" in value, "':'"), (len(value.encode("utf-8", "replace")) > MAX_ID_BYTES,
                                        f"more than {MAX_ID_BYTES} bytes"))
    for bad, what in problems:
        if bad:
            return f"{name} must be a plain id (a datastore, session or task name), not a path: it has {what}"
    return None


def check_filename(value: str) -> str | None:
    """Why an uploaded file's name cannot be used (it names a temporary file), or None."""
    if _CONTROL.search(value) or "/" in value or "\\" in value or value in (".", ".."):
        return "an uploaded file's name must be a plain file name (no path, no control characters)"
    if len(value.encode("utf-8", "replace")) > MAX_FILENAME_BYTES:
        return f"an uploaded file's name must be at most {MAX_FILENAME_BYTES} bytes"
    return None


@dataclass(frozen=True)
class SecurityConfig:
    """The server's security settings (``--conf`` values; ``docs/server.md``).

    Attributes:
        datastore_writable: serve the ``write`` routes (add/remove studies and labels, models, training).
        cors_origins: origins (``scheme://host[:port]``) whose pages may call the API; empty: none.
        api_token: the bearer token every route but ``/health`` requires; None: no token.
        max_upload_bytes: largest request body in bytes (HTTP 413 above it).
        max_form_parts: most parts in one multipart body (files and fields together).
    """

    datastore_writable: bool = False
    cors_origins: tuple[str, ...] = ()
    api_token: str | None = field(default=None, repr=False)
    max_upload_bytes: int = 4 * 1024**3
    max_form_parts: int = 1000

    @classmethod
    def from_conf(cls, conf: Mapping[str, str], env: Mapping[str, str] | None = None) -> SecurityConfig:
        """Build from ``--conf`` values: ``datastore_writable``, ``cors_origins``, ``api_token_file``,
        ``max_upload_bytes``, ``max_form_parts``; the token may also come from ``$CTENHANCE_API_TOKEN``.

        Raises:
            ValueError: a malformed value, a wildcard origin, an unreadable or empty token file.
        """
        env = os.environ if env is None else env
        writable = _flag(conf.get("datastore_writable", "false"), "datastore_writable")
        origins = tuple(_origin(o) for o in conf.get("cors_origins", "").split(",") if o.strip())
        token_file = conf.get("api_token_file", "")
        token = _read_token(Path(token_file)) if token_file else (env.get(TOKEN_ENV, "").strip() or None)
        return cls(writable, origins, token, _positive(conf, "max_upload_bytes", cls.max_upload_bytes),
                   _positive(conf, "max_form_parts", cls.max_form_parts))


def _flag(value: str, name: str) -> bool:
    if value.strip().lower() not in ("true", "false"):
        raise ValueError(f"--conf {name} must be true or false, not {value!r}")
    return value.strip().lower() == "true"


def _positive(conf: Mapping[str, str], name: str, default: int) -> int:
    text = conf.get(name, str(default))
    if not text.strip().isdigit() or int(text) <= 0:
        raise ValueError(f"--conf {name} must be a positive whole number, not {text!r}")
    return int(text)


def _origin(text: str) -> str:
    origin = text.strip().rstrip("/")
    parts = urlsplit(origin)
    if "*" in origin or parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise ValueError(f"--conf cors_origins: {text.strip()!r} is not an origin like https://viewer.example:8443 "
                         "(no wildcard, no path)")
    return origin


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--conf api_token_file: cannot read {path}: {type(exc).__name__}") from None
    if len(token) < 16 or _CONTROL.search(token) or " " in token:
        raise ValueError(f"--conf api_token_file: {path} must hold one token of at least 16 characters, no spaces")
    return token


class Refusal(Exception):
    """A request answered by the middleware itself: HTTP ``status`` with ``{"detail": detail}``."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, dict(headers or {})


class RoutePolicy:
    """Finds the :class:`Route` of a request; a path parameter matches anything, ``/`` included, so
    that ``/session/..%2Fx`` reaches the id check instead of slipping past the table."""

    def __init__(self, routes: tuple[Route, ...], prefix: str = "") -> None:
        ordered = sorted(routes, key=lambda r: -len(re.sub(r"\{[^}]+\}", "", r.path)))
        self._table = [(r, re.compile("^" + re.escape(prefix) + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>.+)",
                                                                       re.escape(r.path)) + "$"))
                       for r in ordered]

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route and path parameters for ``method`` and ``path``.

        Raises:
            Refusal: 404 (unknown path) or 405 (known path, other method).
        """
        found = [(route, m.groupdict()) for route, pattern in self._table if (m := pattern.match(path))]
        for wanted in (method, "GET" if method == "HEAD" else None):
            for route, params in found:
                if route.method == wanted:
                    return route, params
        if found:
            raise Refusal(405, f"{method} is not served on {path}")
        raise Refusal(404, "no such route on this server; GET /openapi.json lists the API")


def check_request(route: Route, path_params: Mapping[str, str], query: list[tuple[str, str]],
                  config: SecurityConfig) -> None:
    """Apply ``route``'s policy to a request (steps 4 and 5 of the module docstring).

    Raises:
        Refusal: 403 for a refused route, 400 for a bad id or flag.
    """
    if route.access is Access.OFF:
        raise Refusal(403, f"{route.method} {route.path} is not served by CT Enhance ({route.why})")
    if route.access is Access.WRITE and not config.datastore_writable:
        raise Refusal(403, f"{route.method} {route.path} changes the server's data; the datastore is read-only "
                           "(start the server with --conf datastore_writable true to allow it)")
    values = list(path_params.items()) + query
    for name in route.required:
        if not any(key == name and value for key, value in values):
            raise Refusal(400, f"{name} is required here: the id to store the upload under")
    for name, value in values:
        if name in route.ids:
            problem = check_id(name, value)
            if problem:
                raise Refusal(400, problem)
        if name in route.no_flags and value.strip().lower() not in ("", "false", "0", "no", "off"):
            raise Refusal(400, f"{name} is not supported here; upload the files themselves")


class BodyGuard:
    """Counts a request body's bytes and scans a multipart body as it streams (step 6)."""

    def __init__(self, content_type: str, config: SecurityConfig) -> None:
        self.config = config
        self.received = 0
        self.parts = 0
        self._field = bytearray()
        self._value = bytearray()
        self._parser: MultipartParser | None = None
        kind, options = parse_options_header(content_type)
        if kind == b"multipart/form-data" and options.get(b"boundary"):
            callbacks = {"on_part_begin": self._on_part, "on_header_field": self._on_header_field,
                         "on_header_value": self._on_header_value, "on_header_end": self._on_header_end}
            self._parser = MultipartParser(options[b"boundary"], callbacks)  # type: ignore[arg-type]

    def feed(self, chunk: bytes) -> None:
        """Account for one chunk of the body.

        Raises:
            Refusal: 413 over ``max_upload_bytes``; 400 for a multipart body out of bounds or malformed.
        """
        self.received += len(chunk)
        if self.received > self.config.max_upload_bytes:
            raise Refusal(413, f"the upload is larger than this server accepts ({self.config.max_upload_bytes} "
                               "bytes, --conf max_upload_bytes)")
        if self._parser is not None and chunk:
            try:
                self._parser.write(chunk)
            except Refusal:
                raise
            except Exception as exc:  # python_multipart's parse errors
                raise Refusal(400, f"the multipart body is malformed ({type(exc).__name__})") from None

    def _on_part(self) -> None:
        self.parts += 1
        self._field.clear()
        self._value.clear()
        if self.parts > self.config.max_form_parts:
            raise Refusal(400, f"the form has more than {self.config.max_form_parts} parts (--conf max_form_parts)")

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]  # a header may arrive in pieces, split between chunks
        self._check_header_size()

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._check_header_size()

    def _check_header_size(self) -> None:
        if len(self._field) + len(self._value) > MAX_PART_HEADER_BYTES:
            raise Refusal(400, f"a form part's headers exceed {MAX_PART_HEADER_BYTES} bytes")

    def _on_header_end(self) -> None:
        name, value = bytes(self._field), bytes(self._value)
        self._field.clear()
        self._value.clear()
        if name.strip().lower() != b"content-disposition":
            return
        _, options = parse_options_header(value)
        filename = options.get(b"filename")
        if filename is not None:
            problem = check_filename(filename.decode("utf-8", "replace"))
            if problem:
                raise Refusal(400, problem)


class SecurityMiddleware:
    """The pure-ASGI middleware applying :class:`SecurityConfig` (see the module docstring)."""

    def __init__(self, app: ASGIApp, config: SecurityConfig, prefix: str = "") -> None:
        self.app = app
        self.config = config
        self.policy = RoutePolicy(ROUTES, prefix)
        self.health_path = prefix + "/health"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # MONAI Label has no websocket route
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self._check_head(scope, headers)
        except Refusal as refusal:
            log.info("%s refused with %d", scope["method"], refusal.status)
            await _answer(send, refusal)
            return
        await self._forward(scope, headers, receive, send)

    def _check_head(self, scope: Scope, headers: Mapping[str, str]) -> None:
        """Steps 1 to 5 and the ``Content-Length`` part of step 6, before any of the body is read."""
        path, method = scope["path"], scope["method"]
        if path == self.health_path and method in ("GET", "HEAD"):
            return
        self._check_token(headers.get("authorization", ""))
        route, path_params = self.policy.match(method, path)
        raw_query = scope.get("query_string", b"")
        if len(raw_query) > MAX_QUERY_BYTES:
            raise Refusal(414, f"the query string is longer than {MAX_QUERY_BYTES} bytes")
        query = parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True)
        check_request(route, path_params, query, self.config)
        length = headers.get("content-length", "")
        if length and (not length.isdigit() or int(length) > self.config.max_upload_bytes):
            raise Refusal(413 if length.isdigit() else 400,
                          f"the upload is larger than this server accepts ({self.config.max_upload_bytes} bytes, "
                          "--conf max_upload_bytes)" if length.isdigit() else "Content-Length is not a number")

    def _check_token(self, authorization: str) -> None:
        token = self.config.api_token
        if token is None:
            return
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Refusal(401, "this server needs an API token: send the header 'Authorization: Bearer <token>'",
                          {"WWW-Authenticate": 'Bearer realm="CT Enhance"'})

    async def _forward(self, scope: Scope, headers: Mapping[str, str], receive: Receive, send: Send) -> None:
        """Pass the request on with its body guarded; a refusal while reading it replaces the app's answer."""
        guard = BodyGuard(headers.get("content-type", ""), self.config)
        refused: list[Refusal] = []
        started = False

        async def guarded_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not refused:
                try:
                    guard.feed(message.get("body", b""))
                except Refusal as refusal:
                    refused.append(refusal)
                    raise
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused and not started:
                return  # the app's answer to the aborted body is replaced by the refusal
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not refused or started:
                raise
        if refused and not started:
            log.info("%s refused with %d while receiving its body", scope["method"], refused[0].status)
            await _answer(send, refused[0])


async def _answer(send: Send, refusal: Refusal) -> None:
    """Send ``refusal`` as a JSON answer."""
    body = json.dumps({"detail": refusal.detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in refusal.headers.items()]
    if refusal.status in (400, 413):  # the client may still be sending a body nobody will read
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
