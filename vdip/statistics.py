"""Statistics: buckets, and the repair of ``event_statistics`` (its SQL, and the fold's, is in
``vdip.store.statistics``).

Counting itself happens in PostgreSQL, in the transaction that changes an event's status
(migrations 0004, 0006 and 0008: ``count_events``, once per statement, by each event's key
``(app_id, event_id)``); the stream worker folds the counted changes into the table the API
reads every second (``vdip.store.statistics.fold``); this module recomputes statistics from the
stored events (``recompute``: the refresh endpoint and the reconciliation check), and buckets
times the way the database does (``bucket_start``). Live counting covers events received within
``statistics_live_retention_days`` (the worker sets it, and forgets older events' counted status,
every hour); ``event_statistics`` keeps every bucket, and a refresh recounts any range.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg

from vdip.store import statistics as store

Period = Literal["hourly", "daily", "weekly"]
PERIODS: tuple[Period, ...] = ("hourly", "daily", "weekly")
STEP = {"hourly": timedelta(hours=1), "daily": timedelta(days=1), "weekly": timedelta(weeks=1)}


def bucket_start(at: datetime, period: Period) -> datetime:
    """The start of ``at``'s bucket, in UTC: the hour, the day, or the ISO week (Monday 00:00)."""
    at = at.astimezone(UTC)
    if period == "hourly":
        return at.replace(minute=0, second=0, microsecond=0)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "daily" else day - timedelta(days=day.weekday())


def bucket_range(start: datetime, end: datetime, period: Period) -> tuple[datetime, datetime]:
    """Whole buckets covering [start, end): from ``start``'s bucket to the bucket after ``end``'s."""
    last = bucket_start(end - timedelta(microseconds=1), period)
    return bucket_start(start, period), last + STEP[period]


Counts = tuple[int, int, int]


@dataclass(frozen=True)
class Difference:
    app_id: str
    event_type: str
    time_period: str
    time_bucket: datetime
    stored: Counts | None  # (total, processed, failed)
    actual: Counts | None


def _by_key(rows: list[asyncpg.Record]) -> dict[tuple[str, datetime], Counts]:
    return {
        (r["event_type"], r["time_bucket"]): (r["total_events"], r["processed_events"], r["failed_events"])
        for r in rows
    }


async def compare(
    conn: asyncpg.Connection, app_id: str, period: Period, start: datetime, end: datetime
) -> list[Difference]:
    """Where ``event_statistics`` differs from the stored events, for whole buckets of the range."""
    low, high = bucket_range(start, end, period)
    actual = _by_key(await store.truth(conn, app_id, period, low, high))
    stored = _by_key(await store.stored(conn, app_id, period, low, high))
    return [
        Difference(app_id, key[0], period, key[1], stored.get(key), actual.get(key))
        for key in sorted(set(actual) | set(stored))
        if stored.get(key, (0, 0, 0)) != actual.get(key, (0, 0, 0))
    ]


async def recompute(pool: asyncpg.Pool, app_id: str, start: datetime, end: datetime) -> list[Difference]:
    """Make ``app_id``'s statistics over [start, end) (whole buckets) equal to what its stored events
    say, and every event counted under its current status. Returns what was wrong."""
    async with pool.acquire() as conn, conn.transaction():
        # Writers that are counting wait until this is done, then count against the repaired state.
        await store.lock_counting(conn)
        await store.fold(conn)
        low, high = bucket_range(start, end, "weekly")  # the widest buckets cover the others
        await store.count_current(conn, app_id, low, high)
        found: list[Difference] = []
        for period in PERIODS:
            wrong = await compare(conn, app_id, period, start, end)
            for diff in wrong:
                total, processed, failed = diff.actual or (0, 0, 0)
                await store.set_counts(
                    conn,
                    app_id,
                    diff.event_type,
                    diff.time_bucket,
                    period,
                    total=total,
                    processed=processed,
                    failed=failed,
                )
            found += wrong
        return found


async def check(pool: asyncpg.Pool, app_id: str, start: datetime, end: datetime) -> list[Difference]:
    """Every difference between ``app_id``'s statistics and its stored events, in whole buckets."""
    async with pool.acquire() as conn:
        await store.fold(conn)
        return [d for period in PERIODS for d in await compare(conn, app_id, period, start, end)]
