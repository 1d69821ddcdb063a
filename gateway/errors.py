"""HTTP errors and the handlers that turn every failure into the error envelope.

Every error answer is ``{"success": false, "message": ..., "errors": [{"field", "reason"}]}``.
"""

from collections.abc import Mapping, Sequence

import asyncpg
from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas import ErrorDetail, ErrorResponse
from vdip.errors import BrokerUnavailable, DatabaseUnavailable


class ApiError(StarletteHTTPException):
    """An error answer: raised by routes, dependencies and middleware, rendered by ``api_error_handler``.

    It is an ``HTTPException`` so that FastAPI lets it through while it reads a request's body.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        errors: Sequence[ErrorDetail] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code, message, dict(headers or {}))
        self.message = message
        self.errors = list(errors)


def _render(status_code: int, body: ErrorResponse, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


async def api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return render_error(exc)


def render_error(exc: ApiError) -> JSONResponse:
    return _render(exc.status_code, ErrorResponse(message=exc.message, errors=exc.errors), exc.headers)


async def validation_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        ErrorDetail(field=".".join(str(part) for part in error["loc"]), reason=error["msg"])
        for error in exc.errors()
    ]
    return _render(422, ErrorResponse(message="The request is invalid", errors=errors))


async def http_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    # FastAPI's own 400 is a body it could not parse (e.g. JSON nested past the parser's limit).
    errors = (
        [ErrorDetail(field="body", reason="could not be parsed as JSON")] if exc.status_code == 400 else []
    )
    return _render(exc.status_code, ErrorResponse(message=str(exc.detail), errors=errors), exc.headers)


async def broker_unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    retry_after = str(request.app.state.settings.retry_after_s)
    return _render(
        503,
        ErrorResponse(
            message="Nothing was done: Kafka is unavailable; retry later",
            errors=[ErrorDetail(field="kafka", reason=str(exc))],
        ),
        {"Retry-After": retry_after},
    )


async def database_unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    return _render(
        503,
        ErrorResponse(
            message="Nothing was done: PostgreSQL is unavailable; retry later",
            errors=[ErrorDetail(field="postgres", reason=str(exc))],
        ),
        {"Retry-After": str(request.app.state.settings.retry_after_s)},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(BrokerUnavailable, broker_unavailable_handler)
    # Any client error of aiokafka that a route lets through (its KafkaTimeoutError is no
    # TimeoutError): Kafka did not take the record, 503 as promised, never a 500.
    app.add_exception_handler(KafkaError, broker_unavailable_handler)
    app.add_exception_handler(DatabaseUnavailable, database_unavailable_handler)
    # A database connection that is refused or lost mid-request (PostgreSQL restarting): 503.
    for lost in (
        OSError,
        asyncpg.PostgresConnectionError,
        asyncpg.ConnectionDoesNotExistError,
        asyncpg.CannotConnectNowError,
        asyncpg.InternalClientError,  # a connection the server dropped mid-statement
    ):
        app.add_exception_handler(lost, database_unavailable_handler)
