"""Benchmark: the table sink's write path (rows/s), next to a plain asyncpg COPY of the same rows.

Needs the local stack's PostgreSQL (`vdip stack up`). Builds ROWS deliveries, then, alternating
in each round, writes them in batches of BATCH:

- sink: ``TableWriter.write`` on the Kafka records (parse each delivery, one transaction per batch,
  ``INSERT ... ON CONFLICT (event_id, rule_id) DO NOTHING`` with ``executemany``)
- copy:  ``copy_records_to_table`` of the same rows (already parsed; payloads serialised to JSON
  text), one COPY per batch, into a table of the same shape: the fastest way into PostgreSQL

Run: .venv/bin/python -m bench.tables [--rounds 5] [--rows 20000] [--batch 500]
"""

import argparse
import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import orjson
from aiokafka import ConsumerRecord

from schemas import EventEnvelope
from schemas.rules import Delivery
from sinks.tables import TableWriter, create_statements
from vdip.db import create_pool, migrate_url
from vdip.settings import Settings

SCHEMA = "vdip_bench"


def deliveries(count: int, table: str) -> list[ConsumerRecord[bytes, bytes]]:
    now = datetime.now(UTC)
    records = []
    for n in range(count):
        event = EventEnvelope(
            event_id=uuid.uuid4(),
            app_id="bench",
            event_type="order_created",
            payload={"n": n, "total": 99.5, "items": [{"sku": "A-1", "qty": 2}]},
            received_at=now,
        )
        value = (
            Delivery(
                delivery_id=uuid.uuid4(),
                rule_id=1,
                destination_type="database_table",
                destination_config={"table": table},
                event=event,
            )
            .model_dump_json()
            .encode()
        )
        records.append(
            ConsumerRecord(
                topic="deliveries.table",
                partition=0,
                offset=n,
                timestamp=0,
                timestamp_type=0,
                key=b"bench",
                value=value,
                checksum=None,
                serialized_key_size=5,
                serialized_value_size=len(value),
                headers=(),
            )
        )
    return records


async def sink(pool: asyncpg.Pool, records: list[ConsumerRecord[bytes, bytes]], batch: int) -> float:
    writer = TableWriter(pool, None, "unused", SCHEMA)  # nothing is refused here
    started = time.perf_counter()
    for i in range(0, len(records), batch):
        await writer.write(records[i : i + batch])
    return len(records) / (time.perf_counter() - started)


async def copy(
    conn: asyncpg.Connection, table: str, records: list[ConsumerRecord[bytes, bytes]], batch: int
) -> float:
    rows = []
    for record in records:
        delivery = orjson.loads(record.value)
        event = delivery["event"]
        rows.append(
            (
                uuid.UUID(event["event_id"]),
                delivery["rule_id"],
                event["app_id"],
                event["event_type"],
                orjson.dumps(event["payload"]).decode(),
                orjson.dumps(event["metadata"]).decode(),
                datetime.fromisoformat(event["received_at"]),
            )
        )
    columns = ["event_id", "rule_id", "app_id", "event_type", "payload", "metadata", "received_at"]
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        await conn.copy_records_to_table(
            table, schema_name=SCHEMA, records=rows[i : i + batch], columns=columns
        )
    return len(rows) / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    settings = Settings()
    await migrate_url(settings.database_url)
    pool = await create_pool(settings.database_url)
    plain = await asyncpg.connect(settings.database_url)  # asyncpg's own codecs, for COPY
    results: dict[str, list[float]] = {"sink": [], "copy": []}
    try:
        for round_ in range(args.rounds + 1):
            run = uuid.uuid4().hex[:8]
            sink_table, copy_table = f"sink_{run}", f"copy_{run}"
            for statement in create_statements(SCHEMA, copy_table):
                await plain.execute(statement)
            records = deliveries(args.rows, sink_table)
            measured = {
                "sink": await sink(pool, records, args.batch),
                "copy": await copy(plain, copy_table, records, args.batch),
            }
            for table in (sink_table, copy_table):
                await plain.execute(f'DROP TABLE {SCHEMA}."{table}"')
            print(
                f"round {round_}{' (warm-up)' if round_ == 0 else ''}: "
                + "  ".join(f"{k} {v:8.0f} rows/s" for k, v in measured.items()),
                flush=True,
            )
            if round_:
                for name, value in measured.items():
                    results[name].append(value)
    finally:
        await plain.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        await plain.close()
        await pool.close()
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(f"\nmedians over {args.rounds} rounds, {args.rows} rows in batches of {args.batch}:")
    print(f"  COPY:        {medians['copy']:8.0f} rows/s")
    print(f"  table sink:  {medians['sink']:8.0f} rows/s  = {medians['sink'] / medians['copy']:.2f} x COPY")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    asyncio.run(main(parser.parse_args()))
