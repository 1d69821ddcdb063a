"""Dependencies of the routes, as ``Annotated`` aliases."""

from typing import Annotated

import asyncpg
from fastapi import Depends, Header, Path, Request

from gateway.errors import ApiError
from gateway.producer import EventProducer
from schemas import ErrorDetail
from vdip.applications import Application, get_application, key_matches
from vdip.settings import Settings


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


def _producer(request: Request) -> EventProducer:
    producer: EventProducer = request.app.state.producer
    return producer


SettingsDep = Annotated[Settings, Depends(_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(_pool)]
ProducerDep = Annotated[EventProducer, Depends(_producer)]

AppIdPath = Annotated[
    str,
    Path(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        description="The application's id.",
        examples=["demo"],
    ),
]


def _presented_key(
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(description="The application's API key.")] = None,
) -> str | None:
    """The key sent as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``."""
    if x_api_key:
        return x_api_key
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return None


PresentedKey = Annotated[str | None, Depends(_presented_key)]


async def authorize(pool: asyncpg.Pool, app_id: str, key: str | None) -> Application:
    """The application ``app_id`` if ``key`` is its key: else 404, 401 or 403."""
    application = await get_application(pool, app_id)
    if application is None:
        raise ApiError(
            404,
            f"Application '{app_id}' does not exist",
            [ErrorDetail(field="path.app_id", reason="unknown application")],
        )
    if key is None or not key_matches(key, application.api_key_hash):
        raise ApiError(
            401,
            "A valid API key for this application is required",
            [ErrorDetail(field="header.X-API-Key", reason="missing or wrong key")],
            {"WWW-Authenticate": "Bearer"},
        )
    if not application.is_active:
        raise ApiError(
            403,
            f"Application '{app_id}' is disabled",
            [ErrorDetail(field="path.app_id", reason="application disabled")],
        )
    return application


async def _authorized_app(app_id: AppIdPath, pool: PoolDep, key: PresentedKey) -> Application:
    return await authorize(pool, app_id, key)


AuthorizedApp = Annotated[Application, Depends(_authorized_app)]
