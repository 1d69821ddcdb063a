"""Statistics: hourly, daily and weekly counts of each application's events per event type, by
status (total, processed, failed, pending), exact. The one description of how they are kept; each
piece lives where it runs:

- **Buckets.** An event counts in the bucket of its ``received_at``: the hour, the day, or the ISO
  week (Monday 00:00), all in UTC. SQL: ``stat_bucket(period, at)`` (migration 0004, made
  inlinable in 0007); Python: ``bucket_start`` below, for the API's ranges (``bucket_range``) and
  the repair. ``tests/integration/test_bucketing.py`` checks that the two agree (hypothesis, against
  PostgreSQL, in session time zones east and west of UTC).
- **Status.** An event's status is the database's ``status_of`` / ``event_status`` (migrations
  0006, 0008): failed if routing failed or a delivery failed for good, pending while a delivery is
  under way, else processed.
- **Counting** happens in PostgreSQL, in the transaction that changes an event's status:
  statement-level triggers on ``data_events`` (insert) and ``deliveries`` (insert, status change)
  call ``count_events(app_ids, ids)`` (migrations 0004 for the tables, 0006 per statement, 0008
  by the key ``(app_id, event_id)``). It compares each event's status with the one it is counted
  under (``event_counted``) and appends the difference to ``statistics_changes``, for the three
  periods: a replayed write, a retry or a crash never counts an event twice, and a status change
  moves it between counters. Events received before the live retention (``statistics_live``) are
  left to a refresh.
- **The live fold**: the stream worker's timer (``streams/app.py``, every
  ``statistics_interval_s``) runs ``streams.fold.StatisticsFold.tick``, which folds
  ``statistics_changes`` into ``event_statistics`` in one statement (``vdip.store.statistics.fold``)
  and, at its first tick and hourly, applies ``statistics_live_retention_days``
  (``set_live_retention``: it sets the retention and forgets older events' counted status).
- **Reads**: ``GET /api/statistics/{app_id}`` and ``GET /api/statistics/dashboard/{app_id}``
  (``gateway/routes/statistics.py``) read ``event_statistics`` in whole buckets; the dashboard
  (``gateway/dashboard/``) draws them.
- **Repair**: ``recompute`` below makes a range of an application's statistics equal to what its
  stored events say, and counts every event under its current status; ``check`` lists the
  differences. Called by ``POST /api/statistics/refresh/{app_id}`` and by
  ``vdip stats check|refresh`` (``vdip/cli.py``, ``cmd_stats``), which cover any range:
  ``event_statistics`` keeps every bucket. An application with a retention (``vdip.retention``)
  no longer has the events of the buckets that reach before it: those are left as counted.

Every statement on the four statistics tables (``event_statistics``, ``statistics_changes``,
``event_counted``, ``statistics_live``) is in ``vdip.store.statistics``.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg

from vdip.store import applications
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
    """Where ``event_statistics`` differs from the stored events, for whole buckets of the range
    (those after the application's retention, if it has one)."""
    low, high = bucket_range(start, end, period)
    kept_since = await applications.kept_since(conn, app_id)
    if kept_since is not None:
        low = max(low, bucket_start(kept_since, period) + STEP[period])
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
