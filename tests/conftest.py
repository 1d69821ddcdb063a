"""Fixtures: the real Kafka and PostgreSQL, a fresh namespace per run, and the pipeline's processes.

Services: the local stack when it answers (``bin/test`` starts it); otherwise, where a Docker
engine exists, Kafka and PostgreSQL containers via testcontainers; otherwise the run stops with
a message saying how to start the stack. Every run gets its own topic prefix, consumer groups and
database, so runs never see each other's data.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient

from vdip import stack, topics
from vdip.db import create_pool, drop_database, migrate_url, with_database
from vdip.kafka import client_options
from vdip.settings import Settings
from vdip.store.applications import create_application
from vdip.topics import apply_topics, declared_topics, partitions_of

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that stop shared services run last: the processes they shake take a while to settle."""
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "disruptive: stops a shared service (runs after every other test)")


@dataclass
class Services:
    kafka_bootstrap: str
    database_url: str  # the project database; each run creates its own database beside it
    local_stack: bool  # True when Kafka is the local stack's broker (it can be stopped and started)
    containers: list[object] = field(default_factory=list)


def needs_local_stack(services: Services, what: str) -> None:
    """Tests that stop and start a shared service need the local stack's (containers cannot be
    stopped and restarted in place): skipped for a contributor on containers, a failure in CI
    (``CI`` set), where they must always run."""
    if services.local_stack:
        return
    message = f"needs the local stack's {what}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; in CI they must run (`vdip stack up`)")
    pytest.skip(message)  # pragma: no cover - containers only


def _docker_engine() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def _local_stack_answers(settings: Settings) -> bool:
    async def check() -> bool:
        return await stack.kafka_answers(settings, 3) and await stack.postgres_answers(settings.database_url)

    return asyncio.run(check())


def _start_containers() -> Services:  # pragma: no cover - needs a Docker engine
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    kafka = KafkaContainer("confluentinc/cp-kafka:7.9.0").with_kraft()
    postgres = PostgresContainer("postgres:16-alpine", username="vdip", password="vdip", dbname="vdip")
    kafka.start()
    postgres.start()
    url = postgres.get_connection_url().replace("postgresql+psycopg2://", "postgresql://")
    return Services(kafka.get_bootstrap_server(), url, local_stack=False, containers=[kafka, postgres])


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    settings = Settings()
    if _local_stack_answers(settings):
        yield Services(settings.kafka_bootstrap, settings.database_url, local_stack=True)
        return
    if not _docker_engine():
        pytest.exit(
            "Kafka and PostgreSQL are not reachable and there is no Docker engine: run the tests with"
            " `bin/test` (it starts the local stack), or start it with `vdip stack up`.",
            returncode=3,
        )
    found = _start_containers()  # pragma: no cover
    yield found  # pragma: no cover
    for container in found.containers:  # pragma: no cover
        container.stop()  # type: ignore[attr-defined]


# Webhooks in the tests go to a receiver on this loopback address, the only one they allow.
WEBHOOK_RECEIVER_HOST = "127.0.0.2"


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
async def settings(
    services: Services, run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Settings]:
    """Settings of this run: its own topic prefix, groups and database, schema and topics applied."""
    database = f"vdip_test_{run_id}"
    admin_conn = await asyncpg.connect(services.database_url)
    await admin_conn.execute(f'CREATE DATABASE "{database}"')
    await admin_conn.close()
    test_settings = Settings(
        kafka_bootstrap=services.kafka_bootstrap,
        database_url=with_database(services.database_url, database),
        topic_prefix=f"test-{run_id}.",
        worker_id=f"test-{run_id}.worker",
        worker_datadir=tmp_path_factory.mktemp("worker"),
        sink_group_id=f"test-{run_id}.event-store",
        table_sink_group_id=f"test-{run_id}.table-sink",
        webhook_group_id=f"test-{run_id}.webhooks",
        webhook_allowed_networks=[WEBHOOK_RECEIVER_HOST + "/32"],  # the tests' receiver, nothing else
        webhook_retry_schedule_s=[0.5, 1.0, 1.0],
        webhook_timeout_s=15.0,
        gateway_port=_free_port(),
        worker_metrics_port=_free_port(),
        bulk_worker_metrics_port=_free_port(),
        sink_metrics_port=_free_port(),
        table_sink_metrics_port=_free_port(),
        webhooks_metrics_port=_free_port(),
        produce_timeout_s=3.0,
        admin_token=f"admin-{run_id}",
        ingest_capacity_events_per_s=1_000_000,  # quotas far above what tests send, unless a test sets one
        conflict_check_timeout_s=1.0,  # a cold connection on a busy machine: not a skipped check
        retention_interval_s=1.0,  # the event store deletes expired events within a second or so
        job_lease_s=3.0,  # a killed runner's job is taken up again 3 s after its last batch
        job_poll_interval_s=0.3,
        replay_events_per_s=250,  # 1,000 events in 4 s: long enough to be killed halfway
    )
    await migrate_url(test_settings.database_url)
    await apply_topics(test_settings, declared_topics(test_settings, ROOT / "topics.yaml"))
    yield test_settings
    admin_conn = await asyncpg.connect(services.database_url)  # a new one: PostgreSQL may have restarted
    await drop_database(admin_conn, database)
    await admin_conn.close()
    await _delete_topics(test_settings.kafka_bootstrap, f"test-{run_id}.")


async def _delete_topics(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    except Exception as exc:  # the broker may be gone at the very end; leave the topics
        print(f"could not delete this run's topics: {exc!r}", file=sys.stderr)
    finally:
        await admin.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings.database_url)
    yield pool
    try:
        await asyncio.wait_for(pool.close(), 10)
    except (OSError, asyncpg.InterfaceError, asyncpg.PostgresError, TimeoutError):
        pool.terminate()  # its connections died with a PostgreSQL restart


@dataclass
class AppKey:
    app_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}


@pytest.fixture
def admin(settings: Settings) -> dict[str, str]:
    """Headers that carry the admin token."""
    assert settings.admin_token is not None
    return {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}


@pytest.fixture
async def app(pool: asyncpg.Pool) -> AppKey:
    """A new application with its key, for one test."""
    app_id = f"app-{uuid.uuid4().hex[:12]}"
    created = await create_application(pool, app_id, f"Test {app_id}")
    assert created is not None
    return AppKey(app_id, created[1])


# ------------------------------------------------------------------------------------ processes


class Process:
    """One of the pipeline's processes (``vdip gateway|worker|sink``), run as in production."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
        label: str | None = None,
    ):
        self.name = name
        self.settings = settings
        self.log_path = log_dir / f"{label or name}.log"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.settings.as_environment(), **self.extra_env}

    def start(self) -> None:
        self.proc = stack.start_process(
            stack.vdip_command(self.name), log_file=self.log_path, env=self.env(), detached=False, cwd=ROOT
        )

    def kill(self) -> None:
        """SIGKILL: no chance to flush or commit anything."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self) -> str:
        return stack.tail(self.log_path, 60)

    def log_story(self, lines: int = 40) -> str:
        """The log's last ``lines`` lines, without aiokafka's retries to reach a node that is down
        (they crowd out what the process did meanwhile)."""
        noise = ("Unable connect to", "NodeNotReadyError", "Group Coordinator Request failed")
        if not self.log_path.exists():
            return f"(no log at {self.log_path})"
        kept = [
            line
            for line in self.log_path.read_text(errors="replace").splitlines()
            if not any(n in line for n in noise)
        ]
        return "\n".join(kept[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Pipeline:
    settings: Settings
    gateway: Process
    worker: Process
    bulk_worker: Process
    sink: Process
    table_sink: Process
    webhooks: Process

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.gateway_port}"

    @property
    def processes(self) -> list[Process]:
        return [self.gateway, self.worker, self.bulk_worker, self.sink, self.table_sink, self.webhooks]

    def assert_alive(self) -> None:
        """Every process still runs: none exited on its own (e.g. on an error it should survive)."""
        dead = [p for p in self.processes if not p.alive()]
        assert not dead, "\n\n".join(f"{p.name} exited:\n{p.log_tail()}" for p in dead)


async def wait_until(predicate, timeout: float, interval: float = 0.2, message: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting: {message}")
        await asyncio.sleep(interval)


async def start_gateway(process: Process) -> str:
    """Start a gateway process and wait until it is ready; returns its base URL."""
    process.start()
    base_url = f"http://127.0.0.1:{process.env()['VDIP_GATEWAY_PORT']}"

    async def ready() -> bool:
        assert process.alive(), process.log_tail()
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"{base_url}/health/ready")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_until(ready, 60, message=f"gateway {process.name} ready")
    return base_url


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    found = Path(os.environ.get("VDIP_TEST_LOG_DIR", tmp_path_factory.mktemp("logs")))
    found.mkdir(parents=True, exist_ok=True)
    return found


@pytest.fixture(scope="session")
async def pipeline(settings: Settings, log_dir: Path) -> AsyncIterator[Pipeline]:
    async with running_pipeline(settings, log_dir) as found:
        yield found


@asynccontextmanager
async def running_pipeline(settings: Settings, log_dir: Path, label: str = "") -> AsyncIterator[Pipeline]:
    """Gateway, the two workers and the three sinks of ``settings``, started, and flowing once this yields
    (one event went through); stopped at the end. ``label`` prefixes their log files."""

    def process(name: str, extra_env: dict[str, str] | None = None) -> Process:
        return Process(name, settings, log_dir, extra_env, label=f"{label}{name}")

    found = Pipeline(
        settings,
        gateway=process("gateway"),
        worker=process("worker"),
        bulk_worker=process("bulk-worker"),
        sink=process("sink", {"VDIP_SINK_BATCH_SIZE": "100"}),
        table_sink=process("table-sink", {"VDIP_SINK_BATCH_SIZE": "100"}),
        webhooks=process("webhooks"),
    )
    try:
        found.worker.start()
        found.bulk_worker.start()
        found.sink.start()
        found.table_sink.start()
        found.webhooks.start()
        await start_gateway(found.gateway)
        await _wait_until_flowing(found)
        yield found
    finally:
        for each in found.processes:
            each.stop()


async def _wait_until_flowing(found: Pipeline) -> None:
    """Send one event through gateway, worker and sink: the pipeline is up when it is stored."""
    pool = await create_pool(found.settings.database_url)
    try:
        created = await create_application(pool, f"warmup-{uuid.uuid4().hex[:8]}", "warm-up")
        assert created is not None
        warmup, key = created
        async with httpx.AsyncClient(base_url=found.base_url) as http:
            response = await http.post(
                f"/api/ingest/{warmup.app_id}", json={"event_type": "warmup"}, headers={"X-API-Key": key}
            )
            assert response.status_code == 202, response.text
        event_id = uuid.UUID(response.json()["data"]["event_id"])

        async def stored() -> bool:
            for process in (found.worker, found.sink):
                assert process.alive(), process.log_tail()
            return bool(await pool.fetchval("SELECT 1 FROM data_events WHERE event_id = $1", event_id))

        await wait_until(stored, 90, message="a first event went through worker and sink")
    finally:
        await pool.close()


@pytest.fixture
async def client(pipeline: Pipeline) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=pipeline.base_url, timeout=30) as http:
        yield http


@pytest.fixture(scope="session")
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """A direct producer, as an application writing to Kafka would use."""
    kafka = AIOKafkaProducer(**client_options(settings), acks="all", enable_idempotence=True)
    await kafka.start()
    yield kafka
    await kafka.stop()


def consumed(topic: str, value: bytes, offset: int = 0, key: bytes = b"k") -> ConsumerRecord[bytes, bytes]:
    """A record as a sink receives it from Kafka (partition 0)."""
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key),
        serialized_value_size=len(value),
        headers=(),
    )


def record_values(record: ConsumerRecord[bytes, bytes]) -> list[Any]:
    """The values a record of ``events`` or ``events.routed`` carries: itself, or the values of a
    batch record (a JSON array; ``schemas.records``)."""
    value = orjson.loads(record.value)
    return value if isinstance(value, list) else [value]


async def consume_all(
    settings: Settings, topic: str, *, until: Callable[[list[Any]], bool], timeout: float = 30
) -> list[Any]:
    """Read ``topic`` from the beginning until ``until(records)`` holds or time runs out."""
    consumer = AIOKafkaConsumer(
        settings.topic(topic),
        **client_options(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while not until(records) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for partition in batches.values():
                records.extend(partition)
    finally:
        await consumer.stop()
    return records


async def read_to_end(settings: Settings, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of this run's ``topic`` up to its end as Kafka reports it now
    (``vdip.topics.read_to_end``): what was acknowledged before the call is all there."""
    name = settings.topic(topic)
    assert await partitions_of(settings, name), f"no topic {name}"
    return await topics.read_to_end(settings, name, timeout_s=60)


async def rule_applied(pipeline: Pipeline, rule: dict[str, Any]) -> None:
    """Wait until the worker routes with ``rule`` (its rules version metric reached the rule's
    updated_at): a rule applies to events ingested after that, not to those sent the same instant."""
    url = f"http://127.0.0.1:{pipeline.settings.worker_metrics_port}/metrics"
    wanted = datetime.fromisoformat(rule["updated_at"]).timestamp()
    series = f'vdip_rules_version_seconds{{app_id="{rule["app_id"]}"}}'

    async def applied() -> bool:
        async with httpx.AsyncClient() as http:
            text = (await http.get(url)).text
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series)]
        return bool(values) and values[0] >= wanted - 1e-3

    await wait_until(applied, 30, message=f"rule {rule['rule_id']} applied by the worker")


# ------------------------------------------------------------------- a broker the tests may pause


@dataclass
class PrivateKafka:
    """Kafka nodes of this test run alone (the shared broker is never paused or killed), started
    by the stack's own code from its jars, on free ports, with their data in a folder of the run."""

    settings: Settings  # its stack_dir, ports and node count
    extra_properties: Callable[[stack.KafkaNode], dict[str, str]] | None = None  # more listeners, say

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap

    def pids(self) -> list[int]:
        return [pid for node in stack.kafka_nodes(self.settings) if (pid := stack.read_pid(node.paths.pid))]

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing is answered, as with a hung broker."""
        for pid in self.pids():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self.pids():
            os.kill(pid, signal.SIGCONT)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (ids from 1)."""
        node = stack.kafka_nodes(self.settings)[node_id - 1]
        pid = stack.read_pid(node.paths.pid)
        assert pid is not None, f"node {node_id} is not running"
        os.kill(pid, signal.SIGKILL)
        while stack.pid_alive(pid):
            time.sleep(0.05)

    def start(self) -> None:
        """Start the nodes that are not running, and wait until every one is a broker again."""
        stack.start_kafka(self.settings, stack.install_kafka(Settings()), self.extra_properties)

    def stop(self) -> None:
        self.resume()  # a stopped JVM cannot act on SIGTERM
        stack.stop_kafka(self.settings)


def _free_port_run(count: int) -> int:
    """The first of ``count`` consecutive free ports."""
    while True:
        base = random.randrange(20_000, 60_000)
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()


def start_private_kafka(
    root: Path,
    brokers: int = 1,
    extra_properties: Callable[[stack.KafkaNode], dict[str, str]] | None = None,
) -> PrivateKafka:
    """Start ``brokers`` Kafka nodes (each a broker and a controller) in ``root``, with
    ``extra_properties(node)`` in each node's server.properties."""
    base = _free_port_run(2 * brokers)
    own = Settings(
        stack_dir=root,
        kafka_brokers=brokers,
        kafka_bootstrap=",".join(f"127.0.0.1:{base + 2 * k}" for k in range(brokers)),
        kafka_controller_port=base + 1,
        kafka_heap="384m",
    )
    found = PrivateKafka(own, extra_properties)
    found.start()
    return found


@pytest.fixture(scope="session")
async def private_kafka(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[PrivateKafka]:
    """A second broker, with this run's topics, that tests may pause."""
    found = await asyncio.to_thread(start_private_kafka, tmp_path_factory.mktemp("private-kafka"))
    try:
        own = settings.model_copy(update={"kafka_bootstrap": found.bootstrap})
        await apply_topics(own, declared_topics(own, ROOT / "topics.yaml"))
        yield found
    finally:
        await asyncio.to_thread(found.stop)


@pytest.fixture(scope="session")
async def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PrivateKafka]:
    """A three-node KRaft cluster of this run (each node a broker and a controller voter)."""
    found = await asyncio.to_thread(start_private_kafka, tmp_path_factory.mktemp("cluster"), 3)
    try:
        yield found
    finally:
        await asyncio.to_thread(found.stop)


@asynccontextmanager
async def gateway_on(
    kafka: PrivateKafka,
    settings: Settings,
    log_dir: Path,
    label: str,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[str]:
    """A gateway of its own that produces to ``kafka`` (1 s produce timeout); yields its base URL."""
    own = settings.model_copy(update={"kafka_bootstrap": kafka.bootstrap, "produce_timeout_s": 1.0})
    async with another_gateway(own, log_dir, label, extra_env) as base_url:
        try:
            yield base_url
        finally:
            kafka.resume()  # a paused broker would hold the gateway's final flush


@asynccontextmanager
async def another_gateway(
    settings: Settings, log_dir: Path, label: str, extra_env: dict[str, str] | None = None
) -> AsyncIterator[str]:
    """A gateway process beside the pipeline's, on a free port, with ``extra_env`` on top of
    ``settings``: started and ready, its base URL yielded, stopped at the end."""
    own = settings.model_copy(update={"gateway_port": _free_port()})
    process = Process("gateway", own, log_dir, extra_env, label=label)
    try:
        yield await start_gateway(process)
    finally:
        process.stop()
