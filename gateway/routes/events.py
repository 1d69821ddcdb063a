"""Read API for stored events: plain SQL over ``data_events``."""

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel

from gateway.deps import ApplicationsDep, AppReader, PoolDep, PresentedKey, SettingsDep, authorize_app
from gateway.errors import ApiError
from gateway.responses import errors
from schemas import ErrorDetail, EventStatus, SuccessResponse

router = APIRouter(tags=["events"])

_COLUMNS = """event_id, app_id, event_type, payload, metadata, received_at, occurred_at,
              occurred_at_clamped, schema_version, status, routing, stored_at"""


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


class EventPage(BaseModel):
    events: list[StoredEvent]
    next_cursor: str | None


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
    responses=errors(401, 404, 422),
)
async def list_events(
    caller: AppReader,
    pool: PoolDep,
    event_type: str | None = None,
    status: EventStatus | None = None,
    start_date: Annotated[AwareDatetime | None, Query(description="received_at >= this")] = None,
    end_date: Annotated[AwareDatetime | None, Query(description="received_at < this")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> SuccessResponse[EventPage]:
    after_at, after_id = decode_cursor(cursor) if cursor else (None, None)
    rows = await pool.fetch(
        f"""SELECT {_COLUMNS} FROM data_events
            WHERE app_id = $1
              AND ($2::text IS NULL OR event_type = $2)
              AND ($3::text IS NULL OR status = $3)
              AND ($4::timestamptz IS NULL OR received_at >= $4)
              AND ($5::timestamptz IS NULL OR received_at < $5)
              AND ($6::timestamptz IS NULL OR (received_at, event_id) < ($6, $7::uuid))
            ORDER BY received_at DESC, event_id DESC
            LIMIT $8""",
        caller.application.app_id if caller.application else None,
        event_type,
        status.value if status else None,
        start_date,
        end_date,
        after_at,
        after_id,
        limit + 1,
    )
    events = [StoredEvent(**dict(row)) for row in rows[:limit]]
    next_cursor = encode_cursor(events[-1].received_at, events[-1].event_id) if len(rows) > limit else None
    return SuccessResponse(
        message=f"{len(events)} event(s)", data=EventPage(events=events, next_cursor=next_cursor)
    )


@router.get(
    "/api/events/{event_id}",
    summary="One stored event, with its status and routing summary",
    responses=errors(401, 404, 422),
)
async def get_event(
    event_id: uuid.UUID,
    pool: PoolDep,
    key: PresentedKey,
    applications: ApplicationsDep,
    settings: SettingsDep,
) -> SuccessResponse[StoredEvent]:
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM data_events WHERE event_id = $1", event_id)
    if row is None:
        raise ApiError(
            404,
            f"Event '{event_id}' was not found (it may not be stored yet)",
            [ErrorDetail(field="path.event_id", reason="unknown event")],
        )
    await authorize_app(applications, settings, row["app_id"], key, ingest=False)
    return SuccessResponse(message="Event found", data=StoredEvent(**dict(row)))
