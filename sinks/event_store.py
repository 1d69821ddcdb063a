"""The event store: writes every routed event to ``data_events``, once (the SQL of both tables
is in ``vdip.store.events`` and ``vdip.store.deliveries``; the staging table is this sink's).

Consumes ``events.routed`` (a record holds one routed event, or several as a batch record: see
``schemas.records``) in batches and writes each batch in one transaction: COPY into a
temporary staging table, then one ``INSERT ... SELECT`` for the deliveries and one for the events,
``ON CONFLICT DO NOTHING``: a replayed record never duplicates a row nor overwrites a status that
moved on since, and a record that comes twice in one batch is written once (its first copy); only
a stored event whose routing failed takes the routing of a copy routed since (``insert_staged``).
Only the version of an event (its ``event_type`` and ``payload``) that the router claimed is
written, with its deliveries; a routed event of another version (which only a producer bypassing
the router, or a bug, could bring) is dead-lettered (stage ``conflict``), never attached. A
value that is not a ``RoutedEvent`` (which only a bug could produce; read as ``Routed``), or a row PostgreSQL
refuses, goes to ``events.dlq`` with the reason (one event of a batch record alone), so that it
is never silently lost; the rest of its batch is written.

The same process deletes the events older than their application's retention (``vdip.retention``)
and runs the jobs operators start (replays: ``sinks.jobs``).
"""

from typing import Any
from uuid import UUID

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from pydantic import AwareDatetime, TypeAdapter
from typing_extensions import TypedDict

from schemas import EventStatus
from schemas.events import DestinationType, EnvelopeView, content_hash
from schemas.records import Invalid, parse_batch
from sinks import jobs
from sinks.batching import Record, Records, dead_letter, insert_rows, run_sink, stage
from vdip import retention
from vdip.settings import Settings
from vdip.store import deliveries, events

# One row per record, in batch order (ord); JSON travels as text and becomes jsonb in the INSERT.
STAGE = "event_stage"
STAGE_COLUMNS = """ord integer, event_id uuid, app_id text, event_type text, payload text, metadata text,
    received_at timestamptz, occurred_at timestamptz, occurred_at_clamped boolean,
    schema_version smallint, status text, routing text, routed_at timestamptz, content_hash bytea"""

# The staged events that are not the version of their event_id, taken out of the stage: the
# version is the claimed one (streams/claims.py); else, for an event stored before claims, the
# stored one; else the first staged copy. Their deliveries are not attached to the stored event.
OTHER_VERSIONS = f"""
WITH firsts AS (
    SELECT DISTINCT ON (app_id, event_id) app_id, event_id, content_hash
    FROM {STAGE} ORDER BY app_id, event_id, ord
), others AS (
    SELECT s.ord, c.content_hash AS claimed
    FROM {STAGE} s
    JOIN firsts f ON f.app_id = s.app_id AND f.event_id = s.event_id
    LEFT JOIN event_claims c ON c.app_id = s.app_id AND c.event_id = s.event_id
    LEFT JOIN data_events d ON d.app_id = s.app_id AND d.event_id = s.event_id
    WHERE CASE
        WHEN c.content_hash IS NOT NULL THEN s.content_hash <> c.content_hash
        WHEN d.event_id IS NOT NULL THEN s.event_type <> d.event_type OR s.payload::jsonb <> d.payload
        ELSE s.content_hash <> f.content_hash
    END
)
DELETE FROM {STAGE} s USING others o WHERE s.ord = o.ord
RETURNING s.ord, o.claimed
"""

# Deliveries first: the statistics triggers then find no event yet and count each event once,
# when it is inserted, under its final status. Both statements go in one round trip.
INSERT = f"{deliveries.insert_staged(STAGE)};\n\n{events.insert_staged(STAGE)}"


class StoredDelivery(TypedDict):
    delivery_id: UUID
    rule_id: int
    destination_type: DestinationType


class StoredRouting(TypedDict):
    rules_evaluated: int
    matched_rules: list[int]
    deliveries: list[StoredDelivery]
    error: str | None
    routed_at: AwareDatetime


class Routed(TypedDict):
    """The fields of a ``RoutedEvent`` that the store writes, checked for their types without
    building its models (the router validated the event; a third of the cost). A value PostgreSQL
    refuses all the same (a NUL in a string) is dead-lettered alone."""

    event: EnvelopeView
    status: EventStatus
    routing: StoredRouting


def to_row(routed: Routed) -> tuple[Any, ...]:
    event, routing = routed["event"], routed["routing"]
    return (
        event["event_id"],
        event["app_id"],
        event["event_type"],
        orjson.dumps(event["payload"]).decode(),
        orjson.dumps(event["metadata"]).decode(),
        event["received_at"],
        event["occurred_at"],
        event["occurred_at_clamped"],
        event["schema_version"],
        routed["status"].value,
        orjson.dumps(routing, option=orjson.OPT_UTC_Z).decode(),
        routing["routed_at"],
        content_hash(event["event_type"], event["payload"]),
    )


async def write_rows(
    conn: asyncpg.Connection, rows: list[tuple[Any, ...]]
) -> list[tuple[tuple[Any, ...], bytes | None]]:
    """Write ``to_row`` rows and their deliveries (inside the caller's transaction), except the
    rows of another version than their event's: those are returned, each with the hash of the
    claimed version (None when the stored event or the batch's first copy decided)."""
    await stage(conn, STAGE, STAGE_COLUMNS, [(n, *row) for n, row in enumerate(rows)])
    others = await conn.fetch(OTHER_VERSIONS)
    await conn.execute(INSERT)
    return [(rows[other["ord"]], other["claimed"]) for other in others]


Part = tuple[Record, int | None, Routed | None]  # a record, or one event of a batch record
ROUTED, _MANY = TypeAdapter(Routed), TypeAdapter(list[Routed])


class EventStore:
    """Parses a batch of ``events.routed`` records and writes it in one transaction."""

    def __init__(self, pool: asyncpg.Pool, producer: AIOKafkaProducer, dlq_topic: str) -> None:
        self.pool = pool
        self.producer = producer
        self.dlq_topic = dlq_topic

    async def write(self, records: Records) -> None:
        parsed: list[tuple[Part, tuple[Any, ...]]] = []
        for record in records:
            for index, item in parse_batch(record.value, ROUTED, _MANY):
                if isinstance(item, Invalid):
                    part = None if index is None else (index, item.value or b"")
                    await self._dead_letter(record, item.reason, part)
                else:
                    parsed.append(((record, index, item), to_row(item)))
        part_of = {id(row): part for part, row in parsed}
        others: list[tuple[Part, bytes | None]] = []

        async def write(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
            others.extend((part_of[id(row)], claimed) for row, claimed in await write_rows(conn, rows))

        await insert_rows(self.pool, write, parsed, self._refused)
        for (record, index, routed), claimed in others:
            assert routed is not None
            event = routed["event"]
            first = "the stored event" if claimed is None else f"sha256 {claimed.hex()}"
            mine = "sha256 " + content_hash(event["event_type"], event["payload"]).hex()
            reason = (
                f"event_id {event['event_id']} of app {event['app_id']} was first accepted with other"
                f" content ({first} != {mine}); the first version is kept"
            )
            alone = None if index is None else (index, _dumps(routed))
            await dead_letter(self.producer, self.dlq_topic, record, "conflict", reason, alone)

    async def _refused(self, part: Part, reason: str) -> None:
        record, index, routed = part
        alone = None if index is None or routed is None else (index, _dumps(routed))
        await self._dead_letter(record, reason, alone)

    async def _dead_letter(self, record: Record, reason: str, part: tuple[int, bytes] | None) -> None:
        await dead_letter(self.producer, self.dlq_topic, record, "event-store", reason, part)


def run(settings: Settings) -> None:
    """Run the event store sink in the foreground until SIGTERM/SIGINT."""
    run_sink(
        settings,
        inputs=[
            (settings.topic("events.routed"), settings.sink_group_id),
            (settings.topic("events.routed.bulk"), f"{settings.sink_group_id}.bulk"),
        ],
        metrics_port=settings.sink_metrics_port,
        make_write=lambda pool, producer: EventStore(pool, producer, settings.topic("events.dlq")).write,
        also={
            "retention": lambda stop: retention.keep_enforcing(settings, stop),
            "jobs": lambda stop: jobs.keep_running(settings, stop),
        },
    )


def _dumps(routed: Routed) -> bytes:
    """One event of a batch record alone, to dead-letter it."""
    return orjson.dumps(routed, option=orjson.OPT_UTC_Z)
