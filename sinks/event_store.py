"""The event store: writes every routed event to ``data_events``, once.

Consumes ``events.routed`` in batches and inserts each batch with one ``executemany`` in one
transaction, ``ON CONFLICT (event_id) DO NOTHING``: a replayed record never duplicates a row nor
overwrites a status that moved on since. A record that is not a ``RoutedEvent`` (which only a bug
could produce), or a row PostgreSQL refuses, goes to ``events.dlq`` with the reason, so that it is
never silently lost; the rest of its batch is written.
"""

from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from schemas import RoutedEvent
from sinks.batching import Record, Records, dead_letter, insert_rows, run_sink
from vdip.settings import Settings

# The event and its deliveries, in one statement: a delivery to a queue was done when the
# router's produce was acknowledged; the others are pending until their sink says otherwise.
INSERT = """
WITH event AS (
    INSERT INTO data_events (event_id, app_id, event_type, payload, metadata, received_at,
                             occurred_at, occurred_at_clamped, schema_version, status, routing)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    ON CONFLICT (event_id) DO NOTHING
)
INSERT INTO deliveries (delivery_id, event_id, rule_id, destination_type, status, attempts, delivered_at)
SELECT d.delivery_id, $1, d.rule_id, d.destination_type,
       CASE WHEN d.destination_type = 'queue' THEN 'delivered' ELSE 'pending' END,
       CASE WHEN d.destination_type = 'queue' THEN 1 ELSE 0 END,
       CASE WHEN d.destination_type = 'queue' THEN $12::timestamptz END
FROM jsonb_to_recordset($11::jsonb -> 'deliveries')
     AS d(delivery_id uuid, rule_id bigint, destination_type text)
ON CONFLICT (delivery_id) DO NOTHING
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
        routed.routing.routed_at,
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
                await self._refused(record, str(exc))
        await insert_rows(self.pool, INSERT, parsed, self._refused)

    async def _refused(self, record: Record, reason: str) -> None:
        await dead_letter(self.producer, self.dlq_topic, record, "event-store", reason)


def run(settings: Settings) -> None:
    """Run the event store sink in the foreground until SIGTERM/SIGINT."""
    run_sink(
        settings,
        topic=settings.topic("events.routed"),
        group_id=settings.sink_group_id,
        metrics_port=settings.sink_metrics_port,
        make_write=lambda pool, producer: EventStore(pool, producer, settings.topic("events.dlq")).write,
    )
