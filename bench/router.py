"""Benchmark: router throughput with 0, 10 and 100 active rules, next to a plain aiokafka relay.

Needs the local stack (`vdip stack up`). For each configuration, in each round, with topics of its
own: start the consumer (the faust worker, or the relay), give the worker its rules, produce EVENTS
envelopes as fast as possible, in records of BATCH events as the gateway writes a batch request
(``schemas.records.batch_records``; BATCH 1: a record per event), and measure the consumer's
output rate (events out per second) from the timestamps of its first and last output records
(the relay writes a record per event; the router writes the routed events of a record together,
as the gateway does). The rules never match (each compares payload.total with a bound the events stay under,
or looks for an sku in an array), so the figures measure rule evaluation, not fan-out.

- relay: an aiokafka consumer that produces each event of each record, unchanged and unparsed
  when the record is one event, split out of its array otherwise, to another topic: the floor
  cost of consuming and producing an event in Python, without validation or rules
- router N: the faust worker validating, claiming (in a database of the run's own, see
  ``streams/claims.py``) and routing each event against N active rules

Run: .venv/bin/python -m bench.router [--rounds 3] [--events 20000] [--batch 100] [--rules 0 10 100]
"""

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.common import Processes, apply_own_topics, free_port, process_env
from schemas import EventEnvelope
from schemas.records import batch_records
from schemas.rules import AppRules, RoutingRule
from vdip.db import drop_database, migrate_url, with_database
from vdip.settings import Settings

APP = "bench"


def rules(count: int) -> AppRules:
    now = datetime.now(UTC)
    return AppRules(
        app_id=APP,
        rules=[
            RoutingRule(
                rule_id=k + 1,
                app_id=APP,
                rule_name=f"r{k}",
                event_type_filter=None,
                condition={
                    "$or": [{"payload.total": {"$gt": 10_000 + k}}, {"payload.items.sku": f"never-{k}"}]
                },
                destination_type="queue",
                destination_config={"topic": f"q{k}"},
                created_at=now,
                updated_at=now,
            )
            for k in range(count)
        ],
    )


async def produce_events(settings: Settings, count: int, batch: int = 1) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    try:
        now = datetime.now(UTC)
        events = [
            EventEnvelope(
                event_id=uuid.uuid4(),
                app_id=APP,
                event_type="order_created",
                payload={"total": n % 1000, "items": [{"sku": "A-1", "qty": 2}]},
                received_at=now,
            )
            .model_dump_json()
            .encode()
            for n in range(count)
        ]
        records = [
            value
            for start in range(0, count, batch)
            for value, _ in batch_records(events[start : start + batch])
        ]
        futures = [
            await producer.send(settings.topic("events"), value, key=APP.encode()) for value in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def output_rate(settings: Settings, topic: str, count: int, timeout: float) -> float:
    """Events/s between the first and the last of ``count`` output records (their timestamps)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        name = settings.topic(topic)
        partitions = [TopicPartition(name, p) for p in (consumer.partitions_for_topic(name) or set())] or [
            TopicPartition(name, p) for p in range(3)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        stamps: list[int] = []
        deadline = time.monotonic() + timeout
        while len(stamps) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                for r in records:  # a batch record's events share its timestamp
                    stamps.extend([r.timestamp] * (len(orjson.loads(r.value)) if r.value[:1] == b"[" else 1))
        if len(stamps) < count:
            raise RuntimeError(f"only {len(stamps)} of {count} records reached {name}")
        return (count - 1) / ((max(stamps) - min(stamps)) / 1000)
    finally:
        await consumer.stop()


async def relay(settings: Settings) -> None:
    """Consume ``events`` and produce each record unchanged to ``events.routed``."""
    consumer = AIOKafkaConsumer(
        settings.topic("events"),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.topic_prefix}relay",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await consumer.start()
    await producer.start()
    out = settings.topic("events.routed")
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            futures = [
                await producer.send(out, event, key=r.key)
                for rs in batches.values()
                for r in rs
                for event in (
                    [orjson.dumps(e) for e in orjson.loads(r.value)] if r.value[:1] == b"[" else [r.value]
                )
            ]
            await asyncio.gather(*futures)
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


@asynccontextmanager
async def own_database(name: str) -> AsyncIterator[str]:
    """A database of this run (the router claims events in it), migrated; dropped at the end."""
    base = Settings().database_url
    conn = await asyncpg.connect(base)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = with_database(base, name)
    try:
        await migrate_url(url)
        yield url
    finally:
        conn = await asyncpg.connect(base)
        await drop_database(conn, name)
        await conn.close()


async def measure(kind: str, rule_count: int, events: int, batch: int) -> float:
    run = uuid.uuid4().hex[:8]
    if kind == "relay":  # no database
        return await measure_with(kind, rule_count, events, batch, run, Settings().database_url)
    async with own_database(f"vdip_bench_router_{run}") as database_url:
        return await measure_with(kind, rule_count, events, batch, run, database_url)


async def measure_with(
    kind: str, rule_count: int, events: int, batch: int, run: str, database_url: str
) -> float:
    settings = Settings(
        topic_prefix=f"bench-router-{run}.",
        worker_id=f"bench-router-{run}",
        worker_datadir=Path(f"/tmp/bench-router-{run}"),
        worker_metrics_port=free_port(),
        database_url=database_url,
    )
    await apply_own_topics(settings)
    log_path = Path(f"/tmp/bench-router-{run}.log")
    if kind == "relay":
        argv = ["-m", "bench.router", "--relay"]
    else:
        argv = ["-m", "vdip.cli", "--log-level", "WARNING", "worker"]
    processes = Processes()
    processes.start(kind, argv, process_env(settings), log_path)
    try:
        if kind == "router":
            producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
            await producer.start()
            await producer.send_and_wait(
                settings.topic("routing-rules"),
                rules(rule_count).model_dump_json().encode(),
                key=APP.encode(),
            )
            await producer.stop()
        await asyncio.sleep(8)  # the consumer joins its group and, for the router, loads its rules
        await produce_events(settings, events, batch)
        return await output_rate(settings, "events.routed", events, timeout=300)
    finally:
        processes.stop_all()


async def main(args: argparse.Namespace) -> None:
    configs = [("relay", 0), *(("router", n) for n in args.rules)]
    results: dict[str, list[float]] = {f"{k} {n}" if k == "router" else k: [] for k, n in configs}
    for round_ in range(1, args.rounds + 1):
        line = []
        for kind, count in configs:
            name = f"{kind} {count}" if kind == "router" else kind
            rate = await measure(kind, count, args.events, args.batch)
            results[name].append(rate)
            line.append(f"{name}: {rate:7.0f}/s")
        print(f"round {round_}: " + "  ".join(line), flush=True)
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(
        f"\nmedians over {args.rounds} rounds (events/s), {args.events} events each, {args.batch} a record:"
    )
    for name, value in medians.items():
        print(f"  {name:12s} {value:8.0f}  = {value / medians['relay']:.2f} x relay")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100, help="events per record (1: a record each)")
    parser.add_argument(
        "--rules", type=int, nargs="+", default=[0, 10, 100], help="the rule counts to measure"
    )
    parser.add_argument(
        "--relay", action="store_true", help="run as the relay (used by the benchmark itself)"
    )
    parsed = parser.parse_args()
    if parsed.relay:
        asyncio.run(relay(Settings()))
    else:
        asyncio.run(main(parsed))
