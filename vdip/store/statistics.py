"""The statistics tables: ``event_statistics`` (what the API reads), ``statistics_changes`` (the
counted deltas), ``event_counted`` (the status each event is counted under) and
``statistics_live`` (the live retention). Every statement that writes them, and their reads.

How statistics are counted, folded, read and repaired, and where each piece is:
``vdip/statistics.py``.
"""

import uuid
from datetime import datetime
from typing import TypeAlias

import asyncpg

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection

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


async def fold(db: Db) -> None:
    """Fold every counted change into ``event_statistics`` (one statement: all or nothing)."""
    await db.execute(FOLD)


async def set_live_retention(db: Db, days: float) -> None:
    """How far back live counting goes; forget how events older than that were counted."""
    await db.execute("UPDATE statistics_live SET retention = make_interval(secs => $1)", days * 86_400)
    await db.execute(
        "DELETE FROM event_counted WHERE received_at < now() - (SELECT retention FROM statistics_live)"
    )


async def lock_counting(conn: asyncpg.Connection) -> None:
    """Until the transaction ends, writers that are counting wait (``count_events`` takes ROW
    EXCLUSIVE on event_counted)."""
    await conn.execute("LOCK TABLE event_counted IN EXCLUSIVE MODE")


async def count_current(conn: asyncpg.Connection, app_id: str, low: datetime, high: datetime) -> None:
    """Every event of ``app_id`` received in [low, high) counted under its current status (reads
    data_events, and deliveries through event_status)."""
    await conn.execute(
        """INSERT INTO event_counted (event_id, app_id, event_type, received_at, status)
               SELECT event_id, app_id, event_type, received_at, event_status(status, app_id, event_id)
               FROM data_events WHERE app_id = $1 AND received_at >= $2 AND received_at < $3
               ON CONFLICT (app_id, event_id) DO UPDATE SET status = EXCLUDED.status""",
        app_id,
        low,
        high,
    )


async def set_counts(
    conn: asyncpg.Connection,
    app_id: str,
    event_type: str,
    time_bucket: datetime,
    period: str,
    *,
    total: int,
    processed: int,
    failed: int,
) -> None:
    """One bucket's counts, as absolute values."""
    await conn.execute(
        """INSERT INTO event_statistics AS s (app_id, event_type, time_bucket, time_period,
                           total_events, processed_events, failed_events, pending_events)
                       VALUES ($1, $2, $3, $4, $5::bigint, $6::bigint, $7::bigint,
                               $5::bigint - $6::bigint - $7::bigint)
                       ON CONFLICT (app_id, event_type, time_bucket, time_period) DO UPDATE SET
                           total_events = $5, processed_events = $6, failed_events = $7,
                           pending_events = $5::bigint - $6::bigint - $7::bigint, updated_at = now()""",
        app_id,
        event_type,
        time_bucket,
        period,
        total,
        processed,
        failed,
    )


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


async def truth(db: Db, app_id: str, period: str, low: datetime, high: datetime) -> list[asyncpg.Record]:
    """``TRUTH``: per event type and bucket, what the stored events say."""
    rows: list[asyncpg.Record] = await db.fetch(TRUTH, app_id, period, low, high)
    return rows


async def stored(db: Db, app_id: str, period: str, low: datetime, high: datetime) -> list[asyncpg.Record]:
    """``STORED``: per event type and bucket, what ``event_statistics`` holds."""
    rows: list[asyncpg.Record] = await db.fetch(STORED, app_id, period, low, high)
    return rows


async def buckets(
    db: Db, app_id: str, period: str, event_type: str | None, low: datetime, high: datetime
) -> list[asyncpg.Record]:
    """The API's view of ``app_id``'s buckets of [low, high), by bucket and event type."""
    rows: list[asyncpg.Record] = await db.fetch(
        """SELECT event_type, time_period, time_bucket, total_events, processed_events, failed_events,
                  pending_events, updated_at
           FROM event_statistics
           WHERE app_id = $1 AND time_period = $2 AND ($3::text IS NULL OR event_type = $3)
             AND time_bucket >= $4 AND time_bucket < $5
           ORDER BY time_bucket, event_type""",
        app_id,
        period,
        event_type,
        low,
        high,
    )
    return rows


async def applications(db: Db) -> list[str]:
    """Every application with stored events or statistics."""
    rows = await db.fetch("SELECT app_id FROM data_events UNION SELECT app_id FROM event_statistics")
    return sorted(r["app_id"] for r in rows)


async def forget_counted(db: Db, app_id: str, event_ids: list[uuid.UUID]) -> None:
    """Forget the status these deleted events of the application are counted under (their
    counts stay in ``event_statistics``)."""
    await db.execute("DELETE FROM event_counted WHERE app_id = $1 AND event_id = ANY($2)", app_id, event_ids)


async def forget_app(db: Db, app_id: str) -> None:
    """Delete every count of the application: its pending changes (first: a fold under way holds
    them, and this waits for it), its buckets, how its events were counted."""
    for table in ("statistics_changes", "event_statistics", "event_counted"):
        await db.execute(f"DELETE FROM {table} WHERE app_id = $1", app_id)


async def totals_by_app(db: Db, period: str) -> dict[str, tuple[int, int]]:
    """Each application's pending and failed events, from its ``period`` buckets (every bucket:
    any period counts every event once)."""
    rows = await db.fetch(
        """SELECT app_id, sum(pending_events)::bigint AS pending, sum(failed_events)::bigint AS failed
           FROM event_statistics WHERE time_period = $1 GROUP BY app_id""",
        period,
    )
    return {row["app_id"]: (row["pending"], row["failed"]) for row in rows}
