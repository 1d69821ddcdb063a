"""Benchmark: accepted events/s through the gateway, next to a raw aiokafka producer (the baseline).

Needs the local stack (`vdip stack up`). Starts its own gateway process on a free port with its own
topic prefix, then alternates the three measurements for several rounds and prints medians:

- raw:    aiokafka producer (acks=all, idempotent) sending the gateway's envelopes, awaiting each ack
- empty:  an empty FastAPI endpoint at the same path, served by uvicorn as the gateway is (same
          options, one process), answering 202 without reading the body: the ceiling of any
          FastAPI route here, the baseline of single
- single: POST /api/ingest/{app_id}, one event per request, CONCURRENCY requests in flight
- batch:  POST /api/ingest/{app_id}/batch, BATCH events per request, a few requests in flight

Every number counts only events whose 202 (or ack) arrived. Run: .venv/bin/python -m bench.ingest
"""

import argparse
import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer

from bench.common import Processes, apply_own_topics, free_port, process_env, wait_ready
from schemas import EventEnvelope, EventMetadata, EventSource
from vdip.db import create_pool, migrate_url
from vdip.settings import Settings
from vdip.store.applications import create_application

PAYLOAD = {"order_id": 12345, "total": 99.5, "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]}


def envelope(app_id: str) -> bytes:
    return (
        EventEnvelope(
            event_id=uuid.uuid4(),
            app_id=app_id,
            event_type="order_created",
            payload=PAYLOAD,
            metadata=EventMetadata(
                ip_address="127.0.0.1", user_agent="bench", correlation_id="b", source=EventSource.HTTP
            ),
            received_at=datetime.now(UTC),
        )
        .model_dump_json()
        .encode()
    )


async def raw(settings: Settings, app_id: str, events: int, concurrency: int) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=2
    )
    await producer.start()
    topic, key = settings.topic("events"), app_id.encode()
    per_worker = events // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            await producer.send_and_wait(topic, envelope(app_id), key=key)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return per_worker * concurrency / (time.perf_counter() - started)
    finally:
        await producer.stop()


def serve_empty(port: int) -> None:
    """Serve the empty endpoint as ``vdip gateway`` serves the gateway (used by ``main``)."""
    import uvicorn
    from fastapi import FastAPI, Response

    app = FastAPI()

    @app.post("/api/ingest/{app_id}", status_code=202)
    async def ingest(app_id: str) -> Response:
        return Response(b'{"success":true}', status_code=202, media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, log_level="warning", proxy_headers=False)


async def single(base: str, app_id: str, key: str, events: int, concurrency: int) -> float:
    body = orjson.dumps({"event_type": "order_created", "payload": PAYLOAD})
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    per_worker = events // concurrency
    accepted = 0
    async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def worker() -> None:
            nonlocal accepted
            for _ in range(per_worker):
                async with http.post(f"/api/ingest/{app_id}", data=body, headers=headers) as response:
                    await response.read()
                    accepted += response.status == 202

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return accepted / (time.perf_counter() - started)


async def batch(base: str, app_id: str, key: str, events: int, size: int, concurrency: int) -> float:
    body = orjson.dumps({"events": [{"event_type": "order_created", "payload": PAYLOAD}] * size})
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    requests = events // size // concurrency
    accepted = 0
    async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def worker() -> None:
            nonlocal accepted
            for _ in range(requests):
                async with http.post(f"/api/ingest/{app_id}/batch", data=body, headers=headers) as response:
                    answer = orjson.loads(await response.read())
                    accepted += answer["data"]["accepted"] if response.status in (202, 207) else 0

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return accepted / (time.perf_counter() - started)


async def wait_listening(base: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(base) as http:
        while True:
            try:
                async with http.post("/api/ingest/x") as response:
                    if response.status == 202:
                        return
            except aiohttp.ClientError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)


async def main(args: argparse.Namespace) -> None:
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        topic_prefix=f"bench-{run}.", gateway_port=free_port(), ingest_capacity_events_per_s=10_000_000
    )
    await migrate_url(settings.database_url)
    await apply_own_topics(settings)
    pool = await create_pool(settings.database_url)
    created = await create_application(pool, f"bench-{run}", "benchmark")
    await pool.close()
    assert created is not None
    app_id, key = created[0].app_id, created[1]
    processes = Processes()
    gateway = processes.vdip("gateway", process_env(settings, VDIP_LOG_LEVEL="WARNING"))
    base = f"http://127.0.0.1:{settings.gateway_port}"
    empty_port = free_port()
    processes.start("empty", ["-m", "bench.ingest", "--serve-empty", str(empty_port)], process_env(settings))
    empty = f"http://127.0.0.1:{empty_port}"
    try:
        await wait_ready(base, gateway)
        await wait_listening(empty)
        results: dict[str, list[float]] = {"raw": [], "empty": [], "single": [], "batch": []}
        for round_ in range(args.rounds + 1):  # round 0 warms up and is not counted
            measured = {
                "raw": await raw(settings, app_id, args.events, args.concurrency),
                "empty": await single(empty, app_id, key, args.events, args.concurrency),
                "single": await single(base, app_id, key, args.events, args.concurrency),
                "batch": await batch(base, app_id, key, args.events * 4, args.batch, 4),
            }
            line = "  ".join(f"{k} {v:8.0f}/s" for k, v in measured.items())
            print(f"round {round_}{' (warm-up)' if round_ == 0 else ''}: {line}", flush=True)
            if round_:
                for name, value in measured.items():
                    results[name].append(value)
    finally:
        processes.stop_all()
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(f"\nmedians over {args.rounds} rounds (events/s):")
    print(f"  raw aiokafka producer ({args.concurrency} in flight): {medians['raw']:8.0f}")
    print(f"  empty FastAPI endpoint ({args.concurrency} requests in flight): {medians['empty']:8.0f}")
    print(
        f"  gateway, single ({args.concurrency} requests in flight): {medians['single']:8.0f}"
        f"  = {medians['single'] / medians['raw']:.2f} x raw"
        f", {medians['single'] / medians['empty']:.2f} x empty"
    )
    print(
        f"  gateway, batch of {args.batch} (4 in flight):  {medians['batch']:8.0f}"
        f"  = {medians['batch'] / medians['raw']:.2f} x raw"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=4000, help="events per raw/single measurement")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--serve-empty", type=int, metavar="PORT", help="serve the empty endpoint (internal)")
    parsed = parser.parse_args()
    if parsed.serve_empty:
        serve_empty(parsed.serve_empty)
    else:
        asyncio.run(main(parsed))
