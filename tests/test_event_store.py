"""The event store's batch write against the real PostgreSQL (and Kafka for dead letters)."""

import uuid
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaProducer, ConsumerRecord

from schemas import EventEnvelope, EventStatus, RoutedEvent, RoutingSummary
from sinks.event_store import EventStore
from tests.conftest import consume_all
from vdip.settings import Settings


def routed(app_id: str, status: EventStatus = EventStatus.PROCESSED) -> RoutedEvent:
    now = datetime.now(UTC)
    event = EventEnvelope(
        event_id=uuid.uuid4(), app_id=app_id, event_type="t", payload={"n": 1}, received_at=now
    )
    return RoutedEvent(event=event, status=status, routing=RoutingSummary(routed_at=now))


def as_record(value: bytes, offset: int = 0) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="events.routed",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=(),
    )


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
    assert b"validation error" in headers["error"]
