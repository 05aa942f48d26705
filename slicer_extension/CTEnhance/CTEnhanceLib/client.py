"""All network work of CT Enhance's Slicer module: a client of the MONAI Label server, with no Slicer inside.

One call is one HTTP request on its own connection (standard library ``http.client``):

* :meth:`Client.info` reads ``GET /info/``; :meth:`Client.tasks` keeps the image-output tasks.
* :meth:`Client.infer` uploads the input file(s) as multipart form fields (``file``, ``label``) of
  ``POST /infer/<task>?output=image``, so the server never stores them in its datastore; waits for
  the answer; and streams the result into a temporary file beside the output, renamed into place
  only when complete. :meth:`Client.enhance` is the same for the super-resolution task. When the
  result JSON names an uncertainty volume (a diffusion model's, ``uncertainty.url``, served once),
  it is fetched right after the result, in the same call, to ``<output stem>.uncertainty.nrrd``
  (:mod:`CTEnhanceLib.overlay`); a failed fetch fails the call and leaves neither file.

Timeouts are a pair (:class:`Timeouts`): ``connect`` bounds opening the connection (and the TLS
handshake); ``read`` bounds every wait for the server, including the whole inference, since the
server answers only when the result is ready, so it is long by default (one hour).

Progress goes to a callback as :class:`Progress` (stage, bytes done and total). A :class:`Cancel`
given to a call stops it from any other thread: it is checked between upload and download chunks,
and it shuts the connection's socket down, which also ends a wait for the answer at once. The
server is not told; it finishes the job and its result is discarded.

A server started with an API token (``--conf api_token_file``, ``docs/server.md``) answers 401 to
every request without it: give the token as ``Client(url, token=...)`` and it is sent as
``Authorization: Bearer <token>`` on every request (never in a URL, never logged). Over plain
``http://`` to another machine the token travels readable: use ``https://`` (a TLS proxy) there.

HTTPS certificates are checked by default (the system's CA certificates, plus ``certifi``'s when
installed); ``verify`` may name a CA bundle file instead, or be ``False`` (logged as a warning).
Every failure is raised as a :class:`ClientError` whose message is one sentence saying what
happened and what to do; a server's own refusal (HTTP 4xx ``{"detail": ...}``) passes through
unchanged.

From a terminal (see :mod:`CTEnhanceLib.cli`)::

    python -m CTEnhanceLib.client --server http://127.0.0.1:8000 enhance IN OUT --target-spacing 1
"""
from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import os
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from .errors import (CANCELLED_MESSAGE, Cancelled, ClientError, ConnectionFailed, ServerError, TimedOut,
                     error_from_response)
from .overlay import UNCERTAINTY_EXTENSION, uncertainty_path, uncertainty_url
from .progress import Cancel, Progress, ProgressCallback, Reporter, Stage
from .tasks import RESULT_EXTENSIONS, SR_TASK, UPLOAD_FIELDS, TaskInfo, image_tasks, result_extension
from .transfer import MAX_ERROR_BYTES, Body, Download, PathLike, multipart, send, upload_files

__all__ = ["Cancel", "Cancelled", "Client", "ClientError", "ConnectionFailed", "InferResult", "Progress",
           "ProgressCallback", "ServerAddress", "ServerError", "Stage", "TimedOut", "Timeouts", "error_from_response",
           "parse_server_url", "server_url_warnings", "ssl_context"]

log = logging.getLogger(__name__)

INFO_READ_TIMEOUT_S = 30.0
TOKEN_ENV = "CTENHANCE_API_TOKEN"
"""Environment variable the terminal client (and the server) read the API token from."""


@dataclass(frozen=True)
class Timeouts:
    """Connect and read timeouts in seconds (see the module docstring)."""

    connect: float = 10.0
    read: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("connect", "read"):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and value > 0):
                raise ValueError(f"the {name} timeout must be a positive number of seconds, got {value!r}")


@dataclass(frozen=True)
class InferResult:
    """What :meth:`Client.infer` delivered.

    Attributes:
        path: the result file.
        task: the task that made it.
        size_bytes: its size.
        seconds: total time of the call.
        server_filename: the file name the server gave (random; never a patient's).
        details: the server's result JSON (``X-CTSR-Result``: model, output geometry, timings,
            notes), empty when the server sent none.
        uncertainty: the uncertainty file (float32 HU std, the result's grid), when the result has one.
    """

    path: Path
    task: str
    size_bytes: int
    seconds: float
    server_filename: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    uncertainty: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (for the command line); ``uncertainty`` only when there is one."""
        record = {"output": str(self.path), "task": self.task, "size_bytes": self.size_bytes,
                  "seconds": round(self.seconds, 2), "server": self.details}
        if self.uncertainty is not None:
            record["uncertainty"] = str(self.uncertainty)
        return record


@dataclass(frozen=True)
class ServerAddress:
    """A parsed server URL."""

    scheme: str
    host: str
    port: int
    base_path: str = ""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base_path}"


def parse_server_url(url: str) -> ServerAddress:
    """Parse a server URL such as ``http://127.0.0.1:8000``.

    Raises:
        ClientError: the URL cannot name a server (no scheme, not http/https, no host, bad port...).
    """
    text = (url or "").strip()
    if not text:
        raise ClientError("Enter the server URL, e.g. http://127.0.0.1:8000.")
    if "://" not in text:
        raise ClientError(f"Start the server URL with http:// or https://, e.g. http://{text}.")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ClientError(f"The server URL must start with http:// or https://, not {parts.scheme}://.")
    if not parts.hostname:
        raise ClientError(f"The server URL {text!r} names no host; e.g. http://127.0.0.1:8000.")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ClientError("The server URL must be only scheme, host, port and path (no user name, ? or #).")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise ClientError(f"The port in {text!r} must be a number from 1 to 65535.") from None
    return ServerAddress(scheme, parts.hostname, port, parts.path.rstrip("/"))


def server_url_warnings(url: str) -> list[str]:
    """Advice about a valid URL that will probably not do what the user wants.

    Raises:
        ClientError: the URL is not valid (see :func:`parse_server_url`).
    """
    address = parse_server_url(url)
    warnings = []
    if address.host in ("0.0.0.0", "::"):
        warnings.append(f"{address.host} is the address a server listens on, not one to connect to: use 127.0.0.1 for "
                        "a server on this computer, or the server's name or IP address.")
    elif address.scheme == "http" and not _is_loopback(address.host):
        warnings.append("This connection is not encrypted (http://): images cross the network in clear; use https:// "
                        "for a server on another computer.")
    return warnings


def ssl_context(verify: bool | PathLike = True) -> ssl.SSLContext:
    """The TLS settings for ``https://`` servers.

    Args:
        verify: ``True`` checks the certificate and host name against the system's CA certificates
            (plus ``certifi``'s when installed); a path names a CA bundle (PEM) to check against
            instead; ``False`` checks nothing (a warning is logged).

    Raises:
        ClientError: the CA bundle cannot be read.
    """
    if verify is False:
        log.warning("HTTPS certificate checking is off: anyone on the network path can read and alter the images")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if verify is True:
        context = ssl.create_default_context()
        with contextlib.suppress(ImportError, OSError):
            import certifi

            context.load_verify_locations(certifi.where())
        return context
    try:
        return ssl.create_default_context(cafile=os.fspath(verify))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ClientError(f"The CA bundle {os.fspath(verify)} could not be read ({reason}); give a PEM file of CA "
                          "certificates.") from exc


class Client:
    """A client of one CT Enhance MONAI Label server (see the module docstring).

    Args:
        server_url: e.g. ``http://127.0.0.1:8000`` (a path prefix is kept, for servers behind a proxy).
        timeouts: connect and read timeouts.
        verify: HTTPS certificate checking (see :func:`ssl_context`).
        token: the server's API token, sent as ``Authorization: Bearer <token>`` on every request;
            None (or empty) for a server without one. Example::

                Client("https://ct-enhance.hospital.example", token=Path("token.txt").read_text().strip())

    Raises:
        ClientError: the URL or the token is not valid.
    """

    def __init__(self, server_url: str, timeouts: Timeouts | None = None, verify: bool | PathLike = True,
                 token: str | None = None) -> None:
        self.address = parse_server_url(server_url)
        self.timeouts = timeouts or Timeouts()
        self._ssl = ssl_context(verify) if self.address.scheme == "https" else None
        self._authorization = _authorization(token)
        if self._authorization and self.address.scheme == "http" and not _is_loopback(self.address.host):
            log.warning("The API token goes unencrypted to %s over http://; use https:// beyond this machine.",
                        self.address.host)

    @property
    def url(self) -> str:
        """The server's base URL."""
        return str(self.address)

    def info(self, cancel: Cancel | None = None) -> dict[str, Any]:
        """The server's ``GET /info/`` answer (read timeout at most 30 s)."""
        body = self._request("GET", "/info/", cancel=cancel or Cancel(), report=Reporter(None),
                             read_timeout=min(self.timeouts.read, INFO_READ_TIMEOUT_S))
        try:
            info = json.loads(body)
        except ValueError:
            info = None
        if not isinstance(info, dict):
            raise ConnectionFailed(f"{self.url} answered /info/ with something other than MONAI Label's JSON; "
                                   "check the URL and port.")
        return info

    def tasks(self, cancel: Cancel | None = None) -> list[TaskInfo]:
        """The server's image-output tasks (see :mod:`CTEnhanceLib.tasks`)."""
        return image_tasks(self.info(cancel))

    def enhance(self, image: PathLike, output: PathLike, target_spacing: float | None = None, model: str | None = None,
                device: str | None = None, task: str = SR_TASK, progress: ProgressCallback | None = None,
                cancel: Cancel | None = None) -> InferResult:
        """Through-plane super-resolution of one CT file (or DICOM folder) into ``output``.

        ``None`` leaves a parameter to the server's default. See :meth:`infer` for the rest.
        """
        params = {"target_spacing": target_spacing, "model": model, "device": device}
        return self.infer(task, {"image": image}, output, {k: v for k, v in params.items() if v is not None},
                          progress, cancel)

    def infer(self, task: str, inputs: Mapping[str, PathLike], output: PathLike,
              params: Mapping[str, Any] | None = None, progress: ProgressCallback | None = None,
              cancel: Cancel | None = None) -> InferResult:
        """Run an image-output task on uploaded files and save its result.

        Args:
            task: the task name (see :meth:`tasks`).
            inputs: input key (``image``, and ``label`` for a second image) -> a file, or a DICOM
                folder (sent as a ZIP).
            output: the result file; its extension (``.nrrd``, ``.nii``, ``.nii.gz``, ``.mha``)
                chooses the format. Written only when complete; an existing file is replaced.
            params: task parameters (the ``params`` JSON), e.g. ``{"target_spacing": 1.0}``.
            progress: called from this thread with each :class:`Progress`.
            cancel: lets another thread stop the call.

        Raises:
            ClientError: (or a subclass) every failure, in one sentence; nothing is left at ``output``
                (nor at its uncertainty file).
        """
        start = time.monotonic()
        output = Path(output)
        cancel = cancel or Cancel()
        try:
            extension = result_extension(output.name)
        except ValueError as exc:
            raise ClientError(f"Choose an output file ending in {', '.join(RESULT_EXTENSIONS)}.") from exc
        if not output.parent.is_dir():
            raise ClientError(f"The output folder does not exist: {output.parent}")
        unknown = sorted(set(inputs) - set(UPLOAD_FIELDS))
        if unknown or "image" not in inputs:
            raise ClientError(f"The inputs must be 'image' and optionally 'label', not {sorted(inputs)}.")
        request = {**(params or {}), "result_extension": extension}
        with upload_files(inputs) as files:
            body = multipart({"params": json.dumps(request)}, files)
            sink = Download(output, extension)
            self._request("POST", f"/infer/{quote(task, safe='')}?output=image", cancel=cancel,
                          report=Reporter(progress), body=body, sink=sink)
        uncertainty = self._fetch_uncertainty(sink.details, output, cancel, progress)
        Reporter(progress)(Stage.DONE)
        log.info("%s: result of %d bytes in %.1f s", task, sink.size, time.monotonic() - start)
        for note in sink.details.get("notes", ()):
            log.warning("%s: %s", task, note)
        return InferResult(output, task, sink.size, time.monotonic() - start, sink.server_filename, sink.details,
                           uncertainty)

    def _fetch_uncertainty(self, details: Mapping[str, Any], output: Path, cancel: Cancel,
                           progress: ProgressCallback | None) -> Path | None:
        """Download the uncertainty the result JSON names (once: the server hands it out once) beside
        ``output``; ``None`` when there is none. On failure both files are removed.

        Raises:
            ClientError: the address is not a path on this server, or the download failed.
        """
        try:
            url = uncertainty_url(details)
            if url is None:
                return None
            path = uncertainty_path(output)
            downloads = None if progress is None else _only_downloads(progress)
            self._request("GET", url, cancel=cancel, report=Reporter(downloads),
                          sink=Download(path, UNCERTAINTY_EXTENSION))
            return path
        except (ClientError, ValueError) as exc:
            output.unlink(missing_ok=True)
            if isinstance(exc, Cancelled):
                raise
            raise ClientError(f"The result came, but its uncertainty could not be fetched ({exc}); nothing was "
                              "kept: run it again.") from exc

    def _connection(self) -> http.client.HTTPConnection:
        connection: _HTTPConnection | _HTTPSConnection
        if self._ssl is not None:
            connection = _HTTPSConnection(self.address.host, self.address.port, timeout=self.timeouts.connect,
                                          context=self._ssl)
        else:
            connection = _HTTPConnection(self.address.host, self.address.port, timeout=self.timeouts.connect)
        connection.authorization = self._authorization
        return connection

    def _request(self, method: str, target: str, cancel: Cancel, report: Reporter, body: Body | None = None,
                 sink: Download | None = None, read_timeout: float | None = None) -> bytes:
        """One request on a new connection; the answer's body (or ``b""`` when ``sink`` took it)."""
        stage = Stage.CONNECT
        read_s = read_timeout or self.timeouts.read
        connection = self._connection()
        try:
            cancel.check()
            report(Stage.CONNECT)
            connection.connect()
            connection.sock.settimeout(read_s)
            with cancel.watching(connection.sock):
                stage = Stage.UPLOAD
                send(connection, method, self.address.base_path + target, body, cancel, report)
                stage = Stage.INFERENCE
                report(Stage.INFERENCE)
                response = connection.getresponse()
                if response.status != 200:
                    raise error_from_response(response.status, response.reason, response.read(MAX_ERROR_BYTES))
                stage = Stage.DOWNLOAD
                if sink is None:
                    return response.read()
                sink.receive(response, cancel, report)
                return b""
        except Cancelled:
            raise
        except ClientError:
            if cancel.cancelled:
                raise Cancelled(CANCELLED_MESSAGE) from None
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise self._describe(exc, stage, cancel, read_s) from exc
        finally:
            connection.close()

    def _describe(self, exc: BaseException, stage: Stage, cancel: Cancel, read_s: float) -> ClientError:
        """The sentence for a network failure during ``stage`` (``read_s``: the read timeout in force)."""
        if cancel.cancelled:
            return Cancelled(CANCELLED_MESSAGE)
        url = self.url
        if isinstance(exc, ssl.SSLCertVerificationError):
            return ConnectionFailed(f"The HTTPS certificate of {url} could not be verified ({exc.verify_message}); "
                                    "give the CA certificate of your server, or ask its administrator.")
        if isinstance(exc, ConnectionRefusedError):
            return ConnectionFailed(f"Nothing is listening at {url}: start the server (monailabel start_server ...) "
                                    "or correct the URL and port.")
        if isinstance(exc, socket.gaierror):
            return ConnectionFailed(f"The server name {self.address.host!r} could not be found; check the URL.")
        if isinstance(exc, TimeoutError):
            return _timeout_error(url, stage, self.timeouts.connect, read_s)
        if isinstance(exc, ssl.SSLError):
            return ConnectionFailed(f"The secure connection to {url} failed ({exc.reason or exc}); check that the "
                                    "URL starts with the scheme the server uses (http:// or https://).")
        if isinstance(exc, (ConnectionError, http.client.IncompleteRead)):
            return ConnectionFailed(f"The server at {url} closed the connection during the {stage.value}; it may "
                                    "have stopped or been restarted. Try again; if it persists, see the server log.")
        if isinstance(exc, http.client.HTTPException):
            return ConnectionFailed(f"{url} did not answer like an HTTP server ({type(exc).__name__}); check the URL, "
                                    "its port, and http:// versus https://.")
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return ConnectionFailed(f"Network error during the {stage.value} with {url}: {reason}.")


class _TokenHeader:
    """Adds ``authorization`` (when set) to the headers of every request sent on the connection."""

    authorization: str | None = None

    def endheaders(self, *args: Any, **kwargs: Any) -> None:
        if self.authorization:
            self.putheader("Authorization", self.authorization)  # type: ignore[attr-defined]
        super().endheaders(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_TokenHeader, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_TokenHeader, http.client.HTTPSConnection):
    pass


def _authorization(token: str | None) -> str | None:
    """The ``Authorization`` header value for ``token`` (None: no header)."""
    token = (token or "").strip()
    if not token:
        return None
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in token) or not token.isascii():
        raise ClientError("The API token must be one word of printable ASCII characters; check the token file.")
    return f"Bearer {token}"


def _only_downloads(progress: ProgressCallback) -> ProgressCallback:
    """``progress`` for the download stage only (the uncertainty's fetch continues the result's download)."""
    def report(update: Progress) -> None:
        if update.stage is Stage.DOWNLOAD:
            progress(update)
    return report


def _timeout_error(url: str, stage: Stage, connect_s: float, read_s: float) -> TimedOut:
    if stage is Stage.CONNECT:
        return TimedOut(f"{url} did not accept a connection within {connect_s:g} s (connect timeout); check "
                        "the URL, the network, and that the server is running.")
    if stage is Stage.INFERENCE:
        return TimedOut(f"The server did not answer within {read_s:g} s (read timeout); it may still be "
                        "working: raise the read timeout for large volumes or slow models.")
    action = "stopped taking the upload" if stage is Stage.UPLOAD else "stopped sending the result"
    return TimedOut(f"The server {action} for {read_s:g} s (read timeout); try again.")


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def main(argv: list[str] | None = None) -> int:
    """``python -m CTEnhanceLib.client``: see :mod:`CTEnhanceLib.cli`."""
    from CTEnhanceLib.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
