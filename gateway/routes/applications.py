"""Management of applications (admin token; an application's key with the ``read`` scope reads
it, with ``manage`` rotates the key made with it). Its other keys: ``gateway.routes.keys``."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

import asyncpg
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.deps import (
    AppIdPath,
    ApplicationsDep,
    AppManager,
    AppReader,
    PoolDep,
    ProducerDep,
    RepublisherDep,
    RequireAdmin,
    SettingsDep,
)
from gateway.errors import ApiError
from gateway.responses import errors, scoped
from schemas import ErrorDetail, SuccessResponse
from schemas.events import AppId
from schemas.jobs import JobView
from vdip.applications import Application
from vdip.origins import MAX_ORIGINS, normalize_origin
from vdip.rulesets import write_rules
from vdip.settings import Settings
from vdip.store import applications as apps
from vdip.store import audit, events, jobs, keys, rules

router = APIRouter(tags=["applications"])


class NewApplication(BaseModel):
    app_id: AppId | None = Field(default=None, description="Chosen id; a new one is made when absent.")
    name: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
    description: Annotated[str | None, Field(max_length=2000, pattern=r"^[^\x00]*$")] = None


class QuotaView(BaseModel):
    events_per_s: int = Field(description="Events per second, on average, across all gateways.")
    burst: int = Field(description="Events it may send at once (a batch counts each event).")
    default: bool = Field(description="Whether these are the defaults (a share of the capacity).")


class NewQuota(BaseModel):
    model_config = {"extra": "forbid"}

    events_per_s: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Events per second; null: the default."
    )
    burst: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Events at once; null: a second's worth, and at least a whole batch.",
    )


class ApplicationView(BaseModel):
    app_id: str
    name: str
    description: str | None
    is_active: bool
    quota: QuotaView = Field(description="Its ingest quota; beyond it, ingest answers 429.")
    allowed_origins: list[str] = Field(description="Origins whose web pages may send its events (CORS).")
    retention_days: int | None = Field(
        description="How many days its events (and their deliveries) are kept; null: for good."
    )
    previous_key_valid_until: datetime | None = Field(
        description="Until when the key replaced by the last rotation of the key made with the"
        " application keeps working."
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, app: Application, settings: Settings) -> "ApplicationView":
        first = app.first_key
        quota = app.quota(settings.default_quota_events_per_s, settings.max_batch_events)
        return cls(
            app_id=app.app_id,
            name=app.name,
            description=app.description,
            is_active=app.is_active,
            quota=QuotaView(events_per_s=quota.events_per_s, burst=quota.burst, default=quota.default),
            allowed_origins=list(app.allowed_origins),
            retention_days=app.retention_days,
            previous_key_valid_until=first.previous_valid_until(datetime.now(UTC)) if first else None,
            created_at=app.created_at,
            updated_at=app.updated_at,
        )


class ApplicationWithKey(ApplicationView):
    api_key: str = Field(description="Shown only now: only its hash is stored.")


def _not_found(app_id: str) -> ApiError:
    return ApiError(
        404,
        f"Application '{app_id}' does not exist",
        [ErrorDetail(field="path.app_id", reason="unknown application")],
    )


@router.post(
    "/api/applications",
    status_code=201,
    dependencies=[RequireAdmin],
    summary="Create an application and its API key (shown once)",
    responses=errors(400, 401, 409, 422),
)
async def create(
    body: NewApplication, pool: PoolDep, cache: ApplicationsDep, settings: SettingsDep
) -> SuccessResponse[ApplicationWithKey]:
    app_id = body.app_id or f"app-{uuid.uuid4().hex[:12]}"
    created = await apps.create_application(pool, app_id, body.name, body.description)
    if created is not None:
        changes = {"name": body.name, "description": body.description}
        await audit.record(pool, app_id, audit.ADMIN, "application.create", f"application {app_id}", changes)
    else:
        raise ApiError(
            409, f"Application '{app_id}' exists already", [ErrorDetail(field="body.app_id", reason="taken")]
        )
    cache.forget(app_id)
    app, key = created
    return SuccessResponse(
        message="Application created; store its API key now, it is not shown again",
        data=ApplicationWithKey(**ApplicationView.of(app, settings).model_dump(), api_key=key),
    )


@router.get(
    "/api/applications", dependencies=[RequireAdmin], summary="All applications", responses=errors(401)
)
async def list_all(pool: PoolDep, settings: SettingsDep) -> SuccessResponse[list[ApplicationView]]:
    found = await apps.list_applications(pool)
    return SuccessResponse(
        message=f"{len(found)} application(s)", data=[ApplicationView.of(a, settings) for a in found]
    )


@router.get("/api/applications/{app_id}", summary="One application", responses=scoped("read", 401, 404, 422))
async def get_one(caller: AppReader, settings: SettingsDep) -> SuccessResponse[ApplicationView]:
    assert caller.application is not None
    return SuccessResponse(message="Application found", data=ApplicationView.of(caller.application, settings))


@router.delete(
    "/api/applications/{app_id}",
    status_code=202,
    dependencies=[RequireAdmin],
    summary="Delete an application and all its data (a job; its progress at GET /api/jobs/{job_id})",
    responses=errors(401, 404, 422, 503),
)
async def delete(
    app_id: AppIdPath,
    pool: PoolDep,
    cache: ApplicationsDep,
    settings: SettingsDep,
    producer: ProducerDep,
    republisher: RepublisherDep,
) -> SuccessResponse[JobView]:
    """At once: its rules deleted (routing stops), its keys deleted (nothing opens it), and it is
    disabled. Then the event store's process purges its events, deliveries, tables, topics,
    statistics and the rest, and its row (``sinks.purge``). Asked again, the same job."""
    job = await jobs.unfinished_of(pool, app_id, "purge")
    if job is None:
        if await apps.get_application(pool, app_id) is None:
            raise _not_found(app_id)
        total = await events.count_of_app(pool, app_id)

        async def stop_everything(conn: asyncpg.Connection) -> asyncpg.Record:
            await rules.delete_rules_of_app(conn, app_id)
            await keys.delete_keys_of_app(conn, app_id)
            await apps.set_active(conn, app_id, False)
            return await jobs.create(conn, uuid.uuid4(), app_id, "purge", {}, total)

        job = await write_rules(pool, producer.publish, republisher, settings, app_id, stop_everything)
    cache.forget(app_id)
    return SuccessResponse(message="Application being deleted", data=JobView.of(job))


async def _set_active(
    pool: PoolDep, cache: ApplicationsDep, settings: SettingsDep, app_id: str, active: bool
) -> SuccessResponse[ApplicationView]:
    async with pool.acquire() as conn, conn.transaction():
        app = await apps.set_active(conn, app_id, active)
        if app is None:
            raise _not_found(app_id)
        action = "application.enable" if active else "application.disable"
        await audit.record(conn, app_id, audit.ADMIN, action, f"application {app_id}", {"is_active": active})
    cache.forget(app_id)
    return SuccessResponse(
        message=f"Application {'enabled' if active else 'disabled'}", data=ApplicationView.of(app, settings)
    )


@router.post(
    "/api/applications/{app_id}/disable",
    dependencies=[RequireAdmin],
    summary="Disable an application: its ingest answers 403 (reads keep working)",
    responses=errors(401, 404, 422),
)
async def disable(
    app_id: AppIdPath, pool: PoolDep, cache: ApplicationsDep, settings: SettingsDep
) -> SuccessResponse[ApplicationView]:
    return await _set_active(pool, cache, settings, app_id, False)


@router.post(
    "/api/applications/{app_id}/enable",
    dependencies=[RequireAdmin],
    summary="Enable an application again",
    responses=errors(401, 404, 422),
)
async def enable(
    app_id: AppIdPath, pool: PoolDep, cache: ApplicationsDep, settings: SettingsDep
) -> SuccessResponse[ApplicationView]:
    return await _set_active(pool, cache, settings, app_id, True)


@router.post(
    "/api/applications/{app_id}/rotate-key",
    summary="Replace the key made with the application; the old one keeps working for"
    " key_rotation_grace_s (a day)",
    responses=scoped("manage", 401, 404, 422),
)
async def rotate(
    caller: AppManager, pool: PoolDep, cache: ApplicationsDep, settings: SettingsDep
) -> SuccessResponse[ApplicationWithKey]:
    assert caller.application is not None
    app_id = caller.application.app_id
    grace_s = settings.key_rotation_grace_s
    async with pool.acquire() as conn, conn.transaction():
        rotated = await apps.rotate_key(conn, app_id, timedelta(seconds=grace_s))
        if rotated is None:
            raise _not_found(app_id)
        changes = {"previous_secret_valid_s": grace_s}
        await audit.record(conn, app_id, caller.actor, "application.rotate_key", "key made with it", changes)
    cache.forget(app_id)
    app, key = rotated
    return SuccessResponse(
        message="Key rotated; store the new key now, it is not shown again",
        data=ApplicationWithKey(**ApplicationView.of(app, settings).model_dump(), api_key=key),
    )


@router.put(
    "/api/applications/{app_id}/quota",
    dependencies=[RequireAdmin],
    summary="Set an application's ingest quota (null fields: the defaults, shares of the capacity)",
    responses=errors(400, 401, 404, 422),
)
async def set_quota(
    app_id: AppIdPath, body: NewQuota, pool: PoolDep, cache: ApplicationsDep, settings: SettingsDep
) -> SuccessResponse[ApplicationView]:
    async with pool.acquire() as conn, conn.transaction():
        app = await apps.set_quota(conn, app_id, body.events_per_s, body.burst)
        if app is None:
            raise _not_found(app_id)
        await audit.record(
            conn, app_id, audit.ADMIN, "application.quota", f"application {app_id}", body.model_dump()
        )
    cache.forget(app_id)
    return SuccessResponse(message="Quota set", data=ApplicationView.of(app, settings))


class AllowedOrigins(BaseModel):
    allowed_origins: Annotated[list[str], Field(max_length=MAX_ORIGINS)] = Field(
        description="scheme://host[:port] of each page allowed to send events from a browser;"
        " [] allows none.",
        examples=[["https://shop.example.com", "http://localhost:3000"]],
    )

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, given: list[str]) -> list[str]:
        found = [normalize_origin(text) for text in given]
        wrong = [text for text, origin in zip(given, found, strict=True) if origin is None]
        if wrong:
            raise ValueError(f"not an origin (scheme://host[:port]): {', '.join(wrong)}")
        return sorted({origin for origin in found if origin is not None})


@router.put(
    "/api/applications/{app_id}/allowed-origins",
    summary="Set the origins whose web pages may send the application's events (CORS on ingest)",
    responses=scoped("manage", 400, 401, 404, 422),
)
async def set_allowed_origins(
    body: AllowedOrigins, caller: AppManager, pool: PoolDep, cache: ApplicationsDep, settings: SettingsDep
) -> SuccessResponse[ApplicationView]:
    assert caller.application is not None
    app_id = caller.application.app_id
    async with pool.acquire() as conn, conn.transaction():
        app = await apps.set_allowed_origins(conn, app_id, body.allowed_origins)
        if app is None:
            raise _not_found(app_id)
        changes = {"allowed_origins": body.allowed_origins}
        await audit.record(
            conn, app_id, caller.actor, "application.allowed_origins", f"application {app_id}", changes
        )
    cache.forget(app_id)
    return SuccessResponse(message="Allowed origins set", data=ApplicationView.of(app, settings))


class Retention(BaseModel):
    model_config = ConfigDict(extra="forbid")

    days: int | None = Field(
        ge=1,
        le=36500,
        description="Events received more than this many days ago are deleted, with their deliveries"
        " (statistics stay); null keeps them for good.",
    )


@router.put(
    "/api/applications/{app_id}/retention",
    summary="Set how many days the application's events are kept",
    responses=scoped("manage", 400, 401, 404, 422),
)
async def set_retention(
    body: Retention, caller: AppManager, pool: PoolDep, settings: SettingsDep
) -> SuccessResponse[ApplicationView]:
    """The event store's process deletes what is older in batches, every ``VDIP_RETENTION_INTERVAL_S``."""
    assert caller.application is not None
    app_id = caller.application.app_id
    async with pool.acquire() as conn, conn.transaction():
        app = await apps.set_retention(conn, app_id, body.days)
        if app is None:
            raise _not_found(app_id)
        changes = {"retention_days": body.days}
        await audit.record(
            conn, app_id, caller.actor, "application.retention", f"application {app_id}", changes
        )
    return SuccessResponse(message="Retention set", data=ApplicationView.of(app, settings))
