"""What the dashboard needs beyond the other APIs: rule match counts, each webhook endpoint's
health, and the page itself (static files in ``gateway/dashboard/``, no build step)."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

from fastapi import APIRouter
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from gateway.deps import AppReader, PoolDep
from gateway.responses import scoped
from schemas import SuccessResponse
from vdip.store import deliveries, rules

router = APIRouter(tags=["dashboard"])
PAGE = StaticFiles(directory=Path(__file__).resolve().parent.parent / "dashboard", html=True)


class RuleActivity(BaseModel):
    rule_id: int
    rule_name: str
    destination_type: str
    is_active: bool
    matches: int
    delivered: int
    failed: int


@router.get(
    "/api/statistics/rules/{app_id}",
    summary="Each of an application's rules with how many events it matched, delivered and failed",
    responses=scoped("read", 401, 404, 422),
)
async def rule_activity(caller: AppReader, pool: PoolDep) -> SuccessResponse[list[RuleActivity]]:
    assert caller.application is not None
    rows = await rules.activity(pool, caller.application.app_id)
    return SuccessResponse(message=f"{len(rows)} rule(s)", data=[RuleActivity(**dict(r)) for r in rows])


class Attempt(BaseModel):
    delivery_id: UUID
    event_id: UUID
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    last_latency_ms: float | None
    updated_at: datetime


class EndpointHealth(BaseModel):
    rule_id: int
    rule_name: str
    url: str
    is_active: bool
    failing_since: datetime | None = Field(description="Failing without a success since then.")
    disabled_at: datetime | None = Field(description="Disabled (a 410, or failing too long) then.")
    disabled_reason: str | None
    delivered_24h: int
    failed_24h: int
    under_way: int
    success_rate_24h: float | None = Field(description="delivered / (delivered + failed), last 24 h.")
    last_ended_at: datetime | None
    last_attempts: list[Attempt] = Field(description="The 5 deliveries attempted last, newest first.")


@router.get(
    "/api/webhooks/app/{app_id}",
    summary="Each webhook endpoint of an application: its state, success rate and last attempts",
    responses=scoped("read", 401, 404, 422),
)
async def webhook_health(caller: AppReader, pool: PoolDep) -> SuccessResponse[list[EndpointHealth]]:
    assert caller.application is not None
    app_id = caller.application.app_id
    outcomes = await deliveries.webhook_outcomes(pool, app_id, datetime.now(UTC) - timedelta(hours=24))
    failing = await rules.failing_since(pool, app_id)
    found = []
    for rule in await rules.list_rules(pool, app_id, include_inactive=True):
        if rule.destination_type != "webhook":
            continue
        counts = outcomes.get(rule.rule_id)
        delivered, failed = (counts["delivered"], counts["failed"]) if counts else (0, 0)
        attempts = await deliveries.last_attempts(pool, rule.rule_id, 5)
        found.append(
            EndpointHealth(
                rule_id=rule.rule_id,
                rule_name=rule.rule_name,
                url=rule.destination_config["url"],
                is_active=rule.is_active,
                failing_since=failing.get(rule.rule_id),
                disabled_at=rule.destination_disabled_at,
                disabled_reason=rule.destination_disabled_reason,
                delivered_24h=delivered,
                failed_24h=failed,
                under_way=counts["under_way"] if counts else 0,
                success_rate_24h=delivered / (delivered + failed) if delivered + failed else None,
                last_ended_at=counts["last_ended_at"] if counts else None,
                last_attempts=[Attempt(**{k: row[k] for k in Attempt.model_fields}) for row in attempts],
            )
        )
    return SuccessResponse(message=f"{len(found)} webhook endpoint(s)", data=found)
