"""Bytes on the wire: the multipart upload, sent in chunks, and the result, streamed into a temporary file.

Files are never read into memory whole: the request body is a sequence of byte strings and file
paths sent chunk by chunk, and the answer is written to disk chunk by chunk, with progress reported
and cancellation checked between chunks. Local file problems (an unreadable input, a full disk) are
reported as such, not as network failures.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import tempfile
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Union

from .errors import ClientError, ConnectionFailed, error_from_response
from .progress import Cancel, Reporter, Stage
from .tasks import UPLOAD_FIELDS

CHUNK_BYTES = 1 << 20
MAX_ERROR_BYTES = 64 * 1024
USER_AGENT = "CTEnhance-client/1"
RESULT_HEADER = "X-CTSR-Result"
"""Response header in which CT Enhance's server sends the result JSON (geometry, timings, notes)."""

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class Body:
    """A request body: byte strings and files, in order."""

    content_type: str
    parts: tuple[bytes | Path, ...]

    @property
    def size(self) -> int:
        """Its length in bytes."""
        return sum(len(p) if isinstance(p, bytes) else p.stat().st_size for p in self.parts)

    def chunks(self) -> Iterator[bytes]:
        """The body in chunks of at most :data:`CHUNK_BYTES` for files.

        Raises:
            ClientError: a file cannot be read.
        """
        for part in self.parts:
            if isinstance(part, bytes):
                yield part
                continue
            with _open_input(part) as stream:
                while chunk := _read_input(stream, part):
                    yield chunk


def multipart(fields: Mapping[str, str], files: Mapping[str, tuple[str, Path]]) -> Body:
    """A ``multipart/form-data`` body of text fields and files (field -> (file name, path))."""
    boundary = f"ctenhance-{uuid.uuid4().hex}"
    parts: list[bytes | Path] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, path) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode())
        parts += [path, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return Body(f"multipart/form-data; boundary={boundary}", tuple(parts))


def send(connection: http.client.HTTPConnection, method: str, target: str, body: Body | None, cancel: Cancel,
         report: Reporter) -> None:
    """Send the request line, headers and body, reporting upload progress chunk by chunk.

    When the server (or a proxy) cuts the upload short with an error answer, that answer is raised.
    """
    connection.putrequest(method, target, skip_accept_encoding=True)
    connection.putheader("User-Agent", USER_AGENT)
    connection.putheader("Accept", "application/octet-stream, application/json")
    connection.putheader("Connection", "close")
    total = body.size if body is not None else 0
    if body is not None:
        connection.putheader("Content-Type", body.content_type)
        connection.putheader("Content-Length", str(total))
    connection.endheaders()
    if body is None:
        return
    sent = 0
    report(Stage.UPLOAD, 0, total)
    try:
        for chunk in body.chunks():
            cancel.check()
            connection.send(chunk)
            sent += len(chunk)
            report(Stage.UPLOAD, sent, total)
    except ConnectionError:
        _raise_early_answer(connection, cancel)
        raise


def _raise_early_answer(connection: http.client.HTTPConnection, cancel: Cancel) -> None:
    if cancel.cancelled:
        return
    try:
        response = connection.getresponse()
        body = response.read(MAX_ERROR_BYTES)
    except (OSError, http.client.HTTPException):
        return
    if response.status != 200:
        raise error_from_response(response.status, response.reason, body)


class Download:
    """Streams a result into a temporary file beside ``output`` and renames it into place when complete.

    Attributes:
        size: bytes received.
        server_filename: the file name the server gave.
        details: the server's result JSON from :data:`RESULT_HEADER` (empty when absent).
    """

    def __init__(self, output: Path, extension: str) -> None:
        self.output = output
        self.extension = extension
        self.size = 0
        self.server_filename = ""
        self.details: dict[str, Any] = {}

    def receive(self, response: http.client.HTTPResponse, cancel: Cancel, report: Reporter) -> None:
        """Save the body of ``response``; nothing is left behind when it fails or is cancelled.

        Raises:
            ClientError: the server sent another file type, the body ended early, or it cannot be written.
        """
        self.server_filename = _attachment_name(response.getheader("Content-Disposition") or "")
        if self.server_filename and not self.server_filename.lower().endswith(self.extension):
            raise ClientError(f"The server sent a {Path(self.server_filename).suffix} file, not the {self.extension} "
                              "asked for; choose another output type.")
        self.details = _json_header(response.getheader(RESULT_HEADER))
        length = (response.getheader("Content-Length") or "").strip()
        total = int(length) if length.isdigit() else 0
        try:
            fd, name = tempfile.mkstemp(prefix=".ctenhance-", suffix=".part", dir=self.output.parent)
        except OSError as exc:
            raise _write_error(self.output, exc) from exc
        try:
            buffer = memoryview(bytearray(CHUNK_BYTES))  # one buffer, reused: no allocation per chunk
            with os.fdopen(fd, "wb") as out:
                report(Stage.DOWNLOAD, 0, total)
                while n_read := _read_answer(response, cancel, buffer):
                    _write(out, buffer[:n_read], self.output)
                    self.size += n_read
                    report(Stage.DOWNLOAD, self.size, total)
            if total and self.size != total:
                raise ConnectionFailed(f"The download ended after {self.size} of {total} bytes; try again.")
            os.replace(name, self.output)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise


@contextlib.contextmanager
def upload_files(inputs: Mapping[str, PathLike]) -> Iterator[dict[str, tuple[str, Path]]]:
    """Form field -> (neutral file name, path) for each input; a DICOM folder is zipped into a temporary file.

    The upload names are ``image.nrrd``, ``label.zip``...: the server needs the extension, never the
    original name (which may name a patient).

    Raises:
        ClientError: an input does not exist or cannot be read.
    """
    with tempfile.TemporaryDirectory(prefix="ctenhance-upload-") as scratch:
        files = {}
        for key, value in inputs.items():
            path = Path(value)
            if not path.exists():
                raise ClientError(f"The input file does not exist: {path}")
            if path.is_dir():
                path = _zip_folder(path, Path(scratch) / f"{key}.zip")
            suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()
            files[UPLOAD_FIELDS[key]] = (f"{key}{suffix}", path)
        yield files


def _zip_folder(folder: Path, target: Path) -> Path:
    """The files of ``folder`` (not its subfolders) in a ZIP, uncompressed (DICOM pixel data compresses poorly)."""
    names = sorted(p for p in folder.iterdir() if p.is_file())
    if not names:
        raise ClientError(f"The input folder holds no files: {folder}")
    try:
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
            for path in names:
                archive.write(path, path.name)
    except OSError as exc:
        raise ClientError(f"The input folder {folder} cannot be packed for upload ({exc.strerror or exc}).") from exc
    return target


@contextlib.contextmanager
def _open_input(path: Path) -> Iterator[BinaryIO]:
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise ClientError(f"The input {path} cannot be read ({exc.strerror or exc}).") from exc
    with stream:
        yield stream


def _read_input(stream: BinaryIO, path: Path) -> bytes:
    try:
        return stream.read(CHUNK_BYTES)
    except OSError as exc:
        raise ClientError(f"The input {path} cannot be read ({exc.strerror or exc}).") from exc


def _read_answer(response: http.client.HTTPResponse, cancel: Cancel, buffer: memoryview) -> int:
    cancel.check()
    return response.readinto(buffer)


def _write(out: BinaryIO, chunk: bytes | memoryview, output: Path) -> None:
    try:
        out.write(chunk)
    except OSError as exc:
        raise _write_error(output, exc) from exc


def _write_error(output: Path, exc: OSError) -> ClientError:
    return ClientError(f"The result cannot be written into {output.parent} ({exc.strerror or exc}); free some space "
                       "or choose another folder.")


def _json_header(value: str | None) -> dict[str, Any]:
    """A JSON object sent in a header (empty when absent or not an object)."""
    with contextlib.suppress(ValueError, TypeError):
        document = json.loads(value or "")
        if isinstance(document, dict):
            return document
    return {}


def _attachment_name(disposition: str) -> str:
    """The file name in a ``Content-Disposition`` header (RFC 6266 ``filename*`` or ``filename``)."""
    match = re.search(r"filename\*=(?:UTF-8|utf-8)''([^;]+)", disposition) or re.search(r'filename="?([^";]+)"?',
                                                                                      disposition)
    return match.group(1).strip() if match else ""
