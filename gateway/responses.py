"""OpenAPI descriptions of the error answers the routes share, with examples."""

from typing import Any

from schemas import ErrorResponse

_DESCRIBED: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("The body could not be parsed", {"message": "There was an error parsing the body"}),
    401: (
        "Missing, wrong, revoked or expired API key (or admin token)",
        {
            "message": "A valid API key for this application is required",
            "errors": [{"field": "header.X-API-Key", "reason": "missing or wrong key"}],
        },
    ),
    403: (
        "The application is disabled",
        {
            "message": "Application 'demo' is disabled",
            "errors": [{"field": "path.app_id", "reason": "application disabled"}],
        },
    ),
    404: (
        "Unknown application or event",
        {
            "message": "Application 'demo' does not exist",
            "errors": [{"field": "path.app_id", "reason": "unknown application"}],
        },
    ),
    409: (
        "The id is taken",
        {
            "message": "Application 'demo' exists already",
            "errors": [{"field": "body.app_id", "reason": "taken"}],
        },
    ),
    413: (
        "The body is larger than max_body_bytes",
        {
            "message": "The request body is larger than 1048576 bytes",
            "errors": [{"field": "body", "reason": "larger than 1048576 bytes"}],
        },
    ),
    422: (
        "Invalid request: each error names the field and the reason",
        {
            "message": "The request is invalid",
            "errors": [{"field": "body.event_type", "reason": "Field required"}],
        },
    ),
    429: (
        "The application is over its rate limit; retry after Retry-After seconds",
        {
            "message": "Application 'demo' is over its rate limit",
            "errors": [{"field": "path.app_id", "reason": "rate limit exceeded"}],
        },
    ),
    503: (
        "Kafka is unavailable; nothing was accepted; retry after Retry-After seconds",
        {
            "message": "Nothing was done: Kafka is unavailable; retry later",
            "errors": [{"field": "kafka", "reason": "Kafka did not acknowledge within 5.0 s"}],
        },
    ),
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {
        code: {
            "model": ErrorResponse,
            "description": _DESCRIBED[code][0],
            "content": {
                "application/json": {"example": {"success": False, "errors": [], **_DESCRIBED[code][1]}}
            },
        }
        for code in codes
    }


# Ingest's 409: a client-chosen event id already claimed by another version of the event.
EVENT_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ErrorResponse,
        "description": "The event_id (yours, or made from your Idempotency-Key) was accepted before with"
        " another event_type or payload: the first version is kept, this one is not accepted",
        "content": {
            "application/json": {
                "example": {
                    "success": False,
                    "message": "Event 0193a4f2-7c1e-7d3a-9f00-5b2a1c3d4e5f was accepted before with"
                    " other content",
                    "errors": [
                        {
                            "field": "body.event_id",
                            "reason": "another version of this event (event_type and payload) was accepted"
                            " first; it is kept",
                        }
                    ],
                }
            }
        },
    }
}


def scoped(scope: str, *codes: int) -> dict[int | str, dict[str, Any]]:
    """``errors(*codes)`` and the 403 of an application key without ``scope`` (what the route
    needs: the admin token passes too, but for ingest)."""
    described = errors(*codes)
    disabled = " (or the application is disabled)" if scope == "ingest" else ""
    described[403] = {
        "model": ErrorResponse,
        "description": f"Needs a key with the '{scope}' scope{disabled}",
        "content": {
            "application/json": {
                "example": {
                    "success": False,
                    "message": f"This key does not have the '{scope}' scope",
                    "errors": [{"field": "header.X-API-Key", "reason": f"needs the {scope} scope"}],
                }
            }
        },
    }
    return described
