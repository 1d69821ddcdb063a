"""Statistics: bucketing, exact counts on the real pipeline, repair and reconciliation."""

import asyncio
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import given
from hypothesis import strategies as st

from schemas import EventEnvelope, EventStatus, RoutedEvent, RoutingSummary
from schemas.events import DeliveryRef
from schemas.rules import Delivery
from sinks.event_store import EventStore
from sinks.tables import TableWriter
from tests.conftest import ROOT, AppKey, Pipeline, consumed, read_to_end, rule_applied, wait_until
from tests.integration.test_pipeline import envelope
from tests.integration.test_rules import create, send
from tests.integration.test_webhooks import Received, receiving, settled, webhook_rule
from vdip.settings import Settings
from vdip.statistics import PERIODS, STEP, Period, bucket_start, check

# ------------------------------------------------------------------------------ bucketing


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc,arg-type]


@pytest.mark.parametrize(
    ("at", "period", "start"),
    [
        (utc(2026, 3, 4, 10, 59, 59, 999999), "hourly", utc(2026, 3, 4, 10)),
        (utc(2026, 3, 4, 11, 0, 0), "hourly", utc(2026, 3, 4, 11)),
        (utc(2026, 3, 4, 23, 59, 59), "daily", utc(2026, 3, 4)),
        (utc(2026, 3, 5, 0, 0, 0), "daily", utc(2026, 3, 5)),
        (utc(2026, 3, 8, 23, 59, 59), "weekly", utc(2026, 3, 2)),  # Sunday: the week of Monday the 2nd
        (utc(2026, 3, 9, 0, 0, 0), "weekly", utc(2026, 3, 9)),  # Monday 00:00 starts a week
        (utc(2026, 12, 31, 23, 30), "daily", utc(2026, 12, 31)),
        (utc(2027, 1, 1, 0, 30), "weekly", utc(2026, 12, 28)),  # a week across the year change
        (utc(2028, 2, 29, 12), "daily", utc(2028, 2, 29)),  # leap day
        (utc(2028, 3, 1, 0, 0), "weekly", utc(2028, 2, 28)),
        (datetime(2026, 3, 9, 1, 30, tzinfo=timezone(timedelta(hours=2))), "weekly", utc(2026, 3, 2)),
    ],
)
def test_bucket_boundaries(at: datetime, period: Period, start: datetime) -> None:
    assert bucket_start(at, period) == start


moments = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))


@given(moments, st.sampled_from(PERIODS))
def test_a_moment_lies_in_its_bucket(at: datetime, period: Period) -> None:
    start = bucket_start(at, period)
    assert start <= at < start + STEP[period]
    assert bucket_start(start, period) == start
    if period == "weekly":
        assert start.weekday() == 0 and start.time() == datetime.min.time()


async def test_the_database_buckets_as_python_does(pool: asyncpg.Pool) -> None:
    samples = [utc(2026, 3, 8, 23, 59, 59), utc(2027, 1, 1, 0, 30), utc(2028, 2, 29, 12), utc(2026, 3, 9)]
    samples += [utc(2026, 1, 1) + timedelta(minutes=37 * n) for n in range(0, 20000, 97)]
    for period in PERIODS:
        rows = await pool.fetch(
            "SELECT stat_bucket($1, t) AS b FROM unnest($2::timestamptz[]) AS t", period, samples
        )
        assert [r["b"] for r in rows] == [bucket_start(t, period) for t in samples]


# ------------------------------------------------------------------------------ the sinks' batches


async def test_the_sinks_batches_are_counted_exactly(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings
) -> None:
    """Counting per statement: a batch of the event store, then one of the table sink that moves
    events from pending to processed or failed, with records twice in a batch, count each event
    once under its status."""
    app_id, table = f"count-{uuid.uuid4().hex[:8]}", f"counted_{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)

    def routed(*kinds: str, total: int = 1, failed: bool = False) -> RoutedEvent:
        event = EventEnvelope(
            event_id=uuid.uuid4(), app_id=app_id, event_type="t", payload={"total": total}, received_at=now
        )
        refs = [
            DeliveryRef(delivery_id=uuid.uuid4(), rule_id=n, destination_type=k) for n, k in enumerate(kinds)
        ]
        status = EventStatus.FAILED if failed else EventStatus.PENDING if kinds else EventStatus.PROCESSED
        summary = RoutingSummary(deliveries=refs, routed_at=now, error="broken rule" if failed else None)
        return RoutedEvent(event=event, status=status, routing=summary)

    to_table = [routed("database_table", "database_table", total=4)]  # two table rules
    to_table += [routed("database_table", total=n) for n in (1, 2, 3, 500)]  # 500: refused
    events = [routed() for _ in range(4)] + to_table + [routed(failed=True)]
    events += [routed("webhook") for _ in range(2)]  # stay pending
    store = EventStore(pool, producer, settings.topic("events.dlq"))
    await store.write([consumed("events.routed", e.model_dump_json().encode()) for e in [*events, events[5]]])

    writer = TableWriter(pool, producer, settings.topic("events.dlq"), settings.tables_schema)
    deliveries = [
        Delivery(
            delivery_id=ref.delivery_id,
            rule_id=ref.rule_id,
            destination_type="database_table",
            destination_config={"table": table},
            event=e.event,
        )
        for e in to_table
        for ref in e.routing.deliveries
    ]
    unstored = deliveries[0].model_copy(update={"delivery_id": uuid.uuid4(), "event": routed().event})
    await writer.write([consumed("deliveries.table", unstored.model_dump_json().encode())])  # creates it
    await pool.execute(
        f"ALTER TABLE vdip_tables.\"{table}\" ADD CONSTRAINT small CHECK ((payload->>'total')::int < 100)"
    )
    await writer.write(
        [consumed("deliveries.table", d.model_dump_json().encode()) for d in [*deliveries, deliveries[1]]]
    )

    assert await check(pool, app_id, now - timedelta(hours=1), now + timedelta(hours=1)) == []
    counts = await pool.fetch(
        """SELECT time_period, total_events, processed_events, failed_events, pending_events
           FROM event_statistics WHERE app_id = $1""",
        app_id,
    )
    assert sorted(tuple(c) for c in counts) == [(period, 12, 8, 2, 2) for period in sorted(PERIODS)]


# ------------------------------------------------------------------------------ on the pipeline


async def truth(
    pool: asyncpg.Pool, app_id: str, period: Period
) -> dict[tuple[str, datetime], tuple[int, ...]]:
    rows = await pool.fetch(
        """SELECT event_type, stat_bucket($2, received_at) AS b, count(*) AS t,
                  count(*) FILTER (WHERE event_status(status, app_id, event_id) = 'processed') AS p,
                  count(*) FILTER (WHERE event_status(status, app_id, event_id) = 'failed') AS f
           FROM data_events WHERE app_id = $1 GROUP BY 1, 2""",
        app_id,
        period,
    )
    return {(r["event_type"], r["b"]): (r["t"], r["p"], r["f"], r["t"] - r["p"] - r["f"]) for r in rows}


async def api_counts(
    client: httpx.AsyncClient, app: AppKey, period: Period, start: datetime, end: datetime
) -> dict[tuple[str, datetime], tuple[int, ...]]:
    response = await client.get(
        f"/api/statistics/{app.app_id}",
        params={"time_period": period, "start_date": start.isoformat(), "end_date": end.isoformat()},
        headers=app.headers,
    )
    assert response.status_code == 200, response.text
    return {
        (b["event_type"], datetime.fromisoformat(b["time_bucket"])): (
            b["total_events"],
            b["processed_events"],
            b["failed_events"],
            b["pending_events"],
        )
        for b in response.json()["data"]
    }


async def counts_match(
    client: httpx.AsyncClient, pool: asyncpg.Pool, app: AppKey, start: datetime, end: datetime
) -> bool:
    for period in PERIODS:
        if await api_counts(client, app, period, start, end) != await truth(pool, app.app_id, period):
            return False
    return True


def stats_check(pipeline: Pipeline, app: AppKey, action: str = "check") -> subprocess.CompletedProcess[str]:
    env = {**pipeline.gateway.env()}
    return subprocess.run(
        [sys.executable, "-m", "vdip.cli", "stats", action, "--app", app.app_id],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


async def test_events_over_hours_days_and_weeks_are_counted_exactly(
    pipeline: Pipeline, client: httpx.AsyncClient, producer: AIOKafkaProducer, pool: asyncpg.Pool, app: AppKey
) -> None:
    now = datetime.now(UTC)
    start = now - timedelta(days=20)
    events = [
        envelope(
            app.app_id,
            event_type=("view", "click")[n % 2],
            received_at=(start + timedelta(hours=7 * n)).isoformat(),
        )
        for n in range(60)
    ]
    topic = pipeline.settings.topic("events")
    await asyncio.gather(
        *[await producer.send(topic, orjson.dumps(e), key=app.app_id.encode()) for e in events]
    )
    await send(client, app, 1, event_type="view")  # and one now, over HTTP

    async def stored() -> bool:
        count: int = await pool.fetchval("SELECT count(*) FROM data_events WHERE app_id = $1", app.app_id)
        return count == len(events) + 1

    await wait_until(stored, 60, message="all stored")
    await wait_until(lambda: counts_match(client, pool, app, start, now), 10, message="statistics exact")
    weekly = await api_counts(client, app, "weekly", start, now)
    assert weekly and all(bucket.weekday() == 0 for _, bucket in weekly)
    assert sum(c[0] for c in weekly.values()) == len(events) + 1
    daily = await api_counts(client, app, "daily", start, now)
    assert len(daily) > 20  # two types over 20-odd days

    dashboard = await client.get(
        f"/api/statistics/dashboard/{app.app_id}",
        params={"time_period": "daily", "start_date": start.isoformat(), "end_date": now.isoformat()},
        headers=app.headers,
    )
    data = dashboard.json()["data"]
    assert data["totals"]["total_events"] == len(events) + 1
    assert set(data["by_event_type"]) == {"view", "click"}
    assert len(data["series"]) == 21 or len(data["series"]) == 22  # every day of the range, empty ones too
    assert sum(p["total_events"] for p in data["series"]) == len(events) + 1


async def test_a_status_change_moves_counts_between_counters(
    pipeline: Pipeline, client: httpx.AsyncClient, pool: asyncpg.Pool, app: AppKey
) -> None:
    failing = True

    async def reply(_: Received) -> tuple[int, dict[str, str]]:
        return (500, {}) if failing else (200, {})

    now = datetime.now(UTC)
    async with receiving(reply) as receiver:
        await webhook_rule(pipeline, client, app, receiver.url("/stats"))
        event_id = await send(client, app, 10)
        (outcome,) = await settled(client, app, event_id)
        assert outcome["status"] == "failed"

        async def counted(expected: tuple[int, ...]) -> bool:
            found = await api_counts(
                client, app, "hourly", now - timedelta(hours=1), now + timedelta(hours=1)
            )
            return list(found.values()) == [expected]

        await wait_until(lambda: counted((1, 0, 1, 0)), 10, message="counted as failed")
        failing = False
        again = await client.post(
            f"/api/events/{event_id}/deliveries/{outcome['delivery_id']}/redeliver", headers=app.headers
        )
        assert again.status_code == 202
        await wait_until(lambda: counted((1, 1, 0, 0)), 20, message="moved from failed to processed")
    assert stats_check(pipeline, app).returncode == 0


async def test_refresh_repairs_drift_and_the_check_reports_it(
    pipeline: Pipeline, client: httpx.AsyncClient, pool: asyncpg.Pool, app: AppKey
) -> None:
    for n in range(3):
        await send(client, app, n, event_type="view")
    now = datetime.now(UTC)

    async def counted() -> bool:
        return await counts_match(client, pool, app, now - timedelta(hours=2), now + timedelta(hours=1))

    await wait_until(counted, 20, message="counted")
    assert stats_check(pipeline, app).returncode == 0
    await pool.execute(
        """UPDATE event_statistics SET total_events = 99,
                  pending_events = 99 - processed_events - failed_events
           WHERE app_id = $1 AND time_period = 'daily'""",
        app.app_id,
    )
    drifted = stats_check(pipeline, app)
    assert drifted.returncode == 1 and "stored (99," in drifted.stdout, drifted.stdout + drifted.stderr
    response = await client.post(f"/api/statistics/refresh/{app.app_id}", headers=app.headers)
    assert response.status_code == 200, response.text
    (changed,) = response.json()["data"]["changed"]
    assert changed["time_period"] == "daily" and changed["was"][0] == 99 and changed["now"][0] == 3
    assert await counted()
    assert stats_check(pipeline, app).returncode == 0

    await pool.execute(
        "DELETE FROM event_statistics WHERE app_id = $1 AND time_period = 'hourly'", app.app_id
    )
    repaired = stats_check(pipeline, app, "refresh")
    assert repaired.returncode == 0 and "1 bucket(s) repaired" in repaired.stdout, repaired.stdout
    assert f"[1/1] {app.app_id}: 1 bucket(s) off" in repaired.stderr
    assert await counted()


async def test_statistics_parameters_are_checked(client: httpx.AsyncClient, app: AppKey) -> None:
    base = f"/api/statistics/{app.app_id}"
    cases = [
        ({"time_period": "monthly"}, "query.time_period"),
        ({"start_date": "yesterday"}, "query.start_date"),
        ({"end_date": "2026-13-01T00:00:00Z"}, "query.end_date"),
        ({"start_date": "2026-01-02T00:00:00Z", "end_date": "2026-01-01T00:00:00Z"}, "query.start_date"),
        ({"time_period": "hourly", "start_date": "2000-01-01T00:00:00Z"}, "query.start_date"),
        ({"end_date": "9999-12-31T23:59:59Z"}, "query.end_date"),
        ({"event_type": "a\x00b"}, "query.event_type"),
    ]
    for params, field in cases:
        response = await client.get(base, params=params, headers=app.headers)
        assert response.status_code == 422, (params, response.text)
        assert field in [d["field"] for d in response.json()["errors"]], (params, response.text)
    assert (await client.get(base)).status_code == 401


@pytest.mark.disruptive  # not a shared service, but the worker's restarts would slow the tests after it
async def test_worker_killed_twice_and_batches_resubmitted_leave_no_difference(
    pipeline: Pipeline, client: httpx.AsyncClient, pool: asyncpg.Pool, app: AppKey
) -> None:
    """5,000 events in 50 batch requests, the worker SIGKILLed and restarted after the 15th and
    the 35th (it routes again what it had not committed): every event is checked in each place
    it goes before anything is sent again. Then the same batches again, which change nothing."""
    queue = f"t0-{uuid.uuid4().hex[:8]}"
    rule = await create(
        client, app, rule_name="t0", event_type_filter="t0", condition={}, destination_config={"topic": queue}
    )
    await rule_applied(pipeline, rule)
    batches: list[list[dict[str, Any]]] = [
        [
            {
                "event_type": f"t{n % 3}",
                "payload": {"b": b, "n": n},
                "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{app.app_id}/{b}/{n}")),
            }
            for n in range(100)
        ]
        for b in range(50)
    ]
    ids = {uuid.UUID(e["event_id"]) for batch in batches for e in batch}
    t0 = {uuid.UUID(e["event_id"]) for batch in batches for e in batch if e["event_type"] == "t0"}
    for number, events in enumerate(batches):
        response = await client.post(
            f"/api/ingest/{app.app_id}/batch", json={"events": events}, headers=app.headers
        )
        assert response.status_code == 202, response.text
        if number in (15, 35):
            pipeline.worker.kill()
            pipeline.worker.start()

    async def stored() -> set[uuid.UUID]:
        rows = await pool.fetch("SELECT event_id FROM data_events WHERE app_id = $1", app.app_id)
        return {r["event_id"] for r in rows}

    async def all_stored() -> bool:
        return len(await stored()) >= len(ids)

    await wait_until(all_stored, 90, message="5,000 events stored")
    assert await stored() == ids
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=2), now + timedelta(hours=1)
    await wait_until(lambda: counts_match(client, pool, app, start, end), 15, message="statistics exact")
    first = await everything_of(pipeline, client, pool, app, start, end)
    assert sum(c[0] for c in first.statistics.values()) == len(ids)
    assert sorted(d[1] for d in first.deliveries) == sorted(t0)  # one delivery per t0 event
    assert {(d[2], d[3]) for d in first.deliveries} == {("delivered", 1)}
    assert first.dead_letters == []
    in_queue = {
        uuid.UUID(orjson.loads(r.value)["event"]["event_id"])
        for r in await read_to_end(pipeline.settings, queue)
    }
    assert in_queue == t0  # at least once each (a replay may send one twice), nothing else

    for events in batches:  # the client retries every batch: same event ids
        response = await client.post(
            f"/api/ingest/{app.app_id}/batch", json={"events": events}, headers=app.headers
        )
        assert response.status_code == 202, response.text
    sentinel = await send(client, app, 1, event_type="sentinel")  # stored after every retry before it

    async def sentinel_stored() -> bool:
        return uuid.UUID(sentinel) in await stored()

    await wait_until(sentinel_stored, 60, message="the sentinel stored")
    await wait_until(lambda: counts_match(client, pool, app, start, end), 15, message="statistics exact")
    again = await everything_of(pipeline, client, pool, app, start, end)
    assert {r for r in again.rows if r[0] != uuid.UUID(sentinel)} == first.rows  # none written again
    assert again.deliveries == first.deliveries and again.dead_letters == []
    assert {k: v for k, v in again.statistics.items() if k[0] != "sentinel"} == first.statistics
    check = stats_check(pipeline, app)
    assert check.returncode == 0 and "match" in check.stdout, check.stdout + check.stderr


@dataclass
class Everything:
    rows: set[tuple[Any, ...]]  # (event_id, stored_at, status) of each stored event
    deliveries: set[tuple[Any, ...]]  # (delivery_id, event_id, status, attempts)
    statistics: dict[tuple[str, datetime], tuple[int, ...]]  # the API's hourly buckets
    dead_letters: list[bytes]  # the application's records in events.dlq


async def everything_of(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    app: AppKey,
    start: datetime,
    end: datetime,
) -> Everything:
    rows = await pool.fetch(
        """SELECT event_id, stored_at, event_status(status, app_id, event_id) FROM data_events
           WHERE app_id = $1""",
        app.app_id,
    )
    deliveries = await pool.fetch(
        """SELECT d.delivery_id, d.event_id, d.status, d.attempts FROM deliveries d
           JOIN data_events e USING (app_id, event_id) WHERE e.app_id = $1""",
        app.app_id,
    )
    dead = [
        r.value for r in await read_to_end(pipeline.settings, "events.dlq") if app.app_id.encode() in r.value
    ]
    return Everything(
        {tuple(r) for r in rows},
        {tuple(d) for d in deliveries},
        await api_counts(client, app, "hourly", start, end),
        dead,
    )


async def test_events_beyond_the_live_retention_are_counted_by_a_refresh(
    pipeline: Pipeline, client: httpx.AsyncClient, producer: AIOKafkaProducer, pool: asyncpg.Pool, app: AppKey
) -> None:
    now = datetime.now(UTC)
    retention = timedelta(days=pipeline.settings.statistics_live_retention_days)
    old = envelope(app.app_id, received_at=(now - retention - timedelta(days=5)).isoformat())
    topic = pipeline.settings.topic("events")
    await producer.send_and_wait(topic, orjson.dumps(old), key=app.app_id.encode())
    await send(client, app, 1, event_type="direct")

    async def live_counted() -> bool:
        found = await api_counts(client, app, "weekly", now - retention * 2, now + timedelta(hours=1))
        return sum(c[0] for c in found.values()) == 1

    await wait_until(live_counted, 20, message="the recent event counted")
    assert await pool.fetchval("SELECT count(*) FROM data_events WHERE app_id = $1", app.app_id) == 2
    assert stats_check(pipeline, app).returncode == 1  # the old one: stored, not counted live
    response = await client.post(f"/api/statistics/refresh/{app.app_id}", headers=app.headers)
    assert {c["time_period"] for c in response.json()["data"]["changed"]} == {"hourly", "daily", "weekly"}
    assert await counts_match(client, pool, app, now - retention * 2, now + timedelta(hours=1))
    assert stats_check(pipeline, app).returncode == 0
