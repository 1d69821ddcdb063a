"""Benchmark: the event store's and the table sink's write paths (rows/s), next to a plain asyncpg
COPY of the same rows.

Needs the local stack's PostgreSQL (`vdip stack up`). Works in a scratch database of its own
(created, migrated, dropped at the end), so nobody else's data or statistics are touched. Each round
builds ROWS events, each routed to one table rule (as the router emits them: the routed event on
``events.routed``, its delivery on ``deliveries.table``), then writes them in batches of BATCH:

- store: ``EventStore.write`` on the routed records (parse, one transaction per batch: COPY into a
  staging table, ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` of the events and their pending
  deliveries); the statistics triggers count each event
- sink:  ``TableWriter.write`` on the delivery records, after the store wrote their events (as in
  production): the same staging, the rows ``ON CONFLICT (event_id, rule_id) DO NOTHING`` and the
  deliveries upserted as delivered (the triggers move each event from pending to processed)
- copy store / copy sink: ``copy_records_to_table`` of the same rows (already parsed; payloads
  serialised to JSON text), one COPY per batch, into a table of the same shape (indexes and
  constraints, no triggers): the fastest way into PostgreSQL

With ``--trigger-cost``, each round also runs store and sink on fresh events with the statistics
triggers disabled (``ALTER TABLE ... DISABLE TRIGGER``, in the scratch database only). The COPYs run
first in odd rounds and last in even ones. Round 0 is a warm-up.

Run: .venv/bin/python -m bench.tables [--rounds 5] [--rows 20000] [--batch 500] [--trigger-cost]
"""

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiokafka import ConsumerRecord

from schemas import EventEnvelope, EventStatus, RoutedEvent, RoutingSummary
from schemas.events import DeliveryRef
from schemas.rules import Delivery
from sinks.event_store import EventStore
from sinks.tables import TableWriter
from vdip.db import create_pool, drop_database, migrate_url, with_database
from vdip.settings import Settings
from vdip.store.tables import create_statements

SCHEMA = "vdip_bench"
TRIGGERS = {
    "data_events": ["data_events_counted"],
    "deliveries": ["deliveries_counted_insert", "deliveries_counted_update"],
}
Records = list[ConsumerRecord[bytes, bytes]]


def record(topic: str, offset: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"bench",
        value=value,
        checksum=None,
        serialized_key_size=5,
        serialized_value_size=len(value),
        headers=(),
    )


def routed_and_deliveries(count: int, table: str) -> tuple[Records, Records]:
    """``count`` events routed to one table rule: their ``events.routed`` and ``deliveries.table``
    records."""
    now = datetime.now(UTC)
    routed, deliveries = [], []
    for n in range(count):
        event = EventEnvelope(
            event_id=uuid.uuid4(),
            app_id="bench",
            event_type="order_created",
            payload={"n": n, "total": 99.5, "items": [{"sku": "A-1", "qty": 2}]},
            received_at=now,
        )
        ref = DeliveryRef(delivery_id=uuid.uuid4(), rule_id=1, destination_type="database_table")
        summary = RoutingSummary(rules_evaluated=1, matched_rules=[1], deliveries=[ref], routed_at=now)
        value = RoutedEvent(event=event, status=EventStatus.PENDING, routing=summary).model_dump_json()
        routed.append(record("events.routed", n, value.encode()))
        delivery = Delivery(
            delivery_id=ref.delivery_id,
            rule_id=1,
            destination_type="database_table",
            destination_config={"table": table},
            event=event,
        )
        deliveries.append(record("deliveries.table", n, delivery.model_dump_json().encode()))
    return routed, deliveries


async def timed(write: Callable[[Records], Awaitable[None]], records: Records, batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(records), batch):
        await write(records[i : i + batch])
    return len(records) / (time.perf_counter() - started)


def json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def table_rows(deliveries: Records) -> list[tuple[Any, ...]]:
    rows = []
    for delivery in map(orjson.loads, (r.value for r in deliveries)):
        event = delivery["event"]
        rows.append(
            (
                uuid.UUID(event["event_id"]),
                delivery["rule_id"],
                event["app_id"],
                event["event_type"],
                json_text(event["payload"]),
                json_text(event["metadata"]),
                datetime.fromisoformat(event["received_at"]),
            )
        )
    return rows


def event_rows(routed: Records) -> list[tuple[Any, ...]]:
    rows = []
    for value in map(orjson.loads, (r.value for r in routed)):
        event = value["event"]
        rows.append(
            (
                uuid.UUID(event["event_id"]),
                event["app_id"],
                event["event_type"],
                json_text(event["payload"]),
                json_text(event["metadata"]),
                datetime.fromisoformat(event["received_at"]),
                None,
                False,
                event["schema_version"],
                value["status"],
                json_text(value["routing"]),
            )
        )
    return rows


TABLE_COLUMNS = ["event_id", "rule_id", "app_id", "event_type", "payload", "metadata", "received_at"]
EVENT_COLUMNS = [
    "event_id",
    "app_id",
    "event_type",
    "payload",
    "metadata",
    "received_at",
    "occurred_at",
    "occurred_at_clamped",
    "schema_version",
    "status",
    "routing",
]


async def copy(
    conn: asyncpg.Connection, table: str, columns: list[str], rows: list[tuple[Any, ...]], batch: int
) -> float:
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        await conn.copy_records_to_table(
            table, schema_name=SCHEMA, records=rows[i : i + batch], columns=columns
        )
    return len(rows) / (time.perf_counter() - started)


async def set_triggers(conn: asyncpg.Connection, enabled: bool) -> None:
    for table, names in TRIGGERS.items():
        for name in names:
            await conn.execute(f"ALTER TABLE {table} {'ENABLE' if enabled else 'DISABLE'} TRIGGER {name}")


async def one_round(
    round_: int, args: argparse.Namespace, pool: asyncpg.Pool, plain: asyncpg.Connection
) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    sink_table, copy_table, copy_events = f"sink_{run}", f"copy_{run}", f"events_{run}"
    for statement in create_statements(SCHEMA, copy_table):
        await plain.execute(statement)
    await plain.execute(f"CREATE TABLE {SCHEMA}.{copy_events} (LIKE data_events INCLUDING ALL)")
    routed, deliveries = routed_and_deliveries(args.rows, sink_table)
    store = EventStore(pool, None, "unused")  # nothing is refused here
    writer = TableWriter(pool, None, "unused", SCHEMA)
    measured: dict[str, float] = {}

    async def copies() -> None:
        measured["copy store"] = await copy(plain, copy_events, EVENT_COLUMNS, event_rows(routed), args.batch)
        measured["copy sink"] = await copy(
            plain, copy_table, TABLE_COLUMNS, table_rows(deliveries), args.batch
        )

    if round_ % 2:
        await copies()
    measured["store"] = await timed(store.write, routed, args.batch)
    measured["sink"] = await timed(writer.write, deliveries, args.batch)
    if args.trigger_cost:
        routed, deliveries = routed_and_deliveries(args.rows, sink_table)
        await set_triggers(plain, False)
        try:
            measured["store, no triggers"] = await timed(store.write, routed, args.batch)
            measured["sink, no triggers"] = await timed(writer.write, deliveries, args.batch)
        finally:
            await set_triggers(plain, True)
    if not round_ % 2:
        await copies()
    for table in (sink_table, copy_table, copy_events):
        await plain.execute(f'DROP TABLE {SCHEMA}."{table}"')
    return measured


async def main(args: argparse.Namespace) -> None:
    settings = Settings()
    scratch = f"vdip_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(settings.database_url)
    await admin.execute(f'CREATE DATABASE "{scratch}"')
    url = with_database(settings.database_url, scratch)
    results: dict[str, list[float]] = {}
    try:
        await migrate_url(url)
        pool = await create_pool(url)
        plain = await asyncpg.connect(url)  # asyncpg's own codecs, for COPY
        await plain.execute(f"CREATE SCHEMA {SCHEMA}")
        try:
            for round_ in range(args.rounds + 1):
                measured = await one_round(round_, args, pool, plain)
                print(
                    f"round {round_}{' (warm-up)' if round_ == 0 else ''}: "
                    + "  ".join(f"{k} {v:6.0f}" for k, v in measured.items()),
                    flush=True,
                )
                if round_:
                    for name, value in measured.items():
                        results.setdefault(name, []).append(value)
        finally:
            await plain.close()
            await pool.close()
    finally:
        await drop_database(admin, scratch)
        await admin.close()
    print(f"\nmedians over {args.rounds} rounds, {args.rows} rows in batches of {args.batch} (rows/s):")
    for name, values in results.items():
        median = statistics.median(values)
        base = statistics.median(results["copy sink" if name.startswith("sink") else "copy store"])
        ratio = "" if name.startswith("copy") else f"  = {median / base:.2f} x COPY"
        print(f"  {name:20} {median:8.0f}  (spread {min(values):.0f}-{max(values):.0f}){ratio}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--trigger-cost", action="store_true", help="also run store and sink with the statistics triggers off"
    )
    asyncio.run(main(parser.parse_args()))
