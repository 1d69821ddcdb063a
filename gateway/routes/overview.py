"""The admin's overview: every application's recent activity, and the pipeline's health (its
throughput and latency over the last minutes, from the stored events; each consumer group's lag,
from Kafka)."""

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter
from pydantic import BaseModel, Field

from gateway.deps import PoolDep, RequireAdmin, SettingsDep
from gateway.responses import errors
from schemas import SuccessResponse
from vdip.store import applications, events, statistics
from vdip.topics import consumer_lags

router = APIRouter(tags=["overview"])

WINDOW = timedelta(minutes=5)  # what "recent" means here


class AppActivity(BaseModel):
    app_id: str
    name: str
    is_active: bool
    events_per_minute: float = Field(description="Received over the last 5 minutes, per minute.")
    accept_to_stored_p99_ms: float | None = Field(description="Of those events (None: none).")
    pending: int = Field(description="Events whose deliveries are under way.")
    failed: int = Field(description="Events whose routing or a delivery failed for good.")
    last_event_at: datetime | None


class ConsumerLag(BaseModel):
    process: str
    group: str
    topic: str
    lag: int | None = Field(description="Records not consumed yet (None: Kafka gave no figure).")


class PipelineHealth(BaseModel):
    window_s: int
    events_per_s: float = Field(description="Events received (and stored) per second over the window.")
    accept_to_stored_p99_ms: float | None
    consumer_lag: list[ConsumerLag]


class Overview(BaseModel):
    applications: list[AppActivity]
    pipeline: PipelineHealth


@router.get(
    "/api/overview",
    dependencies=[RequireAdmin],
    summary="Every application's recent activity and the pipeline's health (admin)",
    responses=errors(401, 503),
)
async def overview(pool: PoolDep, settings: SettingsDep) -> SuccessResponse[Overview]:
    since = datetime.now(UTC) - WINDOW
    minutes = WINDOW.total_seconds() / 60
    apps = {app.app_id: app for app in await applications.list_applications(pool)}
    counts = await statistics.totals_by_app(pool, "weekly")
    activity = [
        AppActivity(
            app_id=row["app_id"],
            name=apps[row["app_id"]].name,
            is_active=apps[row["app_id"]].is_active,
            events_per_minute=round(row["recent"] / minutes, 1),
            accept_to_stored_p99_ms=row["p99_ms"],
            pending=counts.get(row["app_id"], (0, 0))[0],
            failed=counts.get(row["app_id"], (0, 0))[1],
            last_event_at=row["last_at"],
        )
        for row in await events.recent_by_app(pool, since)
        if row["app_id"] in apps
    ]
    recent, p99_ms = await events.recent_latency(pool, since)
    lags = [
        ConsumerLag(process=p, group=g, topic=t, lag=lag) for p, g, t, lag in await consumer_lags(settings, 5)
    ]
    health = PipelineHealth(
        window_s=int(WINDOW.total_seconds()),
        events_per_s=round(recent / WINDOW.total_seconds(), 2),
        accept_to_stored_p99_ms=p99_ms,
        consumer_lag=lags,
    )
    return SuccessResponse(
        message=f"{len(activity)} application(s)", data=Overview(applications=activity, pipeline=health)
    )
