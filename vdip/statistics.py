"""Statistics: buckets, the fold of counted changes into ``event_statistics``, and repair.

Counting itself happens in PostgreSQL, in the transaction that changes an event's status
(migrations 0004, 0006 and 0008: ``count_events``, once per statement, by each event's key
``(app_id, event_id)``); this module folds the counted changes into the table the API reads
(``fold``, run every second by the stream worker), recomputes statistics from the stored events
(``recompute``: the refresh endpoint and the reconciliation check), and buckets times the way the
database does (``bucket_start``). Live counting covers events received within
``statistics_live_retention_days`` (the worker sets it, and forgets older events' counted status,
every hour); ``event_statistics`` keeps every bucket, and a refresh recounts any range.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg

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


# Updates first, then inserts: an INSERT ... ON CONFLICT would check the proposed row (a delta,
# maybe negative) against the table's CHECKs. Two folds creating the same bucket at once: the
# second fails on the primary key, rolls back, and its changes are folded at the next tick.
FOLD = """
WITH taken AS (DELETE FROM statistics_changes RETURNING *),
summed AS (
    SELECT app_id, event_type, time_bucket, time_period,
           sum(d_total) AS t, sum(d_processed) AS p, sum(d_failed) AS f
    FROM taken GROUP BY app_id, event_type, time_bucket, time_period),
updated AS (
    UPDATE event_statistics s SET
        total_events = s.total_events + m.t,
        processed_events = s.processed_events + m.p,
        failed_events = s.failed_events + m.f,
        pending_events = s.pending_events + m.t - m.p - m.f,
        updated_at = now()
    FROM summed m
    WHERE (s.app_id, s.event_type, s.time_bucket, s.time_period)
        = (m.app_id, m.event_type, m.time_bucket, m.time_period)
    RETURNING s.app_id, s.event_type, s.time_bucket, s.time_period)
INSERT INTO event_statistics (app_id, event_type, time_bucket, time_period, total_events,
                              processed_events, failed_events, pending_events)
SELECT app_id, event_type, time_bucket, time_period, t, p, f, t - p - f FROM summed m
WHERE NOT EXISTS (
    SELECT 1 FROM updated u
    WHERE (u.app_id, u.event_type, u.time_bucket, u.time_period)
        = (m.app_id, m.event_type, m.time_bucket, m.time_period))
"""


async def set_live_retention(db: asyncpg.Pool | asyncpg.Connection, days: float) -> None:
    """How far back live counting goes; forget how events older than that were counted."""
    await db.execute("UPDATE statistics_live SET retention = make_interval(secs => $1)", days * 86_400)
    await db.execute(
        "DELETE FROM event_counted WHERE received_at < now() - (SELECT retention FROM statistics_live)"
    )


async def fold(db: asyncpg.Pool | asyncpg.Connection) -> None:
    """Fold every counted change into ``event_statistics`` (one statement: all or nothing)."""
    await db.execute(FOLD)


# What event_statistics should hold for one app, period and range: computed from data_events.
TRUTH = """
SELECT event_type, stat_bucket($2, received_at) AS time_bucket,
       count(*) AS total_events,
       count(*) FILTER (WHERE event_status(status, app_id, event_id) = 'processed') AS processed_events,
       count(*) FILTER (WHERE event_status(status, app_id, event_id) = 'failed') AS failed_events
FROM data_events
WHERE app_id = $1 AND received_at >= $3 AND received_at < $4
GROUP BY event_type, time_bucket
"""

STORED = """
SELECT event_type, time_bucket, total_events, processed_events, failed_events
FROM event_statistics
WHERE app_id = $1 AND time_period = $2 AND time_bucket >= $3 AND time_bucket < $4
"""

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
    actual = _by_key(await conn.fetch(TRUTH, app_id, period, low, high))
    stored = _by_key(await conn.fetch(STORED, app_id, period, low, high))
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
        await conn.execute("LOCK TABLE event_counted IN EXCLUSIVE MODE")
        await fold(conn)
        low, high = bucket_range(start, end, "weekly")  # the widest buckets cover the others
        await conn.execute(
            """INSERT INTO event_counted (event_id, app_id, event_type, received_at, status)
               SELECT event_id, app_id, event_type, received_at, event_status(status, app_id, event_id)
               FROM data_events WHERE app_id = $1 AND received_at >= $2 AND received_at < $3
               ON CONFLICT (app_id, event_id) DO UPDATE SET status = EXCLUDED.status""",
            app_id,
            low,
            high,
        )
        found: list[Difference] = []
        for period in PERIODS:
            wrong = await compare(conn, app_id, period, start, end)
            for diff in wrong:
                total, processed, failed = diff.actual or (0, 0, 0)
                await conn.execute(
                    """INSERT INTO event_statistics AS s (app_id, event_type, time_bucket, time_period,
                           total_events, processed_events, failed_events, pending_events)
                       VALUES ($1, $2, $3, $4, $5::bigint, $6::bigint, $7::bigint,
                               $5::bigint - $6::bigint - $7::bigint)
                       ON CONFLICT (app_id, event_type, time_bucket, time_period) DO UPDATE SET
                           total_events = $5, processed_events = $6, failed_events = $7,
                           pending_events = $5::bigint - $6::bigint - $7::bigint, updated_at = now()""",
                    app_id,
                    diff.event_type,
                    diff.time_bucket,
                    period,
                    total,
                    processed,
                    failed,
                )
            found += wrong
        return found


async def applications(pool: asyncpg.Pool) -> list[str]:
    """Every application with stored events or statistics."""
    rows = await pool.fetch("SELECT app_id FROM data_events UNION SELECT app_id FROM event_statistics")
    return sorted(r["app_id"] for r in rows)


async def check(pool: asyncpg.Pool, app_id: str, start: datetime, end: datetime) -> list[Difference]:
    """Every difference between ``app_id``'s statistics and its stored events, in whole buckets."""
    async with pool.acquire() as conn:
        await fold(conn)
        return [d for period in PERIODS for d in await compare(conn, app_id, period, start, end)]
