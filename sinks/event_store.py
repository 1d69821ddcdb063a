"""The event store: writes every routed event to ``data_events``, once.

Consumes ``events.routed`` in batches and inserts each batch with one ``executemany`` in one
transaction, ``ON CONFLICT (event_id) DO NOTHING``: a replayed record never duplicates a row nor
overwrites a status that moved on since. A record that is not a ``RoutedEvent`` (which only a bug
could produce) goes to ``events.dlq`` with the reason, so that it is never silently lost.
"""

import asyncio
import logging
import signal
from typing import Any, TypeAlias

import asyncpg
from aiokafka import AIOKafkaProducer, ConsumerRecord
from pydantic import ValidationError

from schemas import RoutedEvent
from sinks.batching import Records, new_consumer, run_batches
from vdip.db import create_pool, migrate_url
from vdip.settings import Settings

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
# Errors that belong to a row's values, not to the database being unreachable.
REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)

INSERT = """
INSERT INTO data_events (event_id, app_id, event_type, payload, metadata, received_at,
                         occurred_at, occurred_at_clamped, schema_version, status, routing)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (event_id) DO NOTHING
"""


def to_row(routed: RoutedEvent) -> tuple[Any, ...]:
    event = routed.event
    return (
        event.event_id,
        event.app_id,
        event.event_type,
        event.payload,
        event.metadata.model_dump(mode="json"),
        event.received_at,
        event.occurred_at,
        event.occurred_at_clamped,
        event.schema_version,
        routed.status.value,
        routed.routing.model_dump(mode="json"),
    )


class EventStore:
    """Parses a batch of ``events.routed`` records and writes it in one transaction."""

    def __init__(self, pool: asyncpg.Pool, producer: AIOKafkaProducer, dlq_topic: str) -> None:
        self.pool = pool
        self.producer = producer
        self.dlq_topic = dlq_topic

    async def write(self, records: Records) -> None:
        parsed: list[tuple[Record, tuple[Any, ...]]] = []
        for record in records:
            try:
                parsed.append((record, to_row(RoutedEvent.model_validate_json(record.value))))
            except ValidationError as exc:
                await self._dead_letter(record, str(exc))
        if not parsed:
            return
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.executemany(INSERT, [row for _, row in parsed])
        except REFUSED:
            # A value PostgreSQL refuses (never a connection problem, which is retried instead):
            # write row by row and dead-letter only the rows that fail alone, as Kafka Connect does.
            for record, row in parsed:
                try:
                    await self.pool.execute(INSERT, *row)
                except REFUSED as exc:
                    await self._dead_letter(record, f"{type(exc).__name__}: {exc}")

    async def _dead_letter(self, record: Record, reason: str) -> None:
        log.error("dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
        await self.producer.send_and_wait(
            self.dlq_topic,
            key=record.key,
            value=record.value,
            headers=[
                ("error", reason[:1000].encode()),
                ("error.stage", b"event-store"),
                ("source.topic", record.topic.encode()),
                ("source.partition", str(record.partition).encode()),
                ("source.offset", str(record.offset).encode()),
            ],
        )


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    await migrate_url(settings.database_url)  # idempotent; concurrent starts wait on a lock
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    consumer = new_consumer(
        settings.kafka_bootstrap,
        settings.sink_group_id,
        settings.topic("events.routed"),
        max_records=settings.sink_batch_size,
    )
    await producer.start()
    await consumer.start()
    store = EventStore(pool, producer, settings.topic("events.dlq"))
    log.info("event store sink consuming %s", settings.topic("events.routed"))
    try:
        await run_batches(
            consumer,
            store.write,
            stop,
            max_records=settings.sink_batch_size,
            timeout_ms=settings.sink_batch_timeout_ms,
        )
    finally:
        await consumer.stop()
        await producer.stop()
        await pool.close()


def run(settings: Settings) -> None:
    """Run the event store sink in the foreground until SIGTERM/SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(main())
