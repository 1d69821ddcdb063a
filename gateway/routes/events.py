"""Read API for stored events and their deliveries (SQL in ``vdip.store.events`` and
``vdip.store.deliveries``).

An event is identified by ``(app_id, event_id)``: each application's event ids are its own. An
application's key reads its own application's event; the admin names the application with
``?app_id=``, and may leave it out while only one application used the id (409 otherwise).

An event's status is computed by the database function ``event_status`` (migrations 0003, 0008),
the one definition everything uses: failed if routing failed or a delivery failed for good,
pending while a delivery is under way, processed otherwise.
"""

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import APIRouter, Depends, Query
from pydantic import AwareDatetime, BaseModel, Field

from gateway.deps import (
    APP_ID_PATTERN,
    ApplicationCache,
    ApplicationsDep,
    AppReader,
    EventTypeFilter,
    PoolDep,
    PresentedKey,
    SettingsDep,
    authorize_app,
    is_admin,
)
from gateway.errors import ApiError
from gateway.responses import scoped
from schemas import DeliveryStatus, ErrorDetail, EventStatus, SuccessResponse
from vdip.applications import Scope
from vdip.settings import Settings
from vdip.store import audit
from vdip.store import deliveries as delivery_store
from vdip.store import events as event_store

router = APIRouter(tags=["events"])


class StoredEvent(BaseModel):
    event_id: uuid.UUID
    app_id: str
    event_type: str
    payload: dict[str, Any]
    metadata: dict[str, Any]
    received_at: datetime
    occurred_at: datetime | None
    occurred_at_clamped: bool
    schema_version: int
    status: EventStatus
    routing: dict[str, Any] | None
    stored_at: datetime


class DeliveryOutcome(BaseModel):
    delivery_id: uuid.UUID
    event_id: uuid.UUID
    rule_id: int
    destination_type: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    last_latency_ms: float | None
    next_attempt_at: datetime | None = Field(description="When a pending or retrying webhook is tried next.")
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None


class EventWithDeliveries(StoredEvent):
    deliveries: list[DeliveryOutcome]


MAX_OFFSET = 100_000


class EventPage(BaseModel):
    events: list[StoredEvent]
    next_cursor: str | None
    count: int = Field(description="How many events this page holds.")
    limit: int
    offset: int


def encode_cursor(received_at: datetime, event_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([received_at.isoformat(), str(event_id)])).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        received_at, event_id = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(received_at), uuid.UUID(event_id)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise ApiError(
            422,
            "The cursor is invalid",
            [ErrorDetail(field="query.cursor", reason="not a cursor this API returned")],
        ) from exc


@router.get(
    "/api/events/app/{app_id}",
    summary="List an application's events, newest first",
    responses=scoped("read", 401, 404, 422),
)
async def list_events(
    caller: AppReader,
    pool: PoolDep,
    event_type: EventTypeFilter = None,
    status: EventStatus | None = None,
    start_date: Annotated[AwareDatetime | None, Query(description="received_at >= this")] = None,
    end_date: Annotated[AwareDatetime | None, Query(description="received_at < this")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    offset: Annotated[
        int,
        Query(
            ge=0,
            le=MAX_OFFSET,
            description="Skip this many events (pages of the original API). Prefer `cursor`: it"
            " neither skips nor repeats events while new ones arrive; not with `cursor`.",
        ),
    ] = 0,
) -> SuccessResponse[EventPage]:
    if offset and cursor:
        raise ApiError(
            422,
            "Page with cursor or with offset, not both",
            [ErrorDetail(field="query.offset", reason="not with cursor, which says where to go on")],
        )
    after_at, after_id = decode_cursor(cursor) if cursor else (None, None)
    rows = await event_store.list_page(
        pool,
        caller.application.app_id if caller.application else None,
        event_type=event_type,
        status=status.value if status else None,
        start=start_date,
        end=end_date,
        after_at=after_at,
        after_id=after_id,
        limit=limit + 1,
        offset=offset,
    )
    events = [StoredEvent(**dict(row)) for row in rows[:limit]]
    next_cursor = encode_cursor(events[-1].received_at, events[-1].event_id) if len(rows) > limit else None
    page = EventPage(events=events, next_cursor=next_cursor, count=len(events), limit=limit, offset=offset)
    return SuccessResponse(message=f"{len(events)} event(s)", data=page)


AppIdQuery = Annotated[
    str | None,
    Query(
        pattern=APP_ID_PATTERN,
        description=(
            "The event's application (event ids are per application). An application's key reads"
            " its own application's events; the admin needs it when several applications used the"
            " id (409 without it)."
        ),
    ),
]


async def _opens(applications: ApplicationCache, app_id: str, key: str | None) -> bool:
    """Whether ``key`` is one of ``app_id``'s keys."""
    application = await applications.get(app_id)
    if application is None or key is None:
        return False
    return application.key_for(key, datetime.now(UTC)) is not None


async def _event(
    event_id: uuid.UUID,
    pool: asyncpg.Pool,
    key: str | None,
    applications: ApplicationCache,
    settings: Settings,
    app_id: str | None,
    scope: Scope,
) -> asyncpg.Record:
    """The stored event of the path, if the caller may use its application's data with ``scope``:
    the event of ``app_id``, else of the key's application, else (the admin) of the one
    application that used the id."""
    if app_id is not None:
        await authorize_app(applications, settings, app_id, key, scope)
    rows = await event_store.find(pool, event_id, app_id)
    unknown = ApiError(
        404,
        f"Event '{event_id}'{f' of application {app_id!r}' if app_id else ''} was not found"
        " (it may not be stored yet)",
        [ErrorDetail(field="path.event_id", reason="unknown event")],
    )
    if not rows:
        raise unknown
    if len(rows) > 1 and not is_admin(settings, key):
        # An application's key reads its own application's event; a key of none of them: 401 below.
        rows = [row for row in rows if await _opens(applications, row["app_id"], key)] or rows[:1]
    if len(rows) > 1:
        used_by = ", ".join(row["app_id"] for row in rows)
        raise ApiError(
            409,
            f"Event id '{event_id}' is used by several applications ({used_by}): say which with ?app_id=",
            [ErrorDetail(field="query.app_id", reason=f"ambiguous: the event id is used by {used_by}")],
        )
    if app_id is None:
        try:
            await authorize_app(applications, settings, rows[0]["app_id"], key, scope)
        except ApiError as exc:  # another application's event is unknown to a key, as if absent
            if exc.status_code == 401 and key is not None:
                raise unknown from exc
            raise
    return rows[0]


async def _readable_event(
    event_id: uuid.UUID,
    pool: PoolDep,
    key: PresentedKey,
    applications: ApplicationsDep,
    settings: SettingsDep,
    app_id: AppIdQuery = None,
) -> asyncpg.Record:
    return await _event(event_id, pool, key, applications, settings, app_id, Scope.READ)


async def _manageable_event(
    event_id: uuid.UUID,
    pool: PoolDep,
    key: PresentedKey,
    applications: ApplicationsDep,
    settings: SettingsDep,
    app_id: AppIdQuery = None,
) -> asyncpg.Record:
    return await _event(event_id, pool, key, applications, settings, app_id, Scope.MANAGE)


ReadableEvent = Annotated[asyncpg.Record, Depends(_readable_event)]
ManageableEvent = Annotated[asyncpg.Record, Depends(_manageable_event)]


async def _deliveries(pool: asyncpg.Pool, event: asyncpg.Record) -> list[DeliveryOutcome]:
    rows = await delivery_store.of_event(pool, event["app_id"], event["event_id"])
    return [DeliveryOutcome(**dict(row)) for row in rows]


@router.get(
    "/api/events/{event_id}",
    summary="One stored event, with its status, routing summary and deliveries",
    responses=scoped("read", 401, 404, 409, 422),
)
async def get_event(event: ReadableEvent, pool: PoolDep) -> SuccessResponse[EventWithDeliveries]:
    found = EventWithDeliveries(**dict(event), deliveries=await _deliveries(pool, event))
    return SuccessResponse(message="Event found", data=found)


@router.get(
    "/api/events/{event_id}/deliveries",
    summary="Where an event was delivered: one outcome per matching rule",
    responses=scoped("read", 401, 404, 409, 422),
)
async def list_deliveries(event: ReadableEvent, pool: PoolDep) -> SuccessResponse[list[DeliveryOutcome]]:
    found = await _deliveries(pool, event)
    return SuccessResponse(message=f"{len(found)} deliverie(s)", data=found)


@router.post(
    "/api/events/{event_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    summary="Send a failed webhook delivery again",
    responses=scoped("manage", 401, 404, 409, 422),
)
async def redeliver(
    event: ManageableEvent,
    delivery_id: uuid.UUID,
    pool: PoolDep,
    key: PresentedKey,
    applications: ApplicationsDep,
    settings: SettingsDep,
) -> SuccessResponse[DeliveryOutcome]:
    """The delivery goes back to the dispatcher's queue, due now, with the same ``webhook-id``. A
    destination the dispatcher disabled stays disabled until its rule is replaced (PUT)."""
    event_id = event["event_id"]
    caller = await authorize_app(applications, settings, event["app_id"], key, Scope.MANAGE)  # cached
    async with pool.acquire() as conn, conn.transaction():
        row = await delivery_store.redeliver(conn, delivery_id, app_id=event["app_id"], event_id=event_id)
        if row is not None:
            changes = {"event_id": event_id, "delivery_id": delivery_id}
            target = f"delivery {delivery_id}"
            await audit.record(conn, event["app_id"], caller.actor, "delivery.redeliver", target, changes)
    if row is not None:
        return SuccessResponse(message="Delivery queued again", data=DeliveryOutcome(**dict(row)))
    current = next((d for d in await _deliveries(pool, event) if d.delivery_id == delivery_id), None)
    if current is None:
        raise ApiError(
            404,
            f"Event '{event_id}' has no delivery '{delivery_id}'",
            [ErrorDetail(field="path.delivery_id", reason="unknown delivery")],
        )
    reason = (
        "only a webhook delivery can be sent again (failed table rows are in events.dlq)"
        if current.destination_type != "webhook"
        else f"the delivery is {current.status}, not failed"
    )
    raise ApiError(
        409, "This delivery cannot be redelivered", [ErrorDetail(field="path.delivery_id", reason=reason)]
    )
