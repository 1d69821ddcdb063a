"""Errors: a refusal of the gateway that retrying cannot change is a ``ClientError`` of a type
per status; the events it concerns were not accepted."""

from typing import Any

import httpx


class VdipClientError(Exception):
    """Anything this package raises."""


class QueueFull(VdipClientError):
    """``track()`` on a full queue with ``overflow="raise"``: the event was not queued."""


class ClientClosed(VdipClientError):
    """``track()`` after ``close()``."""


class GaveUp(VdipClientError):
    """Events still failing (connection errors, 429, 5xx) after ``retry_for_s``: not known to be
    accepted (a dropped connection may have delivered them: sending them again is safe)."""


class ClientError(VdipClientError):
    """A 4xx answer that a retry would get again. ``errors`` is the answer's list of
    ``{"field", "reason"}``."""

    def __init__(self, status: int, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.errors = errors


class BadRequest(ClientError):
    """400, 413: the body could not be read or is too large."""


class Unauthorized(ClientError):
    """401: wrong, revoked or expired key."""


class Forbidden(ClientError):
    """403: the key lacks the ``ingest`` scope, the application is disabled, or the origin is
    not allowed."""


class NotFound(ClientError):
    """404: no such application."""


class Conflict(ClientError):
    """409: an event id was accepted before with another type or payload."""


class Invalid(ClientError):
    """422 (or a 207's rejected events): events that break the schema or a limit."""


_TYPES: dict[int, type[ClientError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: BadRequest,
    422: Invalid,
    207: Invalid,
}


def error_for(response: httpx.Response) -> ClientError:
    try:
        body = response.json()
        message, errors = str(body.get("message", "")), list(body.get("errors") or [])
        if response.status_code == 207:
            errors = [e for r in body["data"]["results"] for e in r["errors"] if e.get("field") != "kafka"]
    except (ValueError, AttributeError, KeyError, TypeError):
        message, errors = response.text[:200], []
    return _TYPES.get(response.status_code, ClientError)(response.status_code, message, errors)
