"""The table sink: database_table destinations, against the real stack."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer, ConsumerRecord

from schemas import EventEnvelope
from schemas.rules import Delivery
from sinks.batching import Record, insert_rows
from sinks.tables import DELIVERY, TableWriter, to_row, writer_of
from streams.routing import delivery_id
from tests.conftest import AppKey, Pipeline, consume_all, consumed, rule_applied, wait_until
from tests.integration.test_rules import create
from tests.integration.test_statistics import api_counts
from tests.integration.test_webhooks import event_status, settled
from vdip.settings import Settings
from vdip.store.deliveries import table_rows_statement
from vdip.store.tables import create_statements


def delivery(table: str, rule_id: int = 1, **payload: Any) -> Delivery:
    event = EventEnvelope(
        event_id=uuid.uuid4(),
        app_id="shop",
        event_type="order",
        payload=payload,
        received_at=datetime.now(UTC),
    )
    return Delivery(
        delivery_id=delivery_id(event.event_id, rule_id),
        rule_id=rule_id,
        destination_type="database_table",
        destination_config={"table": table},
        event=event,
    )


def as_record(value: bytes, offset: int) -> ConsumerRecord[bytes, bytes]:
    return consumed("deliveries.table", value, offset, b"shop")


async def test_writes_rows_once_creates_tables_and_dead_letters_alone(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings
) -> None:
    table = f"orders_{uuid.uuid4().hex[:8]}"
    writer = TableWriter(pool, producer, settings.topic("events.dlq"), settings.tables_schema)
    batch = [delivery(table, total=n) for n in range(10)]
    records = [as_record(d.model_dump_json().encode(), i) for i, d in enumerate(batch)]
    await writer.write(records)
    await TableWriter(pool, producer, settings.topic("events.dlq"), settings.tables_schema).write(
        records
    )  # replay
    rows = await pool.fetch(
        f"SELECT event_id, rule_id, payload FROM vdip_tables.\"{table}\" ORDER BY payload->>'total'"
    )
    assert len(rows) == 10
    assert {r["event_id"] for r in rows} == {d.event.event_id for d in batch}

    # A row the database refuses is dead-lettered alone; the rest of its batch is written.
    await pool.execute(
        f"ALTER TABLE vdip_tables.\"{table}\" ADD CONSTRAINT small CHECK ((payload->>'total')::int < 100)"
    )
    second = [delivery(table, total=5), delivery(table, total=500), delivery(table, total=7)]
    garbage = as_record(b'{"not": "a delivery"}', 99)
    await writer.write(
        [as_record(d.model_dump_json().encode(), 50 + i) for i, d in enumerate(second)] + [garbage]
    )
    stored = {r["event_id"] for r in await pool.fetch(f'SELECT event_id FROM vdip_tables."{table}"')}
    assert second[0].event.event_id in stored and second[2].event.event_id in stored
    assert second[1].event.event_id not in stored
    marker = str(second[1].event.event_id).encode()
    dlq = await consume_all(settings, "events.dlq", until=lambda rs: any(marker in r.value for r in rs))
    dead = [r for r in dlq if marker in r.value]
    assert len(dead) == 1 and dict(dead[0].headers)["error.stage"] == b"table-sink"
    assert b"CheckViolationError" in dict(dead[0].headers)["error"]
    outcomes = await pool.fetch(
        """SELECT delivery_id, status, attempts, last_error FROM deliveries
           WHERE delivery_id = ANY($1::uuid[])""",
        [d.delivery_id for d in second],
    )
    by_id = {o["delivery_id"]: (o["status"], o["attempts"], o["last_error"]) for o in outcomes}
    assert by_id.pop(second[1].delivery_id, (None, None))[:2] == ("failed", 1)
    assert sorted(by_id.values()) == [("delivered", 1, None)] * 2


async def test_a_delivery_twice_in_one_batch_is_written_once(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings
) -> None:
    table = f"twice_{uuid.uuid4().hex[:8]}"
    writer = TableWriter(pool, producer, settings.topic("events.dlq"), settings.tables_schema)
    first, other = delivery(table, total=1), delivery(table, total=2)
    replayed = first.model_copy(deep=True)
    replayed.event.payload = {"total": 3}
    await writer.write(
        [as_record(d.model_dump_json().encode(), i) for i, d in enumerate([first, other, replayed])]
    )
    rows = await pool.fetch(f'SELECT event_id, payload FROM vdip_tables."{table}"')
    assert {r["event_id"]: r["payload"] for r in rows} == {
        first.event.event_id: {"total": 1},
        other.event.event_id: {"total": 2},
    }
    outcomes = await pool.fetch(
        "SELECT status, attempts FROM deliveries WHERE delivery_id = ANY($1::uuid[])",
        [first.delivery_id, other.delivery_id],
    )
    assert sorted(tuple(o) for o in outcomes) == [("delivered", 1), ("delivered", 1)]


async def test_a_refused_row_is_dead_lettered_alone_and_its_delivery_failed(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings
) -> None:
    table = f"refused_{uuid.uuid4().hex[:8]}"
    writer = TableWriter(pool, producer, settings.topic("events.dlq"), settings.tables_schema)
    await writer.write([as_record(delivery(table, total=0).model_dump_json().encode(), 0)])  # creates it
    await pool.execute(
        f"ALTER TABLE vdip_tables.\"{table}\" ADD CONSTRAINT small CHECK ((payload->>'total')::int < 100)"
    )
    batch = [delivery(table, total=n) for n in (1, 2, 500, 3, 4)]
    poison = batch[2]
    # The event store recorded them as pending: the sink updates those rows.
    for d in batch:
        await pool.execute(
            """INSERT INTO deliveries (delivery_id, app_id, event_id, rule_id, destination_type, status)
               VALUES ($1, $2, $3, $4, 'database_table', 'pending')""",
            d.delivery_id,
            d.event.app_id,
            d.event.event_id,
            d.rule_id,
        )
    await writer.write([as_record(d.model_dump_json().encode(), 10 + i) for i, d in enumerate(batch)])

    stored = {r["event_id"] for r in await pool.fetch(f'SELECT event_id FROM vdip_tables."{table}"')}
    assert {d.event.event_id for d in batch} & stored == {d.event.event_id for d in batch if d != poison}
    outcomes = {
        r["delivery_id"]: r
        for r in await pool.fetch(
            """SELECT delivery_id, status, attempts, last_error FROM deliveries
               WHERE delivery_id = ANY($1::uuid[])""",
            [d.delivery_id for d in batch],
        )
    }
    failed = outcomes.pop(poison.delivery_id)
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert "CheckViolationError" in failed["last_error"]
    assert [(o["status"], o["attempts"], o["last_error"]) for o in outcomes.values()] == [
        ("delivered", 1, None)
    ] * 4

    markers = {d.delivery_id: str(d.event.event_id).encode() for d in batch}
    dlq = await consume_all(
        settings, "events.dlq", until=lambda rs: any(markers[poison.delivery_id] in r.value for r in rs)
    )
    dead = [r for r in dlq if any(marker in r.value for marker in markers.values())]
    assert len(dead) == 1 and markers[poison.delivery_id] in dead[0].value
    assert dict(dead[0].headers)["source.offset"] == b"12"


async def test_a_value_asyncpg_cannot_encode_is_refused_alone(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings
) -> None:
    table = f"overflow_{uuid.uuid4().hex[:8]}"
    writer = TableWriter(pool, producer, settings.topic("events.dlq"), settings.tables_schema)
    batch = [delivery(table, total=n) for n in range(4)]
    await writer.write([as_record(batch[0].model_dump_json().encode(), 0)])  # creates the table
    records = [as_record(d.model_dump_json().encode(), i) for i, d in enumerate(batch)]
    rows = [(r, to_row(DELIVERY.validate_json(r.value))) for r in records]
    rows[2] = (records[2], (batch[2].event.event_id, 2**70, *rows[2][1][2:]))  # not a bigint
    refused: list[tuple[Record, str]] = []

    async def refuse(record: Record, reason: str) -> None:
        refused.append((record, reason))

    await insert_rows(pool, writer_of(table_rows_statement(settings.tables_schema, table)), rows, refuse)
    assert [(r.offset, "out of int64 range" in reason) for r, reason in refused] == [(2, True)]
    stored = {r["event_id"] for r in await pool.fetch(f'SELECT event_id FROM vdip_tables."{table}"')}
    assert stored == {batch[n].event.event_id for n in (0, 1, 3)}


async def test_a_table_rule_receives_exactly_the_matching_events(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    table = f"big_orders_{uuid.uuid4().hex[:8]}"
    rule = {
        "app_id": app.app_id,
        "rule_name": "big orders to a table",
        "condition": {"total": {"$gte": 100}},
        "destination_type": "database_table",
        "destination_config": {"table_name": table},
    }
    created = await client.post("/api/routing-rules", json=rule, headers=app.headers)
    assert created.status_code == 201, created.text
    await asyncio.sleep(2)
    body = {"events": [{"event_type": "order", "payload": {"total": n}} for n in range(0, 200, 10)]}
    response = await client.post(f"/api/ingest/{app.app_id}/batch", json=body, headers=app.headers)
    ids = {
        uuid.UUID(r["event_id"]): body["events"][r["index"]]["payload"]["total"]
        for r in response.json()["data"]["results"]
    }
    expected = {event_id for event_id, total in ids.items() if total >= 100}

    async def written() -> bool:
        exists = await pool.fetchval("SELECT to_regclass($1)", f'vdip_tables."{table}"')
        if exists is None:
            return False
        count: int = await pool.fetchval(f'SELECT count(*) FROM vdip_tables."{table}"')
        return count >= len(expected)

    await wait_until(written, 30, message="rows written")
    await asyncio.sleep(0.5)
    rows = await pool.fetch(f'SELECT event_id, rule_id, app_id, payload FROM vdip_tables."{table}"')
    assert {r["event_id"] for r in rows} == expected
    assert all(r["rule_id"] == created.json()["data"]["rule_id"] and r["app_id"] == app.app_id for r in rows)


async def test_a_refused_row_fails_its_delivery_its_event_and_its_count(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    """End to end: a row the table refuses is dead-lettered, its delivery is failed with the
    database's error, its event is failed, and the statistics count it as failed."""
    table = f"refused_e2e_{uuid.uuid4().hex[:8]}"
    schema = pipeline.settings.tables_schema
    async with pool.acquire() as conn:
        for statement in create_statements(schema, table):
            await conn.execute(statement)
        await conn.execute(
            f"ALTER TABLE {schema}.\"{table}\" ADD CONSTRAINT small CHECK ((payload->>'total')::int < 100)"
        )
    created = await create(
        client,
        app,
        rule_name="to a table",
        condition={},
        destination_type="database_table",
        destination_config={"table": table},
    )
    await rule_applied(pipeline, created)
    start = datetime.now(UTC)
    totals = [1, 2, 500, 3, 4]
    body = {"events": [{"event_type": "order", "payload": {"total": n}} for n in totals]}
    response = await client.post(f"/api/ingest/{app.app_id}/batch", json=body, headers=app.headers)
    assert response.status_code == 202, response.text
    ids = [r["event_id"] for r in response.json()["data"]["results"]]
    poison = ids[2]
    outcomes = {event_id: (await settled(client, app, event_id))[0] for event_id in ids}

    failed = outcomes.pop(poison)
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert "CheckViolationError" in failed["last_error"], failed
    assert [(o["status"], o["last_error"]) for o in outcomes.values()] == [("delivered", None)] * 4
    statuses = {event_id: await event_status(client, app, event_id) for event_id in ids}
    assert statuses == {event_id: "failed" if event_id == poison else "processed" for event_id in ids}
    rows = await pool.fetch(f'SELECT event_id FROM {schema}."{table}"')
    assert {str(r["event_id"]) for r in rows} == set(ids) - {poison}

    async def counted() -> bool:
        found = await api_counts(
            client, app, "hourly", start - timedelta(hours=1), start + timedelta(hours=1)
        )
        return list(found.values()) == [(5, 4, 1, 0)]  # total, processed, failed, pending

    await wait_until(counted, 10, message="statistics: 5 events, 4 processed, 1 failed")
    marker = poison.encode()
    dead = [
        r
        for r in await consume_all(
            pipeline.settings, "events.dlq", until=lambda rs: any(marker in r.value for r in rs)
        )
        if marker in r.value
    ]
    assert len(dead) == 1 and dict(dead[0].headers)["error.stage"] == b"table-sink"


async def test_table_sink_killed_three_times_during_5000_events_writes_each_row_once(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool, producer: AIOKafkaProducer
) -> None:
    table = f"kill_{uuid.uuid4().hex[:8]}"
    rule = {
        "app_id": app.app_id,
        "rule_name": "even",
        "condition": {"parity": "even"},
        "destination_type": "database_table",
        "destination_config": {"table": table},
    }
    assert (await client.post("/api/routing-rules", json=rule, headers=app.headers)).status_code == 201
    await asyncio.sleep(2)
    events = [
        EventEnvelope(
            event_id=uuid.uuid4(),
            app_id=app.app_id,
            event_type="n",
            payload={"n": n, "parity": "even" if n % 2 == 0 else "odd"},
            received_at=datetime.now(UTC),
        )
        for n in range(5000)
    ]
    expected = {e.event_id for e in events if e.payload["n"] % 2 == 0}
    topic = pipeline.settings.topic("events")

    async def count() -> int:
        if await pool.fetchval("SELECT to_regclass($1)", f'vdip_tables."{table}"') is None:
            return 0
        found: int = await pool.fetchval(f'SELECT count(*) FROM vdip_tables."{table}"')
        return found

    for chunk in range(5):
        part = events[chunk * 1000 : (chunk + 1) * 1000]
        futures = [
            await producer.send(topic, e.model_dump_json().encode(), key=app.app_id.encode()) for e in part
        ]
        await asyncio.gather(*futures)
        if chunk in (1, 2, 3):
            floor = await count()
            await wait_until(
                lambda floor=floor: _grew(count, floor), 60, interval=0.05, message="the sink is writing"
            )
            assert pipeline.table_sink.proc is not None
            pipeline.table_sink.kill()  # SIGKILL: no flush, no commit
            pipeline.table_sink.start()

    async def all_written() -> bool:
        return await count() >= len(expected)

    await wait_until(all_written, 120, message=f"{len(expected)} rows")
    await asyncio.sleep(1)
    rows = await pool.fetch(f'SELECT event_id FROM vdip_tables."{table}"')
    assert len(rows) == len(expected)
    assert {r["event_id"] for r in rows} == expected


async def _grew(count: Any, floor: int) -> bool:
    return bool(await count() > floor)


async def test_a_payload_that_would_not_serialise_back_is_dead_lettered_alone(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings
) -> None:
    table = f"huge_{uuid.uuid4().hex[:8]}"
    writer = TableWriter(pool, producer, settings.topic("events.dlq"), settings.tables_schema)
    good, bad = delivery(table, total=1), delivery(table, total=12345)
    # Not something the router produces: an integer beyond 64 bits, NaN.
    huge = bad.model_dump_json().encode().replace(b'"total":12345', b'"total":123456789012345678901234567890')
    nan = delivery(table, total=7).model_dump_json().encode().replace(b'"total":7', b'"total":NaN')
    await writer.write([as_record(good.model_dump_json().encode(), 0), as_record(huge, 1), as_record(nan, 2)])
    stored = {r["event_id"] for r in await pool.fetch(f'SELECT event_id FROM vdip_tables."{table}"')}
    assert stored == {good.event.event_id}
    marker = str(bad.event.event_id).encode()
    dlq = await consume_all(settings, "events.dlq", until=lambda rs: any(marker in r.value for r in rs))
    dead = [r for r in dlq if marker in r.value]
    assert len(dead) == 1 and b"integers must be between" in dict(dead[0].headers)["error"]
