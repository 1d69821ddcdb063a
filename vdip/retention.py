"""Retention: an application that keeps its events for a limited time (``retention_days``) has
those received before then deleted, with their deliveries, a batch per transaction, by the event
store's process every ``VDIP_RETENTION_INTERVAL_S``. Statistics are aggregates and stay; a
statistics refresh leaves the buckets that reach before the retention as they were counted
(``vdip.statistics``)."""

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

import asyncpg

from vdip import metrics
from vdip.db import UNAVAILABLE, create_pool
from vdip.settings import Settings
from vdip.store import applications, deliveries, events, statistics

log = logging.getLogger(__name__)


async def delete_received_before(pool: asyncpg.Pool, app_id: str, before: datetime, batch: int) -> int:
    """One transaction: at most ``batch`` of the application's events received before ``before``
    (oldest first) deleted, with their deliveries and the status they are counted under; how many."""
    async with pool.acquire() as conn, conn.transaction():
        ids = await events.take_received_before(conn, app_id, before, batch)
        if ids:
            await deliveries.delete_of_events(conn, app_id, ids)
            await statistics.forget_counted(conn, app_id, ids)
    return len(ids)


async def enforce(pool: asyncpg.Pool, batch: int) -> dict[str, int]:
    """Delete every application's events older than its retention; how many, by application."""
    deleted: dict[str, int] = {}
    for app_id, days in (await applications.retentions(pool)).items():
        before = datetime.now(UTC) - timedelta(days=days)
        while count := await delete_received_before(pool, app_id, before, batch):
            deleted[app_id] = deleted.get(app_id, 0) + count
            metrics.EVENTS_EXPIRED.labels(app_id).inc(count)
            if count < batch:
                break
        if app_id in deleted:
            log.info("deleted %d events of %s received before %s", deleted[app_id], app_id, before)
    return deleted


async def keep_enforcing(settings: Settings, stop: asyncio.Event) -> None:
    """``enforce`` every ``retention_interval_s`` until ``stop``; waits while PostgreSQL is away."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        while not stop.is_set():
            try:
                await enforce(pool, settings.retention_batch)
            except UNAVAILABLE as exc:
                log.warning("retention not enforced this time: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.retention_interval_s)
    finally:
        await pool.close()
