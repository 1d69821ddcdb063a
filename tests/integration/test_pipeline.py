"""End to end on the real services: HTTP and direct producers, dead letters, a sink killed mid-stream."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from schemas.events import content_hash
from tests.conftest import AppKey, Pipeline, consume_all, read_to_end, rule_applied, wait_until
from tests.integration.test_router import metric
from tests.integration.test_rules import create, queue_event_ids
from tests.integration.test_webhooks import ok, receiving
from vdip.statistics import check
from vdip.store.applications import create_application


def envelope(app_id: str, **overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "app_id": app_id,
        "event_type": "direct",
        "payload": {"via": "kafka"},
        "received_at": datetime.now(UTC).isoformat(),
        "metadata": {"source": "kafka", "correlation_id": "direct-1"},
    }
    data.update(overrides)
    return data


async def stored_ids(pool: asyncpg.Pool, app_id: str) -> list[uuid.UUID]:
    return [
        r["event_id"] for r in await pool.fetch("SELECT event_id FROM data_events WHERE app_id = $1", app_id)
    ]


async def test_http_and_direct_producers_both_land_in_postgres(
    pipeline: Pipeline, client: httpx.AsyncClient, producer: AIOKafkaProducer, pool: asyncpg.Pool, app: AppKey
) -> None:
    over_http = await client.post(
        f"/api/ingest/{app.app_id}",
        json={"event_type": "web", "payload": {"via": "http"}},
        headers=app.headers,
    )
    assert over_http.status_code == 202
    direct = envelope(app.app_id)
    await producer.send_and_wait(
        pipeline.settings.topic("events"), orjson.dumps(direct), key=app.app_id.encode()
    )

    async def both() -> bool:
        return len(await stored_ids(pool, app.app_id)) == 2

    await wait_until(both, 30, message="both events stored")
    event = (await client.get(f"/api/events/{direct['event_id']}", headers=app.headers)).json()["data"]
    assert event["payload"] == {"via": "kafka"}
    assert event["metadata"]["source"] == "kafka"
    assert event["status"] == "processed"
    http_id = over_http.json()["data"]["event_id"]
    assert (await client.get(f"/api/events/{http_id}", headers=app.headers)).json()["data"]["payload"] == {
        "via": "http"
    }


async def test_malformed_records_are_dead_lettered_and_the_worker_goes_on(
    pipeline: Pipeline, producer: AIOKafkaProducer, pool: asyncpg.Pool, app: AppKey
) -> None:
    topic = pipeline.settings.topic("events")
    marker = uuid.uuid4().hex
    bad_records = [
        f"not json {marker}".encode(),
        orjson.dumps({"marker": marker}),  # JSON, wrong shape
        orjson.dumps(envelope(app.app_id, payload=[marker])),  # payload is not an object
    ]
    for value in bad_records:
        await producer.send_and_wait(topic, value, key=app.app_id.encode())
    good = envelope(app.app_id)
    await producer.send_and_wait(topic, orjson.dumps(good), key=app.app_id.encode())

    async def good_stored() -> bool:
        return uuid.UUID(str(good["event_id"])) in await stored_ids(pool, app.app_id)

    await wait_until(good_stored, 30, message="the valid event after the bad ones is stored")
    assert len(await stored_ids(pool, app.app_id)) == 1

    def mine(records: list[object]) -> list[object]:
        return [r for r in records if marker.encode() in r.value]  # type: ignore[attr-defined]

    dead = mine(await consume_all(pipeline.settings, "events.dlq", until=lambda rs: len(mine(rs)) >= 3))
    assert sorted(r.value for r in dead) == sorted(bad_records)  # type: ignore[attr-defined]
    for record in dead:
        headers = dict(record.headers)  # type: ignore[attr-defined]
        assert headers["error.stage"] == b"validation"
        assert headers["source.topic"] == topic.encode()
        assert headers["error"]
    reasons = sorted(dict(r.headers)["error"].decode() for r in dead)  # type: ignore[attr-defined]
    assert any("Invalid JSON" in r for r in reasons)
    assert any("payload" in r for r in reasons)


async def test_a_batch_record_stores_its_valid_events_and_dead_letters_each_invalid_one(
    pipeline: Pipeline, client: httpx.AsyncClient, producer: AIOKafkaProducer, pool: asyncpg.Pool, app: AppKey
) -> None:
    # The gateway writes a batch request as one record: an array of envelopes.
    body = {"events": [{"event_type": "o", "payload": {"n": n}} for n in range(3)]}
    response = await client.post(f"/api/ingest/{app.app_id}/batch", json=body, headers=app.headers)
    ids = [r["event_id"] for r in response.json()["data"]["results"]]

    def holding(records: list[object]) -> list[object]:
        return [r for r in records if ids[0].encode() in r.value]  # type: ignore[attr-defined]

    (record,) = holding(await consume_all(pipeline.settings, "events", until=lambda rs: bool(holding(rs))))
    assert [e["event_id"] for e in orjson.loads(record.value)] == ids  # type: ignore[attr-defined]

    # A direct producer may write one too; an invalid event in it is dead-lettered alone.
    good = [envelope(app.app_id) for _ in range(2)]
    bad = envelope(app.app_id, payload="not an object")
    topic = pipeline.settings.topic("events")
    await producer.send_and_wait(topic, orjson.dumps([good[0], bad, good[1]]), key=app.app_id.encode())
    wanted = {uuid.UUID(i) for i in ids} | {uuid.UUID(str(e["event_id"])) for e in good}

    async def all_stored() -> bool:
        return wanted <= set(await stored_ids(pool, app.app_id))

    await wait_until(all_stored, 30, message="the valid events of both batch records are stored")
    assert len(await stored_ids(pool, app.app_id)) == 5

    def mine(records: list[object]) -> list[object]:
        return [r for r in records if str(bad["event_id"]).encode() in r.value]  # type: ignore[attr-defined]

    (dead,) = mine(await consume_all(pipeline.settings, "events.dlq", until=lambda rs: bool(mine(rs))))
    assert orjson.loads(dead.value) == bad  # type: ignore[attr-defined]
    headers = dict(dead.headers)  # type: ignore[attr-defined]
    assert headers["source.index"] == b"1" and headers["error.stage"] == b"validation"
    assert b"payload" in headers["error"]


async def test_sink_killed_mid_stream_stores_each_of_2000_events_once(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    producer: AIOKafkaProducer,
    pool: asyncpg.Pool,
    app: AppKey,
) -> None:
    """The sink is killed (SIGKILL: nothing flushed, nothing committed) in the middle of writing
    a batch: once it has stored some of the 2,000 events, the test locks ``data_events`` against
    writes and kills the sink when its next INSERT is waiting for that lock. Started again, it
    stores each event once, with its delivery, counted once, and dead-letters nothing."""
    total = 2000
    rule = {
        "app_id": app.app_id,
        "rule_name": "even",
        "condition": {"parity": "even"},
        "destination_type": "queue",
        "destination_config": {"topic": f"even-{uuid.uuid4().hex[:8]}"},
    }
    created = await client.post("/api/routing-rules", json=rule, headers=app.headers)
    assert created.status_code == 201, created.text
    await rule_applied(pipeline, created.json()["data"])
    sent = [envelope(app.app_id, payload={"n": n, "parity": ("even", "odd")[n % 2]}) for n in range(total)]
    topic = pipeline.settings.topic("events")
    futures = [await producer.send(topic, orjson.dumps(e), key=app.app_id.encode()) for e in sent]
    await asyncio.gather(*futures)

    async def stored() -> int:
        count: int = await pool.fetchval("SELECT count(*) FROM data_events WHERE app_id = $1", app.app_id)
        return count

    async def started() -> bool:
        return await stored() > 0

    await wait_until(started, 60, interval=0.01, message="the sink started storing")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE data_events IN SHARE MODE")  # readers pass, writers wait

        async def writing() -> bool:
            waiting: int = await pool.fetchval(
                """SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                   AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO data_events%'"""
            )
            return waiting > 0

        await wait_until(writing, 30, interval=0.01, message="the sink's next batch waiting to be written")
        pipeline.sink.kill()
    stored_at_kill = await stored()
    assert 0 < stored_at_kill < total, f"{stored_at_kill} stored when the sink was killed: not mid-stream"
    pipeline.sink.start()

    async def all_stored() -> bool:
        return await stored() >= total

    await wait_until(all_stored, 60, message=f"{total} events stored")
    rows = await pool.fetch("SELECT event_id, payload, status FROM data_events WHERE app_id = $1", app.app_id)
    assert len(rows) == total
    assert sorted(r["payload"]["n"] for r in rows) == list(range(total))
    assert {r["event_id"] for r in rows} == {uuid.UUID(str(e["event_id"])) for e in sent}
    deliveries = await pool.fetch(
        """SELECT d.event_id, d.status, d.attempts
           FROM deliveries d JOIN data_events e USING (app_id, event_id) WHERE e.app_id = $1""",
        app.app_id,
    )
    even = {uuid.UUID(str(e["event_id"])) for e in sent[::2]}
    assert sorted(d["event_id"] for d in deliveries) == sorted(even)  # one delivery per even event
    assert {(d["status"], d["attempts"]) for d in deliveries} == {("delivered", 1)}
    now = datetime.now(UTC)
    assert await check(pool, app.app_id, now - timedelta(hours=2), now + timedelta(hours=1)) == []
    daily = await pool.fetch(
        """SELECT total_events, processed_events FROM event_statistics
           WHERE app_id = $1 AND time_period = 'daily'""",
        app.app_id,
    )
    assert sum(d["total_events"] for d in daily) == sum(d["processed_events"] for d in daily) == total
    dead = [r for r in await read_to_end(pipeline.settings, "events.dlq") if app.app_id.encode() in r.value]
    assert dead == []


async def test_two_applications_may_use_the_same_event_id(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    producer: AIOKafkaProducer,
    pool: asyncpg.Pool,
    app: AppKey,
    admin: dict[str, str],
) -> None:
    """Event ids are per application: A and B each send X (over HTTP) and Y (into the events topic
    directly). Each of the four events is stored, read, routed by its own application's rules,
    delivered and counted as its own."""
    created = await create_application(pool, f"app-{uuid.uuid4().hex[:12]}", "the other one")
    assert created is not None
    apps = [app, AppKey(created[0].app_id, created[1])]
    queues, tables, rules = {}, {}, {}
    for each in apps:  # each its own topic and table: another application's are refused (409)
        queues[each.app_id] = f"ids-{uuid.uuid4().hex[:8]}"
        tables[each.app_id] = f"ids_{uuid.uuid4().hex[:8]}"
        queue = await create(client, each, condition={}, destination_config={"topic": queues[each.app_id]})
        table = await create(
            client,
            each,
            condition={},
            destination_type="database_table",
            destination_config={"table_name": tables[each.app_id]},
        )
        rules[each.app_id] = {queue["rule_id"], table["rule_id"]}
        await rule_applied(pipeline, table)
    x, y = uuid.uuid4(), uuid.uuid4()
    for each in apps:
        sent = await client.post(
            f"/api/ingest/{each.app_id}",
            json={"event_id": str(x), "event_type": "shared", "payload": {"owner": each.app_id}},
            headers=each.headers,
        )
        assert sent.status_code == 202, sent.text
        direct = envelope(each.app_id, event_id=str(y), event_type="shared", payload={"owner": each.app_id})
        await producer.send_and_wait(
            pipeline.settings.topic("events"), orjson.dumps(direct), key=each.app_id.encode()
        )

    async def all_processed() -> bool:
        statuses = [
            r["s"]
            for r in await pool.fetch(
                """SELECT event_status(status, app_id, event_id) AS s FROM data_events
                   WHERE event_id = ANY($1::uuid[])""",
                [x, y],
            )
        ]
        return statuses == ["processed"] * 4

    await wait_until(all_processed, 30, message="both applications' X and Y stored and delivered")

    for each in apps:
        for event_id in (x, y):
            read = await client.get(f"/api/events/{event_id}", headers=each.headers)
            assert read.status_code == 200, read.text
            event = read.json()["data"]
            assert (event["app_id"], event["payload"]) == (each.app_id, {"owner": each.app_id})
            assert {d["rule_id"] for d in event["deliveries"]} == rules[each.app_id]
            listed = await client.get(f"/api/events/{event_id}/deliveries", headers=each.headers)
            assert {d["rule_id"] for d in listed.json()["data"]} == rules[each.app_id]
            chosen = await client.get(f"/api/events/{event_id}?app_id={each.app_id}", headers=admin)
            assert chosen.json()["data"]["payload"] == {"owner": each.app_id}
        other = next(a for a in apps if a != each)
        assert (
            await client.get(f"/api/events/{x}?app_id={other.app_id}", headers=each.headers)
        ).status_code == 401
        theirs = (await client.get(f"/api/events/{x}?app_id={other.app_id}", headers=admin)).json()["data"]
        for delivery in theirs["deliveries"]:  # not one of this application's event's deliveries
            path = f"/api/events/{x}/deliveries/{delivery['delivery_id']}/redeliver"
            assert (await client.post(path, headers=each.headers)).status_code == 404
        ambiguous = await client.get(f"/api/events/{x}", headers=admin)
        assert ambiguous.status_code == 409, ambiguous.text
        body = ambiguous.json()
        assert body["success"] is False and all(a.app_id in body["message"] for a in apps)
        assert body["errors"][0]["field"] == "query.app_id"

        records = await consume_all(pipeline.settings, queues[each.app_id], until=lambda rs: len(rs) >= 2)
        delivered = [orjson.loads(r.value)["event"] for r in records]
        assert sorted((e["event_id"], e["payload"]["owner"]) for e in delivered) == sorted(
            (str(i), each.app_id) for i in (x, y)
        )
        now = datetime.now(UTC)
        assert await check(pool, each.app_id, now - timedelta(hours=2), now + timedelta(hours=1)) == []
        total, processed = await pool.fetchrow(
            """SELECT sum(total_events), sum(processed_events) FROM event_statistics
               WHERE app_id = $1 AND time_period = 'daily'""",
            each.app_id,
        )
        assert total == processed == 2  # X and Y, once each

    for each in apps:
        rows = await pool.fetch(f'SELECT event_id, app_id, payload FROM vdip_tables."{tables[each.app_id]}"')
        assert sorted((r["event_id"], r["app_id"], r["payload"]["owner"]) for r in rows) == sorted(
            (i, each.app_id, each.app_id) for i in (x, y)
        )


VERSION_CASES = {
    # how the two versions arrive, their (event_type, total) in order
    "one batch record": ("batch", [("order", 10), ("order", 100)]),
    "two records": ("records", [("order", 10), ("order", 100)]),
    "over HTTP": ("http", [("order", 10), ("order", 100)]),
    "two records, the matching one first": ("records", [("order", 100), ("order", 10)]),
    "another type second": ("records", [("order", 100), ("refund", 100)]),
}


@pytest.mark.parametrize("case", list(VERSION_CASES))
async def test_the_first_version_of_an_event_is_the_one_routed_stored_and_counted(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    producer: AIOKafkaProducer,
    pool: asyncpg.Pool,
    app: AppKey,
    case: str,
) -> None:
    """X(v1), then X(v2) with the same event_id, then a sentinel, with a queue, a table and a
    webhook rule on total > 50 (for type "order"): X is routed, delivered, stored and counted as
    v1 only; v2 goes to events.dlq only (stage conflict, both hashes), counted and logged."""
    how, versions = VERSION_CASES[case]
    settings = pipeline.settings
    queue, table = f"versions-{uuid.uuid4().hex[:8]}", f"versions_{uuid.uuid4().hex[:8]}"
    conflicts_before = await metric(settings.worker_metrics_port, CONFLICTS)
    async with receiving(ok) as receiver:
        rules = [
            await create(client, app, event_type_filter="order", destination_config={"topic": queue}),
            await create(
                client,
                app,
                event_type_filter="order",
                destination_type="database_table",
                destination_config={"table_name": table},
            ),
            await create(
                client,
                app,
                event_type_filter="order",
                destination_type="webhook",
                destination_config={"url": receiver.url("/hook")},
            ),
        ]
        for rule in rules:
            await rule_applied(pipeline, rule)
        x = uuid.uuid4()
        sent = [
            envelope(app.app_id, event_id=str(x), event_type=t, payload={"total": total})
            for t, total in versions
        ]
        topic, key = settings.topic("events"), app.app_id.encode()
        second_answer = 202
        if how == "batch":
            await producer.send_and_wait(topic, orjson.dumps(sent), key=key)
        elif how == "records":
            for value in sent:
                await producer.send_and_wait(topic, orjson.dumps(value), key=key)
        else:
            for value in sent:
                body = {"event_id": str(x), "event_type": value["event_type"], "payload": value["payload"]}
                answer = await client.post(f"/api/ingest/{app.app_id}", json=body, headers=app.headers)
                assert answer.status_code in (202, 409), answer.text
                second_answer = answer.status_code
        sentinel = envelope(app.app_id, event_type="order", payload={"total": 1000})
        await producer.send_and_wait(topic, orjson.dumps(sentinel), key=key)
        sentinel_id = str(sentinel["event_id"])

        # Once the sentinel went everywhere, everything of X sent before it did too.
        delivered = await queue_event_ids(pipeline, queue, {sentinel_id})
        assert sentinel_id in delivered

        async def sentinel_everywhere() -> bool:
            stored = await pool.fetchval(
                "SELECT 1 FROM data_events WHERE event_id = $1", uuid.UUID(sentinel_id)
            )
            exists = await pool.fetchval("SELECT to_regclass($1)", f'vdip_tables."{table}"')
            rows = exists and await pool.fetchval(
                f'SELECT count(*) FROM vdip_tables."{table}" WHERE event_id = $1', uuid.UUID(sentinel_id)
            )
            hooked = any(sentinel_id.encode() in r.body for r in receiver.requests)
            return bool(stored and rows and hooked)

        await wait_until(sentinel_everywhere, 60, message="the sentinel stored, in the table and posted")
        await asyncio.sleep(1)  # webhooks are posted concurrently: room for a late one of X
        first_type, first_total = versions[0]
        matches = first_type == "order" and first_total > 50
        queued = [
            orjson.loads(r.value)["event"]["payload"]
            for r in await read_to_end(settings, queue)
            if str(x).encode() in r.value
        ]
        assert queued == ([{"total": first_total}] if matches else [])
        table_rows = await pool.fetch(f'SELECT payload FROM vdip_tables."{table}" WHERE event_id = $1', x)
        assert [r["payload"] for r in table_rows] == ([{"total": first_total}] if matches else [])
        posted = [
            orjson.loads(r.body)["data"]["payload"] for r in receiver.requests if str(x).encode() in r.body
        ]
        assert posted == ([{"total": first_total}] if matches else [])

    stored = (await client.get(f"/api/events/{x}", headers=app.headers)).json()["data"]
    assert (stored["event_type"], stored["payload"]) == (first_type, {"total": first_total})
    assert sorted(d["rule_id"] for d in stored["deliveries"]) == (
        sorted(r["rule_id"] for r in rules) if matches else []
    )
    activity = (await client.get(f"/api/statistics/rules/{app.app_id}", headers=app.headers)).json()["data"]
    assert {a["matches"] for a in activity} == {2 if matches else 1}  # X (if v1 matched), the sentinel
    counted = await pool.fetchval(
        "SELECT sum(total_events) FROM event_statistics WHERE app_id = $1 AND time_period = 'daily'"
        " AND event_type = $2",
        app.app_id,
        first_type,
    )
    assert counted == (2 if first_type == "order" else 1)  # X as v1 (and the sentinel, an order)

    if second_answer == 409:  # the gateway knew the first version already: nothing was produced
        return
    second = sent[1]

    def conflict(records: list[Any]) -> list[Any]:
        return [r for r in records if str(x).encode() in r.value]

    (dead,) = conflict(await consume_all(settings, "events.dlq", until=lambda rs: bool(conflict(rs))))
    headers = dict(dead.headers)
    assert headers["error.stage"] == b"conflict"
    value = orjson.loads(dead.value)
    assert (value["event_type"], value["payload"]) == (second["event_type"], second["payload"])
    hashes = [content_hash(t, {"total": total}).hex().encode() for t, total in versions]
    assert all(h in headers["error"] for h in hashes), headers["error"]
    assert await metric(settings.worker_metrics_port, CONFLICTS) > conflicts_before
    log = pipeline.worker.log_path.read_text()
    assert any(str(x) in line and "first accepted with other content" in line for line in log.splitlines())


CONFLICTS = 'vdip_router_events_total{outcome="conflict"}'
