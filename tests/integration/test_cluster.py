"""A three-node KRaft cluster started by the stack's own code: every topic has three copies and
needs two in sync, and a broker killed under load loses no event the gateway acknowledged."""

import asyncio
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.conftest import (
    ROOT,
    AppKey,
    PrivateKafka,
    another_gateway,
    read_to_end,
    wait_until,
)
from vdip import stack
from vdip.settings import Settings
from vdip.store.applications import create_application
from vdip.topics import apply_topics, declared_topics


@pytest.fixture
def cluster(kafka_cluster: PrivateKafka) -> PrivateKafka:
    return kafka_cluster


@pytest.fixture
def on_cluster(settings: Settings, cluster: PrivateKafka) -> Settings:
    """This run's settings, pointed at the cluster, with the cluster's copies."""
    return settings.model_copy(update={"kafka_bootstrap": cluster.bootstrap, "kafka_brokers": 3})


async def _in_sync(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(len(p["isr"]) for p in described["partitions"])


async def test_every_topic_has_three_copies_and_needs_two(on_cluster: Settings) -> None:
    assert await stack.kafka_brokers_up(on_cluster) == 3
    specs = declared_topics(on_cluster, ROOT / "topics.yaml")
    report = await apply_topics(on_cluster, specs)
    assert report.drift == [], report.drift
    admin = AIOKafkaAdminClient(bootstrap_servers=on_cluster.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([s.name for s in specs])
        replicas = {len(p["replicas"]) for topic in described for p in topic["partitions"]}
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, on_cluster.topic("events"))]
        )
    finally:
        await admin.close()
    assert replicas == {3}
    entries = {entry[0]: entry[1] for entry in response.resources[0][4]}
    assert entries["min.insync.replicas"] == "2"
    # Applying again finds everything as declared.
    again = await apply_topics(on_cluster, specs)
    assert (again.created, again.drift) == ([], [])


async def test_a_broker_killed_under_load_loses_no_acknowledged_event(
    on_cluster: Settings, cluster: PrivateKafka, pool: asyncpg.Pool, log_dir: Path
) -> None:
    await apply_topics(on_cluster, declared_topics(on_cluster, ROOT / "topics.yaml"))
    apps = []
    for _ in range(3):  # three keys: load on several partitions (and so, likely, brokers)
        app_id = f"app-{uuid.uuid4().hex[:12]}"
        created = await create_application(pool, app_id, app_id)
        assert created is not None
        apps.append(AppKey(app_id, created[1]))
    acknowledged: set[str] = set()
    answers: dict[int, int] = {}
    stop = asyncio.Event()

    async with another_gateway(on_cluster, log_dir, "cluster-gateway") as base_url:

        async def send(app: AppKey) -> None:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                while not stop.is_set():
                    ids = [str(uuid.uuid4()) for _ in range(20)]
                    body = {"events": [{"event_id": i, "event_type": "load", "payload": {}} for i in ids]}
                    try:
                        answer = await client.post(
                            f"/api/ingest/{app.app_id}/batch", json=body, headers=app.headers
                        )
                    except httpx.HTTPError:
                        continue
                    answers[answer.status_code] = answers.get(answer.status_code, 0) + 1
                    if answer.status_code == 202:
                        acknowledged.update(ids)

        senders = [asyncio.create_task(send(app)) for app in apps]
        await asyncio.sleep(4)
        before_kill = len(acknowledged)
        await asyncio.to_thread(cluster.kill, 1)
        killed_at = time.monotonic()

        # The two nodes left take the writes once Kafka has moved the dead node's partitions
        # (its broker session, 9 s by default, has to run out first).
        async def writing_again() -> bool:
            return len(acknowledged) >= before_kill + 200

        try:
            await wait_until(writing_again, 60, message="acknowledgements with one node of three down")
        finally:
            stop.set()
            await asyncio.gather(*senders)
    after_kill = len(acknowledged) - before_kill
    assert before_kill > 0 and after_kill > 0, (before_kill, after_kill, answers)

    records = await read_to_end(on_cluster, "events")
    stored: set[str] = set()
    for record in records:
        value = orjson.loads(record.value)
        stored.update(item["event_id"] for item in (value if isinstance(value, list) else [value]))
    lost = acknowledged - stored
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged events are not in Kafka ({answers})"

    # The killed node comes back and catches up: every partition has its three copies in sync.
    await asyncio.to_thread(cluster.start)
    await wait_until(
        lambda: _in_sync_everywhere(on_cluster), 90, interval=1, message="the restarted node back in sync"
    )
    print(
        f"cluster: {len(acknowledged)} events acknowledged ({after_kill} after node 1 was killed),"
        f" {len(stored)} in Kafka, answers {answers}; back in sync {time.monotonic() - killed_at:.0f} s after"
        " the kill"
    )


async def _in_sync_everywhere(settings: Settings) -> bool:
    copies = await _in_sync(settings.kafka_bootstrap, settings.topic("events"))
    return bool(copies) and set(copies) == {3}
