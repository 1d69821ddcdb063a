"""Dependencies of the routes, as ``Annotated`` aliases: settings, pool, producer, who is calling.

They are all ``async def``: FastAPI runs a plain ``def`` dependency in a thread pool, a thread hop
per dependency per request (it cut single-event ingest to a tenth of its throughput).

Credentials come as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``; the key is either an
one of an application's keys or the admin token (``VDIP_ADMIN_TOKEN``). An application's key
opens only that application, and only for its scopes (``vdip.applications.Scope``): ingest needs
``ingest``, reads ``read``, changing rules and keys ``manage``; a key without the scope an
endpoint needs is a 403 naming it. The admin token may do all but ingest; creating, listing,
enabling and disabling applications take the admin token only.
"""

import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import asyncpg
from fastapi import Depends, Header, Path, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from gateway.conflicts import ConflictCheck
from gateway.errors import ApiError
from gateway.limits import Limits
from gateway.producer import EventProducer
from gateway.quotas import Quotas
from schemas import ErrorDetail
from vdip.applications import Application, ApplicationKey, Scope
from vdip.db import UNAVAILABLE
from vdip.errors import DatabaseUnavailable
from vdip.rulesets import Republisher
from vdip.settings import Settings
from vdip.store.applications import get_application
from vdip.store.audit import ADMIN, Actor


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def _producer(request: Request) -> EventProducer:
    producer: EventProducer = request.app.state.producer
    return producer


async def _republisher(request: Request) -> Republisher:
    republisher: Republisher = request.app.state.republisher
    return republisher


SettingsDep = Annotated[Settings, Depends(_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(_pool)]
ProducerDep = Annotated[EventProducer, Depends(_producer)]
RepublisherDep = Annotated[Republisher, Depends(_republisher)]

APP_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
AppIdPath = Annotated[
    str,
    Path(
        pattern=APP_ID_PATTERN,
        description="The application's id.",
        examples=["demo"],
    ),
]


class ApplicationCache:
    """Applications by id with their keys (hashes, scopes, expiry), kept ``ttl_s`` seconds: ingest
    does not query PostgreSQL per request, and goes on for known applications while PostgreSQL is
    unreachable.

    A key created, rotated or revoked or an application disabled through this gateway applies at
    once; through another process (the CLI, another gateway), within ``ttl_s``.
    """

    def __init__(self, pool: asyncpg.Pool, ttl_s: float) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._entries: dict[str, tuple[float, Application | None]] = {}

    async def get(self, app_id: str) -> Application | None:
        entry = self._entries.get(app_id)
        now = time.monotonic()
        if entry is not None and entry[0] > now:
            return entry[1]
        try:
            application = await get_application(self._pool, app_id)
        except UNAVAILABLE as exc:
            if entry is not None:
                return entry[1]  # PostgreSQL is away: keep ingesting for the applications we know
            raise DatabaseUnavailable(f"PostgreSQL did not answer: {exc!r}") from exc
        if len(self._entries) > 100_000:  # bounded: unknown ids are cached too
            self._entries.clear()
        self._entries[app_id] = (now + self._ttl_s, application)
        return application

    def forget(self, app_id: str) -> None:
        self._entries.pop(app_id, None)


async def _applications(request: Request) -> ApplicationCache:
    cache: ApplicationCache = request.app.state.applications
    return cache


ApplicationsDep = Annotated[ApplicationCache, Depends(_applications)]


Authorization = Annotated[str | None, Header(include_in_schema=False)]
XApiKey = Annotated[str | None, Header(description="An application's API key, or the admin token.")]


async def _presented_key(authorization: Authorization = None, x_api_key: XApiKey = None) -> str | None:
    """The key sent as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``."""
    if x_api_key:
        return x_api_key
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return None


PresentedKey = Annotated[str | None, Depends(_presented_key)]


def _unauthorized(what: str) -> ApiError:
    return ApiError(
        401,
        f"A valid {what} is required",
        [ErrorDetail(field="header.X-API-Key", reason="missing or wrong key")],
        {"WWW-Authenticate": "Bearer"},
    )


def _unknown_app(app_id: str) -> ApiError:
    return ApiError(
        404,
        f"Application '{app_id}' does not exist",
        [ErrorDetail(field="path.app_id", reason="unknown application")],
    )


def is_admin(settings: Settings, key: str | None) -> bool:
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    return bool(token and key and hmac.compare_digest(key.encode(), token.encode()))


def missing_scope(scope: Scope) -> ApiError:
    return ApiError(
        403,
        f"This key does not have the '{scope}' scope",
        [ErrorDetail(field="header.X-API-Key", reason=f"needs the {scope} scope")],
    )


@dataclass(frozen=True)
class Caller:
    """Who is calling: the admin, or the holder of one of an application's keys."""

    admin: bool
    application: Application | None = None
    key: ApplicationKey | None = None

    @property
    def actor(self) -> Actor:
        """Who the audit trail says did it."""
        return ADMIN if self.admin or self.key is None else Actor(self.key.key_id)

    def may_read(self, app_id: str) -> bool:
        return self.admin or (self.application is not None and self.application.app_id == app_id)


async def authorize_app(
    applications: ApplicationCache, settings: Settings, app_id: str, key: str | None, scope: Scope
) -> Caller:
    """The caller of an application's endpoint that needs ``scope``: 404 unknown app, 401 wrong,
    revoked or expired key, 403 a key without ``scope``, or a disabled application (ingest)."""
    application = await applications.get(app_id)
    if application is None:
        raise _unknown_app(app_id)
    if scope is not Scope.INGEST and is_admin(settings, key):
        return Caller(admin=True, application=application)
    found = application.key_for(key, datetime.now(UTC)) if key is not None else None
    if found is None:
        ingest = scope is Scope.INGEST
        raise _unauthorized("API key for this application" + ("" if ingest else " (or the admin token)"))
    if scope not in found.scopes:
        raise missing_scope(scope)
    if scope is Scope.INGEST and not application.is_active:
        raise ApiError(
            403,
            f"Application '{app_id}' is disabled",
            [ErrorDetail(field="path.app_id", reason="application disabled")],
        )
    return Caller(admin=False, application=application, key=found)


@dataclass(frozen=True)
class Ingest:
    """What an ingest request needs: its authorized application and the gateway's parts."""

    application: Application
    settings: Settings
    producer: EventProducer
    quotas: Quotas
    limits: Limits
    conflicts: ConflictCheck


async def ingest_dependency(
    app_id: AppIdPath, request: Request, authorization: Authorization = None, x_api_key: XApiKey = None
) -> Ingest:
    # One dependency rather than five: FastAPI's per-dependency cost dominated single-event ingest.
    state = request.app.state
    key = await _presented_key(authorization, x_api_key)
    caller = await authorize_app(state.applications, state.settings, app_id, key, Scope.INGEST)
    assert caller.application is not None
    return Ingest(
        caller.application, state.settings, state.producer, state.quotas, state.limits, state.conflicts
    )


async def _app_reader(
    app_id: AppIdPath, applications: ApplicationsDep, settings: SettingsDep, key: PresentedKey
) -> Caller:
    return await authorize_app(applications, settings, app_id, key, Scope.READ)


async def _app_manager(
    app_id: AppIdPath, applications: ApplicationsDep, settings: SettingsDep, key: PresentedKey
) -> Caller:
    return await authorize_app(applications, settings, app_id, key, Scope.MANAGE)


async def _admin(settings: SettingsDep, key: PresentedKey) -> None:
    if not is_admin(settings, key):
        raise _unauthorized("admin token")


IngestDep = Annotated[Ingest, Depends(ingest_dependency)]
AppReader = Annotated[Caller, Depends(_app_reader)]  # the read scope, or the admin token
AppManager = Annotated[Caller, Depends(_app_manager)]  # the manage scope, or the admin token
RequireAdmin = Depends(_admin)

# A filter on event_type: what an event type can be (no control characters; PostgreSQL refuses NUL).
EventTypeFilter = Annotated[
    str | None,
    Query(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$", description="Only this type."),
]


def query_parameters(dependant: Dependant) -> frozenset[str]:
    """The query parameters an endpoint reads: its own and its dependencies' (what its OpenAPI
    operation documents)."""
    names = {param.alias for param in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= query_parameters(dependency)
    return frozenset(names)


_TAKEN: dict[int, frozenset[str]] = {}


async def refuse_unknown_query_parameters(request: Request) -> None:
    """422 naming every query parameter the endpoint does not take: a misspelt filter, or another
    API's parameter, is never silently ignored. Every route depends on it, first."""
    if not request.scope.get("query_string"):
        return
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    taken = _TAKEN.get(id(route))
    if taken is None:
        taken = _TAKEN[id(route)] = query_parameters(route.dependant)
    unknown = sorted(set(request.query_params) - taken)
    if unknown:
        takes = ", ".join(sorted(taken)) or "no query parameters"
        raise ApiError(
            422,
            f"Unknown query parameter(s): {', '.join(unknown)}",
            [
                ErrorDetail(field=f"query.{name}", reason=f"not taken here; this takes {takes}")
                for name in unknown
            ],
        )
