"""Errors as HTTP answers: one line a person can act on in a JSON ``{"detail": ...}``, details in the log.

Mapping (:func:`to_http`):
    =========================================  =====  ==============================================
    exception                                  HTTP   meaning
    =========================================  =====  ==============================================
    ``fastapi.HTTPException``                  as is  already an answer
    :class:`NotFoundError`                     404    unknown model, task or datastore image
    :class:`ParamError`                        422    a parameter with a wrong type or value
    :class:`TooLargeError`                     413    the output would exceed the server's limit
    ``ctsr_models...WeightsError``             503    a model's weights are missing or altered (server side)
    ``ctsr_models.io.InputError``              400    the image cannot be used (corrupt, 2D, not CT...)
    ``MemoryError``                            503    the server ran out of memory
    anything else                              500    generic message with a reference; traceback logged
    =========================================  =====  ==============================================
"""
from __future__ import annotations

import logging
import re
import uuid

from fastapi import HTTPException

from ctsr_models.inference import WeightsError
from ctsr_models.io.errors import InputError

log = logging.getLogger(__name__)


class ParamError(InputError):
    """A request parameter with a wrong type or value (HTTP 422)."""


class NotFoundError(InputError):
    """An unknown model, task or datastore image (HTTP 404)."""


class TooLargeError(InputError):
    """The requested output is larger than the server allows (HTTP 413)."""


def status_of(exc: BaseException) -> int:
    """The HTTP status that answers ``exc`` (see the module table)."""
    if isinstance(exc, HTTPException):
        return exc.status_code
    for kind, status in ((NotFoundError, 404), (ParamError, 422), (TooLargeError, 413), (WeightsError, 503),
                         (InputError, 400), (MemoryError, 503)):
        if isinstance(exc, kind):
            return status
    return 500


def to_http(exc: BaseException, task: str, hide: tuple[str, ...] = ()) -> HTTPException:
    """Turn any failure of ``task`` into an :class:`HTTPException` with a readable one-line detail.

    Refusals (4xx) are logged at INFO by status and kind only (their messages may name files inside
    a study); the message itself is logged at DEBUG. Failures (5xx) are logged with the traceback
    under a reference that the client also receives.

    Args:
        exc: the exception raised while serving the request.
        task: the task name, for the log.
        hide: strings to replace by ``the file`` in the message (server-side paths of inputs).
    """
    status = status_of(exc)
    if isinstance(exc, HTTPException):
        return exc
    if isinstance(exc, MemoryError):
        log.error("%s: out of memory", task)
        return HTTPException(503, "the server ran out of memory; try a larger target spacing or a smaller image")
    if status == 500:
        ref = uuid.uuid4().hex[:8]
        log.error("%s: internal error (reference %s)", task, ref, exc_info=exc)
        return HTTPException(500, f"internal error in {task} (reference {ref}); the server log has the details")
    message = client_message(exc, hide)
    log.info("%s: refused with %d (%s)", task, status, type(exc).__name__)
    log.debug("%s: refusal message: %s", task, message)
    return HTTPException(status, message)


def client_message(exc: BaseException, hide: tuple[str, ...] = ()) -> str:
    """The first line of ``exc``'s message, without server-side paths, in the server's words.

    ``ctsr_models`` words its messages for the command line; an option there (``--series-uid``) is
    a request parameter here (``series_uid``).
    """
    message = (str(exc).splitlines() or [""])[0] or type(exc).__name__
    for text in sorted(filter(None, hide), key=len, reverse=True):
        message = re.sub(rf"(?<![\w.-]){re.escape(text)}(?![\w.-])", "the file", message)
    return re.sub(r"(?<![\w-])--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), message)
