"""The client's failures, each worded as one sentence a user can act on.

A server's own refusal (``{"detail": "..."}``, CT Enhance's HTTP 4xx) passes through unchanged;
FastAPI's validation errors are joined into one sentence; any other error status gets a short
reason and what to do.
"""
from __future__ import annotations

import contextlib
import json
from typing import Any

CANCELLED_MESSAGE = "Cancelled; the server may still finish the job, and its result is discarded."

_ADVICE = {404: "the task or address does not exist on this server; Connect lists the tasks it offers",
           413: "the upload or the result is too large for the server",
           502: "a proxy could not reach the server",
           503: "the server is busy or unavailable; try again later"}


class ClientError(Exception):
    """A failure, described in one sentence a user can act on.

    Attributes:
        status: the HTTP status when the server answered, else ``None``.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConnectionFailed(ClientError):
    """No usable connection: refused, unknown host, TLS failure, or the connection was cut."""


class TimedOut(ClientError):
    """The server did not accept the connection (connect timeout) or did not answer (read timeout) in time."""


class ServerError(ClientError):
    """The server answered with an error status; the message is its own ``detail`` when it gave one."""


class Cancelled(ClientError):
    """The call was cancelled through its :class:`~CTEnhanceLib.progress.Cancel`."""


def error_from_response(status: int, reason: str, body: bytes) -> ServerError:
    """The :class:`ServerError` for an answer with an error ``status`` and its ``body``."""
    detail: Any = None
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        document = json.loads(body.decode("utf-8"))
        detail = document.get("detail") if isinstance(document, dict) else None
    if isinstance(detail, str) and detail.strip():
        return ServerError(detail.strip(), status)
    if isinstance(detail, list) and detail:
        parts = [f"{'.'.join(str(x) for x in item.get('loc', ()))}: {item.get('msg', '')}".lstrip(": ")
                 for item in detail if isinstance(item, dict)]
        return ServerError(f"The server refused the request: {'; '.join(parts)}.", status)
    hint = _ADVICE.get(status, "see the server log" if status >= 500 else "check the request")
    return ServerError(f"The server answered HTTP {status} {reason}: {hint}.".replace("  ", " "), status)
