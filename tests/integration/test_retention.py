"""Retention: an application's events older than its retention are deleted with their deliveries
by the event store's process (``vdip.retention``), in batches; newer ones, other applications'
and the statistics stay, and a statistics refresh leaves the buckets before the retention as
counted."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from tests.conftest import AppKey, Pipeline, wait_until
from vdip.retention import delete_received_before
from vdip.statistics import check
from vdip.store import statistics as statistics_store
from vdip.store.applications import create_application


async def stored_events(pool: asyncpg.Pool, app_id: str, received_at: list[datetime]) -> list[uuid.UUID]:
    """Events of ``app_id`` received at those times, each with a delivered queue delivery, written
    as the event store writes them (the triggers count them)."""
    ids = [uuid.uuid4() for _ in received_at]
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            """INSERT INTO deliveries (delivery_id, event_id, rule_id, app_id, destination_type, status)
               VALUES ($1, $2, 1, $3, 'queue', 'delivered')""",
            [(uuid.uuid4(), event_id, app_id) for event_id in ids],
        )
        await conn.executemany(
            """INSERT INTO data_events (event_id, app_id, event_type, payload, metadata, received_at,
                                        schema_version, status, routing)
               VALUES ($1, $2, 'order', '{}', '{}', $3, 1, 'processed', '{}')""",
            [(event_id, app_id, at) for event_id, at in zip(ids, received_at, strict=True)],
        )
    return ids


async def statistics_of(pool: asyncpg.Pool, app_id: str) -> list[Any]:
    async with pool.acquire() as conn:
        await statistics_store.fold(conn)
    return [
        tuple(r)
        for r in await pool.fetch(
            """SELECT time_period, time_bucket, total_events, processed_events, failed_events
               FROM event_statistics WHERE app_id = $1 ORDER BY 1, 2""",
            app_id,
        )
    ]


async def test_retention_deletes_only_what_is_older_than_its_limit(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    now = datetime.now(UTC)
    old = await stored_events(pool, app.app_id, [now - timedelta(days=3, minutes=n) for n in range(5)])
    recent = await stored_events(pool, app.app_id, [now - timedelta(hours=20), now - timedelta(minutes=5)])
    made = await create_application(pool, f"keeps-{uuid.uuid4().hex[:8]}", "keeps everything")
    assert made is not None
    other = made[0].app_id
    others = await stored_events(pool, other, [now - timedelta(days=3)])
    counted = await statistics_of(pool, app.app_id)
    assert sum(r[2] for r in counted if r[0] == "daily") == 7

    url = f"/api/applications/{app.app_id}/retention"
    for wrong in ({"days": 0}, {"days": 1.5}, {}, {"days": 1, "hours": 2}):
        answer = await client.put(url, json=wrong, headers=app.headers)
        assert answer.status_code == 422, (wrong, answer.text)
    answer = await client.put(url, json={"days": 1}, headers=app.headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["retention_days"] == 1

    async def expired_gone() -> bool:  # the event store's process enforces it (every second here)
        left = await pool.fetchval("SELECT count(*) FROM data_events WHERE event_id = ANY($1)", old)
        return bool(left == 0)

    await wait_until(expired_gone, 30, message="the events older than a day deleted")
    kept = await pool.fetch("SELECT event_id FROM data_events WHERE app_id = ANY($1)", [app.app_id, other])
    assert {r["event_id"] for r in kept} == set(recent) | set(others)
    deliveries = await pool.fetch(
        "SELECT event_id FROM deliveries WHERE app_id = ANY($1)", [app.app_id, other]
    )
    assert {r["event_id"] for r in deliveries} == set(recent) | set(others)
    assert await statistics_of(pool, app.app_id) == counted  # aggregates stay

    refreshed = await client.post(
        f"/api/statistics/refresh/{app.app_id}",
        params={"start_date": (now - timedelta(days=30)).isoformat()},
        headers=app.headers,
    )
    assert refreshed.status_code == 200, refreshed.text
    assert await statistics_of(pool, app.app_id) == counted  # buckets before the retention as counted
    assert await check(pool, app.app_id, now - timedelta(days=30), now + timedelta(hours=1)) == []

    answer = await client.put(url, json={"days": None}, headers=app.headers)
    assert answer.json()["data"]["retention_days"] is None
    trail = (await client.get(f"/api/audit/app/{app.app_id}", headers=app.headers)).json()["data"]
    assert [e["changes"] for e in trail["entries"] if e["action"] == "application.retention"] == [
        {"retention_days": None},
        {"retention_days": 1},
    ]


async def test_expired_events_are_deleted_a_batch_at_a_time(pool: asyncpg.Pool) -> None:
    """Oldest first, at most a batch per call (this application sets no retention: the event
    store's process leaves it alone)."""
    made = await create_application(pool, f"batches-{uuid.uuid4().hex[:8]}", "batches")
    assert made is not None
    app_id = made[0].app_id
    now = datetime.now(UTC)
    expired = await stored_events(pool, app_id, [now - timedelta(days=10, seconds=n) for n in range(7)])
    kept = await stored_events(pool, app_id, [now - timedelta(days=1)])
    before = now - timedelta(days=2)
    counts = [await delete_received_before(pool, app_id, before, 3) for _ in range(4)]
    assert counts == [3, 3, 1, 0]
    left = await pool.fetch("SELECT event_id FROM data_events WHERE app_id = $1", app_id)
    assert [r["event_id"] for r in left] == kept
    assert not await pool.fetchval("SELECT count(*) FROM deliveries WHERE event_id = ANY($1)", expired)
