"""Benchmark: webhook delivery (deliveries/s, accept→delivered), the dispatcher next to plain
httpx and aiohttp clients posting the same signed bodies with the same concurrency.

Needs the local stack (`vdip stack up`). Works in a scratch database and under a topic prefix of
its own (both removed at the end). A receiver runs in a process of its own on 127.0.0.1 (HTTP/1.1,
keep-alive), answering 204 after 0 ms or 100 ms, and records when each ``webhook-id`` arrived. The
dispatcher (``vdip webhooks``) runs as in production, in its own process; its deliveries are
produced to ``deliveries.webhook`` as the router produces them (accept = produced). The baseline,
in this process, signs each body the same way and posts it with httpx (and then with aiohttp,
the dispatcher's own client), at most ``--in-flight``
requests per endpoint at once (accept = handed to the client).

Scenarios, each on 1 endpoint (``max_in_flight`` = ``--in-flight``) and on 20 (each ``--in-flight-many``):

- burst, 0 ms:   ``--burst`` deliveries at once; deliveries/s from the first accept to the last arrival
- burst, 100 ms: the same against a receiver answering after 100 ms (the bound: in-flight / 0.1 s)
- paced, 0 ms:   ``--rate`` deliveries/s offered for ``--seconds`` to one endpoint; accept→delivered

The baselines run first in odd rounds and last in even ones. Round 0 is a warm-up.

Run: .venv/bin/python -m bench.webhooks [--rounds 3] [--burst 3000] [--in-flight 16] [--rate 200]
"""

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaProducer

from bench.common import Processes, apply_own_topics, delete_topics, free_port, process_env
from schemas.rules import Delivery, RuleFields
from sinks.webhooks import request_body, request_headers
from vdip.db import create_pool, drop_database, migrate_url, with_database
from vdip.kafka import client_options
from vdip.settings import Settings
from vdip.store.applications import create_application
from vdip.store.rules import insert_rule

APP = "bench-webhooks"

# ------------------------------------------------------------------------------ the receiver


class Receiver:
    """HTTP/1.1 with keep-alive: ``POST /<delay ms>/...`` answers 204 after that delay and records
    (webhook-id, arrival); ``GET /arrivals`` returns and forgets them."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, float]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, path = head[0].split(" ")[:2]
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)
                }
                await reader.readexactly(int(headers.get("content-length", "0")))
                if method == "GET":
                    body, self.arrivals = orjson.dumps(self.arrivals), []
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
                    continue
                self.arrivals.append((headers.get("webhook-id", ""), time.time()))
                delay_ms = int(path.split("/")[1])
                if delay_ms:
                    await asyncio.sleep(delay_ms / 1000)
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def serve_receiver(port: int) -> None:
    server = await asyncio.start_server(Receiver().handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# ------------------------------------------------------------------------------ the two senders


@dataclass
class Endpoint:
    rule_id: int
    url: str
    secret: str


def deliveries_for(endpoints: list[Endpoint], count: int, in_flight: int) -> list[Delivery]:
    """``count`` deliveries spread round-robin over ``endpoints``, as the router makes them."""
    now = datetime.now(UTC)
    return [
        Delivery.model_validate(
            {
                "delivery_id": uuid.uuid4(),
                "rule_id": endpoints[n % len(endpoints)].rule_id,
                "destination_type": "webhook",
                "destination_config": {"url": endpoints[n % len(endpoints)].url, "max_in_flight": in_flight},
                "event": {
                    "event_id": uuid.uuid4(),
                    "app_id": APP,
                    "event_type": "order_created",
                    "payload": {"n": n, "total": 99.5, "items": [{"sku": "A-1", "qty": 2}]},
                    "received_at": now,
                },
            }
        )
        for n in range(count)
    ]


Send = Callable[[list[Delivery], float], Awaitable[dict[str, float]]]


async def paced(
    deliveries: list[Delivery], rate: float, hand: Callable[[Delivery], Awaitable[None]]
) -> dict[str, float]:
    """Hand each delivery over at its time (all at once when ``rate`` is 0): accept times."""
    accepted: dict[str, float] = {}
    started = time.time()
    for n, delivery in enumerate(deliveries):
        if rate:
            await asyncio.sleep(max(0.0, started + n / rate - time.time()))
        accepted[str(delivery.delivery_id)] = time.time()
        await hand(delivery)
    return accepted


class Dispatcher:
    """Through Kafka and the ``vdip webhooks`` process."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def send(self, deliveries: list[Delivery], rate: float) -> dict[str, float]:
        async def hand(delivery: Delivery) -> None:
            await self.producer.send(self.topic, delivery.model_dump_json().encode(), key=APP.encode())

        accepted = await paced(deliveries, rate, hand)
        await self.producer.flush()
        return accepted


Post = Callable[[str, bytes, dict[str, str]], Awaitable[int]]  # url, body, headers -> status


def httpx_post(client: httpx.AsyncClient) -> Post:
    async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        return (await client.post(url, content=body, headers=headers)).status_code

    return post


def aiohttp_post(session: aiohttp.ClientSession) -> Post:
    async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            return response.status

    return post


class PlainClient:
    """A plain HTTP client (httpx, or aiohttp as the dispatcher uses), the same signed bodies, at
    most ``in_flight`` requests per endpoint."""

    def __init__(self, post: Post, endpoints: list[Endpoint], in_flight: int) -> None:
        self.post = post
        self.secrets = {e.rule_id: e.secret for e in endpoints}
        self.slots = {e.rule_id: asyncio.Semaphore(in_flight) for e in endpoints}

    async def send(self, deliveries: list[Delivery], rate: float) -> dict[str, float]:
        tasks: list[asyncio.Task[None]] = []

        async def post(delivery: Delivery) -> None:
            async with self.slots[delivery.rule_id]:
                body = request_body(delivery)
                headers = request_headers(delivery, [self.secrets[delivery.rule_id]], body, time.time())
                status = await self.post(delivery.destination_config["url"], body, headers)
                assert status == 204, status

        async def hand(delivery: Delivery) -> None:
            tasks.append(asyncio.create_task(post(delivery)))

        accepted = await paced(deliveries, rate, hand)
        await asyncio.gather(*tasks)
        return accepted


# ------------------------------------------------------------------------------ measuring


@dataclass
class Result:
    per_second: float
    p50_ms: float
    p99_ms: float
    # The dispatcher: how long after the first accept its intake recorded the last delivery, and
    # its CPU per delivery.
    recorded_s: float | None = None
    cpu_ms: float | None = None


async def measure(
    send: Send, deliveries: list[Delivery], rate: float, stats: httpx.AsyncClient, pool: asyncpg.Pool | None
) -> Result:
    """``pool``: for the dispatcher, when its intake recorded the deliveries."""
    await stats.get("/arrivals")  # forget earlier arrivals
    accepted = await send(deliveries, rate)
    arrived: dict[str, float] = {}
    deadline = time.monotonic() + 120
    while len(arrived) < len(accepted):
        for webhook_id, at in (await stats.get("/arrivals")).json():
            if webhook_id in accepted:
                arrived.setdefault(webhook_id, at)
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(arrived)} of {len(accepted)} delivered within 120 s")
        await asyncio.sleep(0.05)
    latencies = sorted((arrived[i] - accepted[i]) * 1000 for i in accepted)
    took = max(arrived.values()) - min(accepted.values())
    recorded_s = None
    if pool is not None:
        last = await pool.fetchval(
            "SELECT extract(epoch FROM max(created_at)) FROM deliveries WHERE delivery_id = ANY($1::uuid[])",
            list(accepted),
        )
        recorded_s = float(last) - min(accepted.values())
    return Result(
        len(accepted) / took,
        latencies[len(latencies) // 2],
        latencies[int(len(latencies) * 0.99)],
        recorded_s,
    )


async def receiver_ready(stats: httpx.AsyncClient, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await stats.get("/arrivals")
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@dataclass
class Scenario:
    name: str
    endpoints: int
    delay_ms: int
    count: int
    in_flight: int
    rate: float = 0.0


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    one, many = args.in_flight, args.in_flight_many
    return [
        Scenario("1 endpoint, 0 ms", 1, 0, args.burst, one),
        Scenario("1 endpoint, 100 ms", 1, 100, one * 10 * 4, one),  # about 4 s at the bound
        Scenario("20 endpoints, 0 ms", 20, 0, args.burst, many),
        Scenario("20 endpoints, 100 ms", 20, 100, 20 * many * 10 * 2, many),  # about 2 s at the bound
        Scenario(f"paced {args.rate:g}/s, 0 ms", 1, 0, int(args.rate * args.seconds), one, args.rate),
    ]


async def make_endpoints(
    pool: asyncpg.Pool, port: int, args: argparse.Namespace
) -> dict[tuple[int, int], list[Endpoint]]:
    """Rules for each (endpoints, delay) of the scenarios."""
    found: dict[tuple[int, int], list[Endpoint]] = {}
    async with pool.acquire() as conn:
        for count in (1, 20):
            for delay in (0, 100):
                endpoints = []
                in_flight = args.in_flight if count == 1 else args.in_flight_many
                for n in range(count):
                    url = f"http://127.0.0.1:{port}/{delay}/e{count}-{n}"
                    fields = RuleFields(
                        app_id=APP,
                        rule_name=f"bench {count} {delay} {n}",
                        destination_type="webhook",
                        destination_config={"url": url, "max_in_flight": in_flight},
                    )
                    rule = await insert_rule(conn, fields)
                    assert rule.webhook_secret is not None
                    endpoints.append(Endpoint(rule.rule_id, url, rule.webhook_secret))
                found[count, delay] = endpoints
    return found


async def main(args: argparse.Namespace) -> None:
    base = Settings()
    scratch = f"vdip_bench_{uuid.uuid4().hex[:8]}"
    settings = base.model_copy(
        update={
            "database_url": with_database(base.database_url, scratch),
            "topic_prefix": f"bench-wh-{uuid.uuid4().hex[:8]}.",
            "webhook_group_id": f"bench-wh-{uuid.uuid4().hex[:8]}",
            "webhook_allowed_networks": ["127.0.0.1/32"],
            "webhooks_metrics_port": 0,
        }
    )
    admin = await asyncpg.connect(base.database_url)
    await admin.execute(f'CREATE DATABASE "{scratch}"')
    processes = Processes()
    logs = Path(args.logs)
    results: dict[str, dict[str, list[Result]]] = {}
    try:
        await migrate_url(settings.database_url)
        await apply_own_topics(settings)
        pool = await create_pool(settings.database_url)
        await create_application(pool, APP, "webhook benchmark")
        port = free_port()
        processes.start(
            "receiver",
            ["-m", "bench.webhooks", "--receiver", str(port)],
            process_env(settings),
            logs / "receiver.log",
        )
        endpoints = await make_endpoints(pool, port, args)
        # Retries after 1 s: an attempt that failed on this busy machine does not stall a run.
        retries = "[1, 1, 1, 1, 1]"
        env = process_env(settings, VDIP_LOG_LEVEL=args.log_level, VDIP_WEBHOOK_RETRY_SCHEDULE_S=retries)
        processes.vdip("webhooks", env, logs / "webhooks.log")
        producer = AIOKafkaProducer(
            **client_options(settings), acks="all", enable_idempotence=True, linger_ms=5
        )
        await producer.start()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=1000)
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as stats,
            httpx.AsyncClient(timeout=10, limits=limits) as plain_http,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as plain_aiohttp,
        ):
            await receiver_ready(stats)
            dispatcher = Dispatcher(producer, settings.topic("deliveries.webhook"))
            for round_ in range(args.rounds + 1):
                for scenario in [s for s in scenarios(args) if args.only in s.name]:
                    chosen = endpoints[scenario.endpoints, scenario.delay_ms]
                    in_flight = scenario.in_flight
                    runs: list[tuple[str, Send]] = [
                        ("dispatcher", dispatcher.send),
                        ("httpx", PlainClient(httpx_post(plain_http), chosen, in_flight).send),
                        ("aiohttp", PlainClient(aiohttp_post(plain_aiohttp), chosen, in_flight).send),
                    ]
                    if round_ % 2:
                        runs.reverse()
                    for name, send in runs:
                        deliveries = deliveries_for(chosen, scenario.count, scenario.in_flight)
                        own = pool if name == "dispatcher" else None
                        cpu_before = processes.cpu_seconds().get("webhooks", 0.0)
                        result = await measure(send, deliveries, scenario.rate, stats, own)
                        if own is not None:
                            used = processes.cpu_seconds().get("webhooks", 0.0) - cpu_before
                            result.cpu_ms = used / len(deliveries) * 1000
                        if processes.dead():
                            raise RuntimeError(
                                f"exited: {processes.dead()}\n{processes.log_tail('webhooks')}"
                            )
                        print(
                            f"round {round_}{' (warm-up)' if round_ == 0 else ''}: {scenario.name}, {name}:"
                            f" {result.per_second:.0f}/s, p50 {result.p50_ms:.0f} ms,"
                            f" p99 {result.p99_ms:.0f} ms"
                            + (
                                f"; all recorded {result.recorded_s:.1f} s after the first accept;"
                                f" {result.cpu_ms:.2f} ms of the dispatcher's CPU per delivery"
                                if result.recorded_s is not None and result.cpu_ms is not None
                                else ""
                            ),
                            flush=True,
                        )
                        if round_:
                            results.setdefault(scenario.name, {}).setdefault(name, []).append(result)
        await producer.stop()
        await pool.close()
    finally:
        processes.stop_all(grace=15)
        await delete_topics(settings.kafka_bootstrap, settings.topic_prefix)
        await drop_database(admin, scratch)
        await admin.close()
    print(
        f"\nmedians over {args.rounds} rounds; max_in_flight {args.in_flight} (1 endpoint),"
        f" {args.in_flight_many} (each of 20):"
    )
    print(f"  {'scenario':24} {'sender':10} {'deliveries/s':>12} {'p50 ms':>8} {'p99 ms':>8}   ratio")
    for scenario_name, by_sender in results.items():
        plain = {
            name: statistics.median(r.per_second for r in by_sender[name]) for name in ("httpx", "aiohttp")
        }
        for name, values in by_sender.items():
            rate = statistics.median(r.per_second for r in values)
            p50 = statistics.median(r.p50_ms for r in values)
            p99 = statistics.median(r.p99_ms for r in values)
            ratio = (
                f"  = {rate / plain['httpx']:.2f} x httpx, {rate / plain['aiohttp']:.2f} x aiohttp"
                if name == "dispatcher"
                else ""
            )
            print(f"  {scenario_name:24} {name:10} {rate:12.0f} {p50:8.0f} {p99:8.0f}{ratio}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burst", type=int, default=2000, help="deliveries per burst scenario")
    parser.add_argument("--in-flight", type=int, default=16, help="max_in_flight of the single endpoint")
    parser.add_argument("--in-flight-many", type=int, default=4, help="max_in_flight of each of 20 endpoints")
    parser.add_argument("--rate", type=float, default=200, help="deliveries/s offered in the paced scenario")
    parser.add_argument("--seconds", type=float, default=10, help="how long the paced scenario offers them")
    parser.add_argument("--only", default="", help="only the scenarios whose name contains this")
    parser.add_argument("--log-level", default="INFO", help="the dispatcher's (DEBUG logs each delivery)")
    parser.add_argument("--logs", default="/tmp/bench-webhooks", help="where the processes' output goes")
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)  # run the receiver on this port
    parsed = parser.parse_args()
    if parsed.receiver:
        asyncio.run(serve_receiver(parsed.receiver))
        sys.exit(0)
    asyncio.run(main(parsed))
