"""The fault suite: steady traffic, one fault at a time, then every destination of every event.

Load: one application with a rule of each kind (a queue rule for even ``n``, a table rule for
``n`` divisible by 3, a webhook rule for ``n`` divisible by 5, to a receiver on the loopback),
batches of events sent over HTTP on a schedule (every tenth large enough for the bulk lane,
``events.bulk``), each batch sent again with the same ids until the gateway answers 202 (as a
client should): the ledger is every id made. Faults: each process killed with SIGKILL and
started again as a user would; PostgreSQL stopped for 20 s; the single broker killed and
restarted; one broker of a three-node cluster killed and restarted.

After the load drains, ``check`` proves: every event of the ledger stored exactly once, routed
with all three rules; each expected queue record there (duplicates counted, at-least-once), each
table row exactly once, each expected webhook received under one ``webhook-id``; every delivery
delivered; statistics equal to a recount. It prints the figures."""

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka.partitioner import murmur2

from tests.conftest import (
    WEBHOOK_RECEIVER_HOST,
    AppKey,
    Pipeline,
    PrivateKafka,
    Process,
    Services,
    _free_port,
    needs_local_stack,
    read_to_end,
    rule_applied,
    running_pipeline,
    start_gateway,
    wait_until,
)
from tests.integration.test_webhooks import Receiver, ok, receiving
from vdip import stack
from vdip.settings import Settings
from vdip.statistics import check as check_statistics
from vdip.store.applications import create_application
from vdip.topics import apply_topics, declared_topics

ROOT = Path(__file__).resolve().parents[2]
BATCH = 10
BULK_EVERY, BULK = 10, 60  # every tenth batch holds 60 events: the bulk lane (events.bulk) under faults too
INTERVAL_S = 0.05  # 20 batches/s: 300 events/s
IN_FLIGHT = 32  # batches awaiting an answer at most: sending pauses beyond (a client's bounded buffer)


@dataclass
class Load:
    """The client side: what was sent, what was acknowledged, what the gateways answered. Batches
    go round the applications (so round the partitions of ``events``) and the gateways; a batch
    that was not acknowledged goes again, with the same ids, to the next gateway."""

    base_urls: list[str]
    apps: list[AppKey]
    sent: dict[str, int] = field(default_factory=dict)  # event_id -> n
    acknowledged: set[str] = field(default_factory=set)
    answers: dict[str, int] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, answer: str) -> None:
        self.answers[answer] = self.answers.get(answer, 0) + 1

    async def run(self) -> None:
        """Send a batch every INTERVAL_S until stopped; each batch until it is acknowledged. While
        IN_FLIGHT batches await their answer (Kafka away), no new batch is made."""
        pending: list[asyncio.Task[None]] = []
        in_flight = asyncio.Semaphore(IN_FLIGHT)
        limits = httpx.Limits(max_connections=IN_FLIGHT)
        async with httpx.AsyncClient(timeout=15, limits=limits) as client:
            while not self.stop.is_set():
                await in_flight.acquire()
                batch = []
                for _ in range(BULK if len(pending) % BULK_EVERY == BULK_EVERY - 1 else BATCH):
                    event_id, n = str(uuid.uuid4()), len(self.sent)
                    self.sent[event_id] = n
                    flags = {"queue": n % 2 == 0, "table": n % 3 == 0, "webhook": n % 5 == 0}
                    batch.append({"event_id": event_id, "event_type": "load", "payload": {"n": n, **flags}})
                app = self.apps[len(pending) % len(self.apps)]
                task = asyncio.create_task(self.deliver(client, app, batch, len(pending)))
                task.add_done_callback(lambda _: in_flight.release())
                pending.append(task)
                await asyncio.sleep(INTERVAL_S)
            await asyncio.gather(*pending)

    async def deliver(
        self, client: httpx.AsyncClient, app: AppKey, batch: list[dict[str, Any]], k: int
    ) -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            url = f"{self.base_urls[k % len(self.base_urls)]}/api/ingest/{app.app_id}/batch"
            k += 1
            try:
                answer = await client.post(url, json={"events": batch}, headers=app.headers)
            except httpx.HTTPError as exc:
                self.count(type(exc).__name__)
            else:
                self.count(str(answer.status_code))
                if answer.status_code == 202:
                    self.acknowledged.update(event["event_id"] for event in batch)
                    return
                assert answer.status_code in (503, 429), answer.text  # anything else is a bug
            await asyncio.sleep(0.3)
        raise AssertionError(f"a batch was not acknowledged within 240 s ({self.answers})")


@dataclass
class Setup:
    pipeline: Pipeline
    pool: asyncpg.Pool
    apps: list[AppKey]
    receiver: Receiver
    queue_topics: list[str]  # one per application, prefixed
    tables: list[str]  # one per application

    @property
    def app_ids(self) -> list[str]:
        return [app.app_id for app in self.apps]


def apps_over_partitions(partitions: int = 3) -> list[str]:
    """``partitions`` application ids whose events land on distinct partitions of ``events`` (key
    = app_id): distinct modulo ``partitions``, so modulo ``events``' 12 partitions too."""
    found: dict[int, str] = {}
    while len(found) < partitions:
        app_id = f"faults-{uuid.uuid4().hex[:8]}"
        found.setdefault((murmur2(app_id.encode()) & 0x7FFFFFFF) % partitions, app_id)
    return list(found.values())


async def make_setup(pipeline: Pipeline, pool: asyncpg.Pool, receiver: Receiver) -> Setup:
    """Three applications, each on a partition of its own, each with a queue, a table and a webhook rule
    (a queue topic and a table of its own: destinations belong to one application; one webhook
    receiver for all)."""
    apps, queues, tables = [], [], []
    async with httpx.AsyncClient(base_url=pipeline.base_url, timeout=30) as client:
        for app_id in apps_over_partitions():
            queue, table = f"faults-{uuid.uuid4().hex[:8]}", f"faults_{uuid.uuid4().hex[:8]}"
            queues.append(pipeline.settings.topic(queue))
            tables.append(table)
            bodies = {
                "queue": ({"payload.queue": True}, {"topic": queue}),
                "database_table": ({"payload.table": True}, {"table": table}),
                "webhook": ({"payload.webhook": True}, {"url": receiver.url("/faults")}),
            }
            created = await create_application(pool, app_id, app_id)
            assert created is not None
            app = AppKey(app_id, created[1])
            apps.append(app)
            for kind, (condition, config) in bodies.items():
                body = {
                    "app_id": app_id,
                    "rule_name": kind,
                    "condition": condition,
                    "destination_type": kind,
                    "destination_config": config,
                }
                answer = await client.post("/api/routing-rules", json=body, headers=app.headers)
                assert answer.status_code == 201, answer.text
                await rule_applied(pipeline, answer.json()["data"])
    return Setup(pipeline, pool, apps, receiver, queues, tables)


async def under_load(
    setup: Setup, faults: Callable[[], Awaitable[None]], base_urls: list[str] | None = None
) -> Load:
    """Run the load, apply ``faults`` while it runs (after 3 s), and stop it 3 s after."""
    load = Load(base_urls or [setup.pipeline.base_url], setup.apps)
    running = asyncio.create_task(load.run())
    await asyncio.sleep(3)
    try:
        await faults()
        await asyncio.sleep(3)
    finally:
        load.stop.set()
        await running
    return load


async def check(setup: Setup, load: Load, label: str) -> None:
    """Wait until everything is drained, then compare every destination with the ledger."""
    pool, app_ids = setup.pool, setup.app_ids
    ledger = {uuid.UUID(event_id): n for event_id, n in load.sent.items()}
    assert load.acknowledged == set(load.sent)  # every batch was sent again until acknowledged
    expected = {
        "queue": {e for e, n in ledger.items() if n % 2 == 0},
        "database_table": {e for e, n in ledger.items() if n % 3 == 0},
        "webhook": {e for e, n in ledger.items() if n % 5 == 0},
    }

    progress: dict[str, Any] = {}

    async def drained() -> bool:
        """Every event stored, and no delivery of them left to do."""
        progress["stored"] = await pool.fetchval(
            "SELECT count(*) FROM data_events WHERE app_id = ANY($1)", app_ids
        )
        progress["open deliveries"] = {
            f"{r['destination_type']} {r['status']}": r["n"]
            for r in await pool.fetch(
                """SELECT d.destination_type, d.status, count(*) AS n
                   FROM deliveries d JOIN data_events e USING (app_id, event_id)
                   WHERE e.app_id = ANY($1) AND d.status NOT IN ('delivered', 'failed') GROUP BY 1, 2""",
                app_ids,
            )
        }
        return bool(progress["stored"] >= len(ledger) and not progress["open deliveries"])

    waited = time.monotonic()
    try:
        await wait_until(drained, 180, interval=1, message=f"{label}: every event stored and delivered")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; of {len(ledger)} events {progress}") from None
    finally:
        setup.pipeline.assert_alive()
    waited = time.monotonic() - waited

    rows = await pool.fetch("SELECT event_id, routing FROM data_events WHERE app_id = ANY($1)", app_ids)
    stored = [r["event_id"] for r in rows]
    lost = set(ledger) - set(stored)
    assert not lost, f"{label}: {len(lost)} acknowledged events not stored"
    assert len(stored) == len(set(stored)) == len(ledger)
    fewer_rules = [(r["event_id"], r["routing"]) for r in rows if r["routing"]["rules_evaluated"] != 3]
    assert not fewer_rules, (
        f"{label}: {len(fewer_rules)} events routed with fewer than their 3 rules: {fewer_rules[:3]}"
    )

    settings, prefix = setup.pipeline.settings, setup.pipeline.settings.topic_prefix
    queue = [
        orjson.loads(r.value)
        for topic in setup.queue_topics
        for r in await read_to_end(settings, topic.removeprefix(prefix))
    ]
    queued = [uuid.UUID(d["event"]["event_id"]) for d in queue]
    assert set(queued) == expected["queue"], f"{label}: queue records differ from the expected set"

    table = [
        row for name in setup.tables for row in await pool.fetch(f'SELECT event_id FROM vdip_tables."{name}"')
    ]
    assert sorted(r["event_id"] for r in table) == sorted(expected["database_table"]), f"{label}: table rows"

    hooks: dict[uuid.UUID, set[str]] = {}
    for request in setup.receiver.to("/faults"):
        event_id = uuid.UUID(orjson.loads(request.body)["data"]["event_id"])
        if event_id in ledger:
            hooks.setdefault(event_id, set()).add(request.headers["webhook-id"])
    assert set(hooks) == expected["webhook"], f"{label}: webhooks received differ from the expected set"
    assert all(len(ids) == 1 for ids in hooks.values()), f"{label}: an event's webhooks had several ids"

    statuses = await pool.fetch(
        """SELECT d.destination_type, d.status, count(*) AS n FROM deliveries d
           JOIN data_events e USING (app_id, event_id) WHERE e.app_id = ANY($1) GROUP BY 1, 2""",
        app_ids,
    )
    found = {(r["destination_type"], r["status"]): r["n"] for r in statuses}
    assert found == {(kind, "delivered"): len(ids) for kind, ids in expected.items()}, found
    now = datetime.now(UTC)
    for app_id in app_ids:
        assert await check_statistics(pool, app_id, now - timedelta(hours=2), now + timedelta(hours=1)) == []
    webhook_requests = sum(1 for r in setup.receiver.to("/faults"))
    print(
        f"\n{label}: sent {len(ledger)} events, acknowledged {len(load.acknowledged)}, stored"
        f" {len(stored)}, lost 0; queue {len(queued)} records for {len(expected['queue'])} expected"
        f" ({len(queued) - len(set(queued))} duplicates); table {len(table)} rows, 0 duplicated;"
        f" webhooks {webhook_requests} requests for {len(expected['webhook'])} events"
        f" ({webhook_requests - len(hooks)} repeated); answers {load.answers}; drained {waited:.0f} s"
        " after the load"
    )


@asynccontextmanager
async def load_setup(pipeline: Pipeline, pool: asyncpg.Pool) -> AsyncIterator[Setup]:
    async with receiving(ok, WEBHOOK_RECEIVER_HOST) as receiver:
        yield await make_setup(pipeline, pool, receiver)


def restart(process: Process) -> Callable[[], Awaitable[None]]:
    async def fault() -> None:
        process.kill()
        await asyncio.sleep(1)
        if process.name == "gateway":
            await start_gateway(process)
        else:
            process.start()
        await asyncio.sleep(3)

    return fault


async def test_each_process_killed_under_load_loses_and_duplicates_nothing(
    pipeline: Pipeline, pool: asyncpg.Pool
) -> None:
    async with load_setup(pipeline, pool) as setup:

        async def faults() -> None:
            for process in (
                pipeline.worker,
                pipeline.bulk_worker,
                pipeline.sink,
                pipeline.table_sink,
                pipeline.webhooks,
                pipeline.gateway,
            ):
                await restart(process)()

        load = await under_load(setup, faults)
        await check(setup, load, "every process killed once")


@pytest.mark.disruptive
async def test_postgres_stopped_under_load_loses_nothing(
    services: Services, pipeline: Pipeline, pool: asyncpg.Pool
) -> None:
    needs_local_stack(services, "PostgreSQL, which this test stops")
    postgres = Settings(database_url=services.database_url)
    async with load_setup(pipeline, pool) as setup:

        async def faults() -> None:
            await asyncio.to_thread(stack.stop_postgres, postgres)
            await asyncio.sleep(20)
            await asyncio.to_thread(stack.start_postgres, postgres)

        load = await under_load(setup, faults)
        await check(setup, load, "PostgreSQL stopped 20 s")


@pytest.mark.disruptive
async def test_the_single_broker_killed_under_load_loses_nothing(
    services: Services, pipeline: Pipeline, pool: asyncpg.Pool
) -> None:
    needs_local_stack(services, "Kafka, which this test kills")
    kafka = Settings(kafka_bootstrap=services.kafka_bootstrap, database_url=services.database_url)
    [broker] = stack.kafka_nodes(kafka)
    assert stack.read_pid(broker.paths.pid) is not None, "the broker was not started by this checkout's stack"
    async with load_setup(pipeline, pool) as setup:

        async def faults() -> None:
            pid = stack.read_pid(broker.paths.pid)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)  # no controlled shutdown: as a crash
            await asyncio.sleep(1)
            await asyncio.to_thread(stack.start_kafka, kafka)

        load = await under_load(setup, faults)
        await check(setup, load, "the single broker killed")


async def test_a_broker_of_three_killed_under_load_loses_nothing(
    settings: Settings, kafka_cluster: PrivateKafka, pool: asyncpg.Pool, log_dir: Path
) -> None:
    run = uuid.uuid4().hex[:6]
    on_cluster = settings.model_copy(
        update={
            "kafka_bootstrap": kafka_cluster.bootstrap,
            "kafka_brokers": 3,
            "topic_prefix": f"{settings.topic_prefix}c{run}.",
            "worker_id": f"{settings.worker_id}-c{run}",
            "sink_group_id": f"{settings.sink_group_id}-c{run}",
            "table_sink_group_id": f"{settings.table_sink_group_id}-c{run}",
            "webhook_group_id": f"{settings.webhook_group_id}-c{run}",
            "gateway_port": _free_port(),
            "worker_metrics_port": _free_port(),
            "sink_metrics_port": _free_port(),
            "table_sink_metrics_port": _free_port(),
            "webhooks_metrics_port": _free_port(),
            "worker_datadir": log_dir / f"worker-c{run}",
        }
    )
    await apply_topics(on_cluster, declared_topics(on_cluster, ROOT / "topics.yaml"))
    async with (
        running_pipeline(on_cluster, log_dir, f"cluster-{run}-") as pipeline,
        load_setup(pipeline, pool) as setup,
    ):

        async def faults() -> None:
            await asyncio.to_thread(kafka_cluster.kill, 2)
            await asyncio.sleep(6)
            await asyncio.to_thread(kafka_cluster.start)

        load = await under_load(setup, faults)
        await check(setup, load, "one broker of three killed")
