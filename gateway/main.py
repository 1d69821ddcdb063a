"""The gateway application: ``create_app()`` builds it, ``vdip gateway`` serves it."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from gateway.conflicts import ConflictCheck
from gateway.cors import IngestCorsMiddleware
from gateway.deps import ApplicationCache, refuse_unknown_query_parameters
from gateway.errors import install_error_handlers
from gateway.limits import Limits
from gateway.middleware import (
    BodySizeLimitMiddleware,
    CorrelationIdMiddleware,
    DashboardHeadersMiddleware,
    IngestMetricsMiddleware,
)
from gateway.producer import EventProducer
from gateway.quotas import Quotas
from gateway.routes import (
    applications,
    dashboard,
    deadletters,
    deletions,
    events,
    health,
    ingest,
    jobs,
    keys,
    overview,
    rules,
    statistics,
    tenancy,
)
from vdip.db import create_pool, migrate_url
from vdip.rulesets import Republisher
from vdip.settings import Settings, get_settings
from vdip.store import rules as rules_store


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        applied = await migrate_url(settings.database_url)  # idempotent; concurrent starts wait on a lock
        app.state.pool = await create_pool(settings.database_url, min_size=0)
        app.state.applications = ApplicationCache(app.state.pool, settings.app_cache_ttl_s)
        app.state.conflicts = ConflictCheck(
            app.state.pool, settings.conflict_check_timeout_s, settings.conflict_check_pause_s
        )
        app.state.quotas = Quotas(app.state.pool, settings.quota_check_timeout_s)
        app.state.producer = EventProducer(settings)
        app.state.republisher = Republisher(app.state.pool, app.state.producer.publish, settings)
        await app.state.producer.start()
        if "0012_destination_owners" in applied:  # rules it switched off: the worker must know
            for app_id in await rules_store.switched_off_by_ownership(app.state.pool):
                app.state.republisher.schedule(app_id)
        try:
            yield
        finally:
            await app.state.republisher.stop()
            await app.state.producer.stop()
            await app.state.pool.close()

    app = FastAPIOffline(  # /docs and /redoc with Swagger UI's and Redoc's files served from here
        title="Versatile Data Ingestion Platform",
        summary="Ingest JSON events over HTTP, route them, store them and count them.",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(refuse_unknown_query_parameters)],  # first, before authentication
    )
    app.state.settings = settings
    app.state.limits = Limits.from_settings(settings)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(CorrelationIdMiddleware)  # the 413 above carries the id too
    app.add_middleware(IngestMetricsMiddleware)  # counts the 413 too
    app.add_middleware(DashboardHeadersMiddleware)
    app.add_middleware(IngestCorsMiddleware)  # outermost: every answer to a browser gets its headers
    install_error_handlers(app)
    app.include_router(ingest.router)  # first: routes are matched in order, ingest is the hot path
    app.include_router(health.router)
    app.include_router(events.router)
    app.include_router(applications.router)
    app.include_router(keys.router)
    app.include_router(rules.router)
    app.include_router(statistics.router)
    app.include_router(tenancy.router)
    app.include_router(deadletters.router)
    app.include_router(jobs.router)
    app.include_router(deletions.router)
    app.include_router(overview.router)
    app.include_router(dashboard.router)
    app.mount("/dashboard", dashboard.PAGE, name="dashboard")
    app.mount("/static", StaticFiles(directory=Path(__file__).resolve().parent / "static"), name="static")
    _document_limits(app, settings)
    return app


def _document_limits(app: FastAPI, settings: Settings) -> None:
    """Put the limits that are settings into the OpenAPI document, so that it tells the truth."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            item = schema["components"]["schemas"]["IngestRequest"]["properties"]
            item["event_type"]["pattern"] = settings.event_type_pattern
            batch = schema["paths"]["/api/ingest/{app_id}/batch"]["post"]["requestBody"]["content"]
            batch["application/json"]["schema"]["properties"]["events"]["maxItems"] = (
                settings.max_batch_events
            )
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]
