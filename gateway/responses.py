"""OpenAPI descriptions of the error answers the routes share."""

from typing import Any

from schemas import ErrorResponse


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: "Missing or wrong API key",
        403: "The application is disabled",
        404: "Unknown application or event",
        422: "Invalid request: each error names the field and the reason",
        503: "Kafka or PostgreSQL is unavailable; retry after the Retry-After header's seconds",
    }
    return {code: {"model": ErrorResponse, "description": described[code]} for code in codes}
