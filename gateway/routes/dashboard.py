"""What the dashboard needs beyond the other APIs: rule match counts, recent dead letters, and the
page itself (static files in ``gateway/dashboard/``, no build step)."""

from pathlib import Path
from typing import Annotated

from aiokafka import ConsumerRecord
from fastapi import APIRouter, Query
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from gateway.deps import AppReader, PoolDep, SettingsDep
from gateway.responses import scoped
from schemas import SuccessResponse
from vdip.store import rules
from vdip.topics import DeadLetterReason, read_to_end

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


class DeadLetter(BaseModel):
    partition: int
    offset: int
    timestamp_ms: int
    stage: str | None
    error: str | None
    source: str | None
    value: str


@router.get(
    "/api/dead-letters/app/{app_id}",
    summary="An application's most recent records in events.dlq, newest first",
    responses=scoped("read", 401, 404, 422),
)
async def dead_letters(
    caller: AppReader, settings: SettingsDep, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> SuccessResponse[list[DeadLetter]]:
    """Reads the last ``10 * limit`` records of each partition (records keyed by this app_id)."""
    assert caller.application is not None
    key = caller.application.app_id.encode()
    records = await read_to_end(settings, settings.topic("events.dlq"), last=10 * limit)
    found = [_dead_letter(r) for r in records if r.key == key]
    found.sort(key=lambda d: d.timestamp_ms, reverse=True)
    return SuccessResponse(message=f"{len(found[:limit])} dead letter(s)", data=found[:limit])


def _dead_letter(record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
    reason = DeadLetterReason.of(record.headers)
    return DeadLetter(
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        stage=reason.stage,
        error=reason.error,
        source=reason.source,
        value=(record.value or b"").decode(errors="replace")[:2000],
    )
