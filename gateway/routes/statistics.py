"""Statistics API: ``event_statistics`` (kept exact by the database, see ``vdip/statistics.py``;
its SQL is in ``vdip/store/statistics.py``), a dashboard summary, and a refresh that repairs
drift from ``data_events``.

Ranges: ``start_date`` and ``end_date`` are ISO 8601 with a time zone; whole buckets are returned
(the bucket of ``start_date`` up to the one holding ``end_date``). Without them: the last 24 hours
(hourly), 30 days (daily) or 12 weeks (weekly), up to now.
"""

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, Field

from gateway.deps import AppManager, AppReader, EventTypeFilter, PoolDep
from gateway.errors import ApiError
from gateway.responses import scoped
from schemas import ErrorDetail, SuccessResponse
from vdip import statistics
from vdip.statistics import STEP, Period, bucket_range
from vdip.store import audit
from vdip.store import events as event_store
from vdip.store import statistics as stored_statistics

router = APIRouter(tags=["statistics"])

DEFAULT_SPAN = {"hourly": timedelta(hours=24), "daily": timedelta(days=30), "weekly": timedelta(weeks=12)}
MAX_BUCKETS = 5000

PeriodQuery = Annotated[Period, Query(description="hourly, daily or weekly (UTC; weeks start on Monday)")]
StartQuery = Annotated[AwareDatetime | None, Query(description="ISO 8601 with a time zone")]
EndQuery = Annotated[AwareDatetime | None, Query(description="ISO 8601 with a time zone; default: now")]


class Bucket(BaseModel):
    event_type: str
    time_period: Period
    time_bucket: datetime
    total_events: int
    processed_events: int
    failed_events: int
    pending_events: int
    updated_at: datetime


class Totals(BaseModel):
    total_events: int = 0
    processed_events: int = 0
    failed_events: int = 0
    pending_events: int = 0

    def add(self, row: Bucket) -> None:
        self.total_events += row.total_events
        self.processed_events += row.processed_events
        self.failed_events += row.failed_events
        self.pending_events += row.pending_events


class Point(Totals):
    time_bucket: datetime


class TypeTotals(Totals):
    event_type: str


class Dashboard(BaseModel):
    app_id: str
    time_period: Period
    start: datetime
    end: datetime
    totals: Totals
    by_event_type: dict[str, Totals]
    event_types: list[TypeTotals] = Field(description="by_event_type as a list, as the original API gave it.")
    series: list[Point]


class BucketList(SuccessResponse[list[Bucket]]):
    count: int = Field(description="How many buckets data holds.")
    filters: dict[str, Any] = Field(description="The application and the query answered, ranges resolved.")


class Refreshed(BaseModel):
    start: datetime
    end: datetime
    changed: list[dict[str, object]]


EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)


def _within(value: datetime | None, field: str) -> datetime | None:
    if value is not None and not EARLIEST <= value < LATEST:
        raise ApiError(
            422,
            "A date is out of range",
            [ErrorDetail(field=f"query.{field}", reason="between 1970 and 9000")],
        )
    return value


def _range(period: Period, start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    end = _within(end, "end_date") or datetime.now(UTC)
    start = _within(start, "start_date") or end - DEFAULT_SPAN[period]
    if start >= end:
        raise ApiError(
            422,
            "The range is empty",
            [ErrorDetail(field="query.start_date", reason="must be before end_date")],
        )
    low, high = bucket_range(start, end, period)
    if (high - low) / STEP[period] > MAX_BUCKETS:
        raise ApiError(
            422,
            "The range is too long for this period",
            [ErrorDetail(field="query.start_date", reason=f"at most {MAX_BUCKETS} {period} buckets")],
        )
    return low, high


async def _buckets(
    pool: PoolDep, app_id: str, period: Period, event_type: str | None, low: datetime, high: datetime
) -> list[Bucket]:
    rows = await stored_statistics.buckets(pool, app_id, period, event_type, low, high)
    return [Bucket(**dict(row)) for row in rows]


@router.get(
    "/api/statistics/{app_id}",
    summary="An application's event counts per event type and bucket",
    responses=scoped("read", 401, 404, 422),
)
async def get_statistics(
    caller: AppReader,
    pool: PoolDep,
    time_period: PeriodQuery = "daily",
    event_type: EventTypeFilter = None,
    start_date: StartQuery = None,
    end_date: EndQuery = None,
) -> BucketList:
    """``count`` and ``filters`` are beside ``data`` (a list), where the original API had them inside."""
    assert caller.application is not None
    app_id = caller.application.app_id
    low, high = _range(time_period, start_date, end_date)
    found = await _buckets(pool, app_id, time_period, event_type, low, high)
    filters = {
        "app_id": app_id,
        "event_type": event_type,
        "time_period": time_period,
        "start_date": low.isoformat(),
        "end_date": high.isoformat(),
    }
    return BucketList(message=f"{len(found)} bucket(s)", data=found, count=len(found), filters=filters)


@router.get(
    "/api/statistics/dashboard/{app_id}",
    summary="Totals per event type and overall, and a time series with every bucket of the range",
    responses=scoped("read", 401, 404, 422),
)
async def dashboard(
    caller: AppReader,
    pool: PoolDep,
    time_period: PeriodQuery = "hourly",
    start_date: StartQuery = None,
    end_date: EndQuery = None,
) -> SuccessResponse[Dashboard]:
    assert caller.application is not None
    low, high = _range(time_period, start_date, end_date)
    rows = await _buckets(pool, caller.application.app_id, time_period, None, low, high)
    totals, by_type = Totals(), dict[str, Totals]()
    points: dict[datetime, Point] = {}
    at = low
    while at < high:  # every bucket, the empty ones too: ready to plot
        points[at] = Point(time_bucket=at)
        at += STEP[time_period]
    for row in rows:
        totals.add(row)
        by_type.setdefault(row.event_type, Totals()).add(row)
        points[row.time_bucket].add(row)
    summary = Dashboard(
        app_id=caller.application.app_id,
        time_period=time_period,
        start=low,
        end=high,
        totals=totals,
        by_event_type=by_type,
        event_types=[TypeTotals(event_type=name, **t.model_dump()) for name, t in by_type.items()],
        series=list(points.values()),
    )
    return SuccessResponse(message="Dashboard", data=summary)


@router.post(
    "/api/statistics/refresh/{app_id}",
    summary="Recompute an application's statistics from its stored events, repairing any drift",
    responses=scoped("manage", 401, 404, 422),
)
async def refresh(
    caller: AppManager,
    pool: PoolDep,
    start_date: StartQuery = None,
    end_date: EndQuery = None,
    time_period: Annotated[
        Period | None,
        Query(description="Without start_date: refresh from the start of the current bucket of this period."),
    ] = None,
    event_type: EventTypeFilter = None,
) -> SuccessResponse[Refreshed]:
    """Default range: from the application's first stored event (or, with ``time_period``, the
    current bucket's start, as the original API refreshed) to now. Reports every bucket that was
    wrong, with what it held and what it holds now (total, processed, failed); with
    ``event_type``, that type's only (every type of the range is made right)."""
    assert caller.application is not None
    app_id = caller.application.app_id
    end = _within(end_date, "end_date") or datetime.now(UTC) + timedelta(minutes=2)  # clocks differ a little
    start_date = _within(start_date, "start_date")
    if start_date is None and time_period is not None:
        start_date = statistics.bucket_start(datetime.now(UTC), time_period)
    start = start_date or await event_store.first_received(pool, app_id) or end - timedelta(hours=1)
    start = max(start, EARLIEST)  # events a direct producer dated before 1970 are not bucketed
    if start >= end:
        raise ApiError(
            422,
            "The range is empty",
            [ErrorDetail(field="query.start_date", reason="must be before end_date")],
        )
    changed = await statistics.recompute(pool, app_id, start, end)
    span = {"start": start, "end": end, "repaired_buckets": len(changed)}
    await audit.record(pool, app_id, caller.actor, "statistics.refresh", None, span)
    report = [
        {
            "event_type": d.event_type,
            "time_period": d.time_period,
            "time_bucket": d.time_bucket,
            "was": d.stored,
            "now": d.actual or (0, 0, 0),
        }
        for d in changed
        if event_type is None or d.event_type == event_type
    ]
    return SuccessResponse(
        message=f"{len(report)} bucket(s) repaired", data=Refreshed(start=start, end=end, changed=report)
    )
