"""The event store's batch write against the real PostgreSQL (and Kafka for dead letters)."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from schemas import EventEnvelope, EventStatus, RoutedEvent, RoutingSummary
from schemas.events import DeliveryRef
from sinks.event_store import ROUTED, EventStore, to_row, write_rows
from streams.claims import decide, version_of
from tests.conftest import consume_all, consumed
from tests.unit.test_schemas import json_values, texts
from vdip.db import _init_connection
from vdip.settings import Settings


def routed(app_id: str, status: EventStatus = EventStatus.PROCESSED) -> RoutedEvent:
    now = datetime.now(UTC)
    event = EventEnvelope(
        event_id=uuid.uuid4(), app_id=app_id, event_type="t", payload={"n": 1}, received_at=now
    )
    return RoutedEvent(event=event, status=status, routing=RoutingSummary(routed_at=now))


def as_record(value: bytes, offset: int = 0) -> ConsumerRecord[bytes, bytes]:
    return consumed("events.routed", value, offset, b"k")


async def test_batch_is_written_once_even_when_replayed(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings
) -> None:
    app_id = f"store-{uuid.uuid4().hex[:8]}"
    batch = [routed(app_id) for _ in range(50)]
    records = [as_record(r.model_dump_json().encode(), i) for i, r in enumerate(batch)]
    store = EventStore(pool, producer, settings.topic("events.dlq"))
    await store.write(records)
    await store.write(records[:25] + records)  # replay after a crash, duplicates inside the batch too
    rows = await pool.fetch("SELECT event_id, status, payload FROM data_events WHERE app_id = $1", app_id)
    assert sorted(r["event_id"] for r in rows) == sorted(r.event.event_id for r in batch)
    assert all(r["payload"] == {"n": 1} and r["status"] == "processed" for r in rows)


async def test_an_event_twice_in_one_batch_is_stored_once_its_first_version(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings
) -> None:
    app_id = f"store-{uuid.uuid4().hex[:8]}"
    first = routed(app_id)
    first.routing.deliveries = [queue_delivery()]
    retry = first.model_copy(deep=True)
    retry.event.payload = {"n": 2}
    other = routed(app_id)
    store = EventStore(pool, producer, settings.topic("events.dlq"))
    await store.write(
        [as_record(e.model_dump_json().encode(), i) for i, e in enumerate([first, other, retry])]
    )
    rows = await pool.fetch("SELECT event_id, payload FROM data_events WHERE app_id = $1", app_id)
    assert {r["event_id"]: r["payload"] for r in rows} == {
        first.event.event_id: {"n": 1},
        other.event.event_id: {"n": 1},
    }
    (delivery,) = await pool.fetch(
        "SELECT status, attempts, delivered_at FROM deliveries WHERE event_id = $1", first.event.event_id
    )
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 1)
    assert delivery["delivered_at"] == first.routing.routed_at


async def test_two_applications_events_with_one_id_are_two_events_with_their_own_deliveries(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings
) -> None:
    """In one batch and across batches: ids are per application, so neither event is dropped and
    each keeps its deliveries."""
    a, b, c = (f"store-{uuid.uuid4().hex[:8]}" for _ in range(3))
    first = routed(a, EventStatus.PENDING)
    first.routing.deliveries = [DeliveryRef(delivery_id=uuid.uuid4(), rule_id=1, destination_type="webhook")]
    same_id = [first.model_copy(deep=True) for _ in (b, c)]
    for event, app_id, rule_id in zip(same_id, (b, c), (2, 3), strict=True):
        event.event.app_id = app_id
        event.event.payload = {"app": app_id}
        event.routing.deliveries = [
            DeliveryRef(delivery_id=uuid.uuid4(), rule_id=rule_id, destination_type="queue")
        ]
    store = EventStore(pool, producer, settings.topic("events.dlq"))
    await store.write([as_record(e.model_dump_json().encode(), i) for i, e in enumerate([first, same_id[0]])])
    await store.write([as_record(same_id[1].model_dump_json().encode(), 2)])
    rows = await pool.fetch(
        """SELECT app_id, event_status(status, app_id, event_id) AS status,
                  (SELECT array_agg(rule_id) FROM deliveries d
                   WHERE (d.app_id, d.event_id) = (e.app_id, e.event_id)) AS rules
           FROM data_events e WHERE event_id = $1""",
        first.event.event_id,
    )
    assert sorted((r["app_id"], r["status"], r["rules"]) for r in rows) == sorted(
        [(a, "pending", [1]), (b, "processed", [2]), (c, "processed", [3])]
    )


async def test_stored_at_is_the_moment_of_the_write(settings: Settings) -> None:
    """Not the start of the transaction: the latency from received_at to stored_at is not understated."""
    event = routed(f"store-{uuid.uuid4().hex[:8]}")
    conn = await asyncpg.connect(settings.database_url)
    try:
        async with conn.transaction():
            started = await conn.fetchval("SELECT now()")
            await asyncio.sleep(0.3)
            await write_rows(conn, [to_row(ROUTED.validate_json(event.model_dump_json()))])
        stored_at = await conn.fetchval(
            "SELECT stored_at FROM data_events WHERE event_id = $1", event.event.event_id
        )
    finally:
        await conn.close()
    assert stored_at - started >= timedelta(seconds=0.3)


async def test_replay_does_not_overwrite_a_status_that_moved_on(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings
) -> None:
    app_id = f"store-{uuid.uuid4().hex[:8]}"
    event = routed(app_id, EventStatus.PENDING)
    store = EventStore(pool, producer, settings.topic("events.dlq"))
    await store.write([as_record(event.model_dump_json().encode())])
    await pool.execute("UPDATE data_events SET status = 'failed' WHERE event_id = $1", event.event.event_id)
    await store.write([as_record(event.model_dump_json().encode())])
    assert (
        await pool.fetchval("SELECT status FROM data_events WHERE event_id = $1", event.event.event_id)
        == "failed"
    )


async def test_unparseable_record_is_dead_lettered_and_the_rest_stored(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings
) -> None:
    app_id = f"store-{uuid.uuid4().hex[:8]}"
    good = routed(app_id)
    marker = uuid.uuid4().hex.encode()
    store = EventStore(pool, producer, settings.topic("events.dlq"))
    await store.write(
        [as_record(b'{"garbage": "' + marker + b'"}', 7), as_record(good.model_dump_json().encode(), 8)]
    )
    assert await pool.fetchval("SELECT count(*) FROM data_events WHERE app_id = $1", app_id) == 1
    records = await consume_all(settings, "events.dlq", until=lambda rs: any(marker in r.value for r in rs))
    dead = [r for r in records if marker in r.value]
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert headers["error.stage"] == b"event-store"
    assert headers["source.offset"] == b"7"
    assert b"status: Field required" in headers["error"]


async def test_rows_the_database_refuses_are_dead_lettered_alone(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings
) -> None:
    app_id = f"store-{uuid.uuid4().hex[:8]}"
    batch = [routed(app_id) for _ in range(5)]
    poison = batch[2]
    # A constraint that refuses one row stands for any value PostgreSQL refuses for good.
    await pool.execute(
        f"ALTER TABLE data_events ADD CONSTRAINT refuse_one CHECK (event_id <> '{poison.event.event_id}')"
    )
    try:
        store = EventStore(pool, producer, settings.topic("events.dlq"))
        await store.write([as_record(r.model_dump_json().encode(), 100 + i) for i, r in enumerate(batch)])
    finally:
        await pool.execute("ALTER TABLE data_events DROP CONSTRAINT refuse_one")
    stored = {
        r["event_id"] for r in await pool.fetch("SELECT event_id FROM data_events WHERE app_id = $1", app_id)
    }
    assert stored == {r.event.event_id for r in batch} - {poison.event.event_id}
    marker = str(poison.event.event_id).encode()
    records = await consume_all(settings, "events.dlq", until=lambda rs: any(marker in r.value for r in rs))
    dead = [r for r in records if marker in r.value]
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert headers["source.offset"] == b"102"
    assert b"CheckViolationError" in headers["error"]


async def test_a_batch_record_is_stored_event_by_event_and_its_refused_events_dead_lettered_alone(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings
) -> None:
    app_id = f"store-{uuid.uuid4().hex[:8]}"
    good, poison, other = routed(app_id), routed(app_id), routed(app_id)
    marker = uuid.uuid4().hex
    garbage = orjson.dumps({"garbage": marker})
    values = [good.model_dump_json().encode(), garbage, poison.model_dump_json().encode()]
    await pool.execute(
        f"ALTER TABLE data_events ADD CONSTRAINT refuse_one CHECK (event_id <> '{poison.event.event_id}')"
    )
    try:
        store = EventStore(pool, producer, settings.topic("events.dlq"))
        await store.write(
            [as_record(b"[" + b",".join(values) + b"]", 9), as_record(other.model_dump_json().encode(), 10)]
        )
    finally:
        await pool.execute("ALTER TABLE data_events DROP CONSTRAINT refuse_one")
    stored = await pool.fetch("SELECT event_id FROM data_events WHERE app_id = $1", app_id)
    assert {r["event_id"] for r in stored} == {good.event.event_id, other.event.event_id}
    poisoned = str(poison.event.event_id).encode()

    def ours(records: list[ConsumerRecord[bytes, bytes]]) -> list[ConsumerRecord[bytes, bytes]]:
        return [r for r in records if marker.encode() in r.value or poisoned in r.value]

    dead = ours(await consume_all(settings, "events.dlq", until=lambda rs: len(ours(rs)) >= 2))
    by_index = {dict(r.headers)["source.index"]: r for r in dead}
    assert sorted(by_index) == [b"1", b"2"] and len(dead) == 2
    assert by_index[b"1"].value == garbage  # the invalid value alone, not its record
    assert RoutedEvent.model_validate_json(by_index[b"2"].value) == poison  # the refused event alone
    assert all(dict(r.headers)["source.offset"] == b"9" for r in dead)
    assert b"CheckViolationError" in dict(by_index[b"2"].headers)["error"]


@given(payloads=st.lists(st.dictionaries(texts, json_values, max_size=5), min_size=1, max_size=10))
@hypothesis_settings(max_examples=25, deadline=None)
def test_any_valid_payload_comes_back_from_postgres_unchanged(
    settings: Settings, payloads: list[dict[str, Any]]
) -> None:
    """jsonb keeps every string, key and structure, and every number's decimal value (it may write
    6.0e16 as 60000000000000000: the same JSON number)."""

    async def round_trip() -> list[Any]:
        conn = await asyncpg.connect(settings.database_url)
        await _init_connection(conn)
        try:
            app_id = f"rt-{uuid.uuid4().hex[:8]}"
            events = [routed(app_id) for _ in payloads]
            for event, payload in zip(events, payloads, strict=True):
                event.event.payload = payload
            async with conn.transaction():
                await write_rows(conn, [to_row(ROUTED.validate_json(e.model_dump_json())) for e in events])
            rows = await conn.fetch("SELECT event_id, payload FROM data_events WHERE app_id = $1", app_id)
            by_id = {r["event_id"]: r["payload"] for r in rows}
            return [by_id[e.event.event_id] for e in events]
        finally:
            await conn.close()

    assert decimal_numbers(asyncio.run(round_trip())) == decimal_numbers(payloads)


def decimal_numbers(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return Decimal(repr(value)).normalize()
    if isinstance(value, list):
        return [decimal_numbers(v) for v in value]
    return {k: decimal_numbers(v) for k, v in value.items()}


async def test_another_version_of_an_event_never_gets_its_deliveries_attached(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings
) -> None:
    """v2 of a claimed event (claimed as v1), and v2 of a stored event that has no claim hash:
    neither is stored nor has its delivery recorded; each is dead-lettered (stage conflict)."""
    app_id = f"store-{uuid.uuid4().hex[:8]}"
    store = EventStore(pool, producer, settings.topic("events.dlq"))
    claimed, stored = routed(app_id), routed(app_id)
    await store.write([as_record(stored.model_dump_json().encode())])  # stored: its version is kept
    async with pool.acquire() as conn:
        await decide(conn, [version_of(claimed.event)])  # claimed as v1 ({"n": 1}), not stored yet
    others = []
    for event in (claimed, stored):
        other = event.model_copy(deep=True)
        other.event.payload = {"n": 2}
        other.routing.deliveries = [queue_delivery()]
        others.append(other)
    await store.write([as_record(e.model_dump_json().encode(), 40 + i) for i, e in enumerate(others)])
    rows = await pool.fetch("SELECT event_id, payload FROM data_events WHERE app_id = $1", app_id)
    assert {r["event_id"]: r["payload"] for r in rows} == {stored.event.event_id: {"n": 1}}
    ids = [claimed.event.event_id, stored.event.event_id]
    assert await pool.fetch("SELECT 1 FROM deliveries WHERE event_id = ANY($1::uuid[])", ids) == []
    markers = [str(i).encode() for i in ids]

    def ours(records: list[ConsumerRecord[bytes, bytes]]) -> list[ConsumerRecord[bytes, bytes]]:
        return [r for r in records if any(m in r.value for m in markers)]

    dead = ours(await consume_all(settings, "events.dlq", until=lambda rs: len(ours(rs)) >= 2))
    assert sorted(RoutedEvent.model_validate_json(r.value).event.event_id for r in dead) == sorted(ids)
    for record in dead:
        headers = dict(record.headers)
        assert headers["error.stage"] == b"conflict"
        assert b"the first version is kept" in headers["error"]
    claimed_error = next(dict(r.headers)["error"] for r in dead if markers[0] in r.value)
    assert version_of(claimed.event).content_hash.hex().encode() in claimed_error
    assert version_of(others[0].event).content_hash.hex().encode() in claimed_error
    # The claimed version itself is stored, with its delivery, when it comes.
    claimed.routing.deliveries = [queue_delivery()]
    await store.write([as_record(claimed.model_dump_json().encode())])
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE event_id = $1", ids[0]) == 1


def queue_delivery() -> DeliveryRef:
    """A delivery of a rule no test creates (a real rule's id would count it in its statistics)."""
    return DeliveryRef(delivery_id=uuid.uuid4(), rule_id=2**62, destination_type="queue")
