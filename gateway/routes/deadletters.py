"""An application's dead letters (``events.dlq``): listed by stage and time, and sent back into
``events`` (``vdip.deadletters``), each with its outcome."""

from typing import Annotated, Literal, Self
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.deps import AppManager, AppReader, PoolDep, ProducerDep, SettingsDep
from gateway.errors import ApiError
from gateway.responses import scoped
from schemas import ErrorDetail, EventEnvelope, SuccessResponse
from vdip import deadletters
from vdip.deadletters import Filter, Record, Stage
from vdip.settings import Settings
from vdip.store import audit
from vdip.topics import DeadLetterReason

router = APIRouter(tags=["dead letters"])


class DeadLetter(BaseModel):
    partition: int
    offset: int
    timestamp_ms: int
    stage: str | None
    error: str | None
    source: str | None
    value: str = Field(description="The record's value (its first 2,000 characters).")


def _dead_letter(record: Record) -> DeadLetter:
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


@router.get(
    "/api/dead-letters/app/{app_id}",
    summary="An application's dead letters (records of events.dlq), newest first",
    responses=scoped("read", 401, 404, 422, 503),
)
async def dead_letters(
    caller: AppReader,
    settings: SettingsDep,
    stage: Annotated[Stage | None, Query(description="Only those rejected at this stage.")] = None,
    since: Annotated[AwareDatetime | None, Query(description="Only those written at or after.")] = None,
    until: Annotated[AwareDatetime | None, Query(description="Only those written before.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> SuccessResponse[list[DeadLetter]]:
    assert caller.application is not None
    which = Filter(caller.application.app_id, stage, since, until)
    found = [_dead_letter(r) for r in await deadletters.newest(settings, which, limit)]
    return SuccessResponse(message=f"{len(found)} dead letter(s)", data=found)


class RecordRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    partition: int = Field(ge=0, le=2**31 - 1)
    offset: int = Field(ge=0, le=2**63 - 1)


class Resend(BaseModel):
    """Either ``records`` (by position), or ``since`` with ``until`` and ``stage`` if wanted."""

    model_config = ConfigDict(extra="forbid")

    records: list[RecordRef] | None = Field(default=None, min_length=1, max_length=1000)
    since: AwareDatetime | None = Field(default=None, description="Every dead letter written at or after.")
    until: AwareDatetime | None = Field(default=None, description="With since: only those written before.")
    stage: Stage | None = Field(default=None, description="With since: only those of this stage.")

    @model_validator(mode="after")
    def one_selection(self) -> Self:
        if (self.records is None) == (self.since is None):
            raise ValueError("give either records or since")
        if self.records is not None and (self.until is not None or self.stage is not None):
            raise ValueError("until and stage go with since, not with records")
        return self


Outcome = Literal["resent", "invalid", "conflict", "not_found", "unavailable"]


class ResendOutcome(BaseModel):
    partition: int
    offset: int
    stage: str | None
    outcome: Outcome = Field(
        description="resent: Kafka acknowledged the event in events; invalid: the record holds no valid"
        " event of this application; conflict: a later version of an event id, never routed (the first"
        " version is kept); not_found: no dead letter of this application there (expired, or never"
        " written); unavailable: Kafka did not acknowledge it (send it again)."
    )
    event_id: UUID | None = None
    reason: str | None = None


class Resent(BaseModel):
    resent: int
    not_resent: int
    records: list[ResendOutcome]


@router.post(
    "/api/dead-letters/app/{app_id}/resend",
    summary="Send dead letters back into events: some by position, or all written since a time",
    responses=scoped("manage", 400, 401, 404, 422, 503),
)
async def resend(
    body: Resend, caller: AppManager, settings: SettingsDep, producer: ProducerDep, pool: PoolDep
) -> SuccessResponse[Resent]:
    """Each event goes back as it was accepted (its id and times), so everything downstream is
    idempotent: a delivery already made is not made again. At most 10,000 records at a time."""
    assert caller.application is not None
    app_id = caller.application.app_id
    records, outcomes = await _selected(body, app_id, settings)
    events: list[tuple[ResendOutcome, EventEnvelope]] = []
    for record in records:
        outcome, event = _judged(record, app_id)
        outcomes.append(outcome)
        if event is not None:
            events.append((outcome, event))
    if body.records is not None:  # in the order asked
        order = {(r.partition, r.offset): n for n, r in reversed(list(enumerate(body.records)))}
        outcomes.sort(key=lambda o: order[(o.partition, o.offset)])
    selection = {"since": body.since, "until": body.until, "stage": body.stage, "records": len(outcomes)}
    await audit.record(pool, app_id, caller.actor, "dead_letters.resend", None, selection)
    for start in range(0, len(events), settings.max_batch_events):
        chunk = events[start : start + settings.max_batch_events]
        for (outcome, _), error in zip(chunk, await producer.send_many([e for _, e in chunk]), strict=True):
            if error is not None:
                outcome.outcome, outcome.reason = "unavailable", str(error)
    resent = sum(o.outcome == "resent" for o in outcomes)
    data = Resent(resent=resent, not_resent=len(outcomes) - resent, records=outcomes)
    return SuccessResponse(
        message=f"{resent} of {len(outcomes)} dead letter(s) sent back into events", data=data
    )


async def _selected(
    body: Resend, app_id: str, settings: Settings
) -> tuple[list[Record], list[ResendOutcome]]:
    """The dead letters the body selects, and an outcome for each position that holds none."""
    if body.records is None:
        assert body.since is not None
        try:
            return await deadletters.selected(
                settings, Filter(app_id, body.stage, body.since, body.until)
            ), []
        except deadletters.TooMany as exc:
            reason = f"{exc}; narrow with until or stage"
            raise ApiError(
                422, "Too many dead letters at once", [ErrorDetail(field="since", reason=reason)]
            ) from None
    wanted = list(dict.fromkeys((r.partition, r.offset) for r in body.records))
    found = await deadletters.at_offsets(settings, app_id, wanted)
    missing = [
        ResendOutcome(partition=p, offset=o, stage=None, outcome="not_found")
        for p, o in wanted
        if (p, o) not in found
    ]
    return [found[w] for w in wanted if w in found], missing


def _judged(record: Record, app_id: str) -> tuple[ResendOutcome, EventEnvelope | None]:
    """What becomes of a dead letter: its event to send again, or why not."""
    stage = DeadLetterReason.of(record.headers).stage
    outcome = ResendOutcome(partition=record.partition, offset=record.offset, stage=stage, outcome="resent")
    if stage == "conflict":
        outcome.outcome, outcome.reason = "conflict", "a later version of an event id is never routed"
        return outcome, None
    try:
        event = deadletters.event_in(record.value, app_id)
    except ValidationError as exc:
        reasons = (f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
        outcome.outcome, outcome.reason = "invalid", "; ".join(reasons)[:1000]
        return outcome, None
    except ValueError as exc:
        outcome.outcome, outcome.reason = "invalid", str(exc)
        return outcome, None
    outcome.event_id = event.event_id
    return outcome, event
