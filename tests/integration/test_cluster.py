"""A three-node KRaft cluster started by the stack's own code: every topic has three copies and
needs two in sync, and a broker killed under load loses no event the gateway acknowledged."""

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from schemas import EventEnvelope
from schemas.rules import AppRules, RoutingRule
from tests.conftest import (
    ROOT,
    AppKey,
    PrivateKafka,
    Process,
    _free_port,
    another_gateway,
    read_to_end,
    record_values,
    wait_until,
)
from vdip import stack
from vdip.kafka import client_options
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
        stored.update(item["event_id"] for item in record_values(record))
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


async def _coordinator(settings: Settings, group: str) -> int:
    """The node id of ``group``'s coordinator."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        node: int = await admin.find_coordinator(group)
        return node
    finally:
        await admin.close()


async def _in_sync_everywhere(settings: Settings) -> bool:
    copies = await _in_sync(settings.kafka_bootstrap, settings.topic("events"))
    return bool(copies) and set(copies) == {3}


async def test_a_queue_topic_first_used_while_a_broker_is_down_is_made_and_delivered_to(
    on_cluster: Settings, cluster: PrivateKafka, log_dir: Path
) -> None:
    """One broker of three killed, then an event whose queue topic does not exist yet: the worker's
    metadata may still name the dead broker (faust asks it for the controller), so Kafka's first
    answers may be refusals of the moment. The router tries again until the topic exists: the
    event is routed and delivered, never failed for it (counted refusals, if any, are in the log).
    The broker killed is not the coordinator of the worker's group: a worker whose coordinator
    dies is tested under load (tests/integration/test_faults.py: the single broker, or one of
    three, killed)."""
    run = uuid.uuid4().hex[:6]
    own = on_cluster.model_copy(
        update={
            "topic_prefix": f"{on_cluster.topic_prefix}q{run}.",
            "worker_id": f"{on_cluster.worker_id}-q{run}",
            "worker_metrics_port": _free_port(),
            "worker_datadir": log_dir / f"worker-q{run}",
        }
    )
    await apply_topics(own, declared_topics(own, ROOT / "topics.yaml"))
    app_id, now = f"q{run}", datetime.now(UTC)
    body = {
        "app_id": app_id,
        "rule_name": "all",
        "condition": {},
        "destination_type": "queue",
        "destination_config": {"topic": f"later-{run}"},
        "rule_id": 1,
        "created_at": now,
        "updated_at": now,
    }
    rules = AppRules(app_id=app_id, rules=[RoutingRule.model_validate(body)]).model_dump_json().encode()
    event = EventEnvelope(event_id=uuid.uuid4(), app_id=app_id, event_type="t", payload={}, received_at=now)
    producer = AIOKafkaProducer(bootstrap_servers=own.kafka_bootstrap, acks="all")
    await producer.start()
    worker = Process("worker", own, log_dir, label=f"worker-q{run}")
    routed: list[Any] = []
    try:
        await producer.send_and_wait(own.topic("routing-rules"), rules, key=app_id.encode())
        worker.start()

        async def rules_read() -> bool:  # the worker is up, in its group, with the rules
            try:
                async with httpx.AsyncClient() as http:
                    text = (await http.get(f"http://127.0.0.1:{own.worker_metrics_port}/metrics")).text
            except httpx.HTTPError:
                return False
            return f'vdip_rules_version_seconds{{app_id="{app_id}"}}' in text

        await wait_until(rules_read, 90, interval=1, message="the worker routing with the rules")
        coordinator = await _coordinator(own, own.worker_id)
        victim = next(n for n in (3, 2, 1) if n != coordinator)
        await asyncio.to_thread(cluster.kill, victim)
        event_json = event.model_dump_json().encode()
        await producer.send_and_wait(own.topic("events"), event_json, key=app_id.encode())

        async def routed_once() -> bool:
            routed[:] = await read_to_end(own, "events.routed")
            return bool(routed)

        try:
            await wait_until(routed_once, 90, interval=1, message="the event routed with a broker down")
        except AssertionError as exc:
            alive = "runs" if worker.alive() else "exited"
            raise AssertionError(
                f"{exc} (node {victim} killed); the worker {alive}:\n{worker.log_story()}"
            ) from None
    finally:
        worker.stop()
        await producer.stop()
        await asyncio.to_thread(cluster.start)
    (record,) = routed
    value = orjson.loads(record.value)
    assert (value["status"], value["routing"]["error"], value["routing"]["matched_rules"]) == (
        "processed",
        None,
        [1],
    )
    delivered = await read_to_end(own, f"later-{run}")
    assert [orjson.loads(r.value)["event"]["event_id"] for r in delivered] == [str(event.event_id)]
    await wait_until(
        lambda: _in_sync_everywhere(own), 90, interval=1, message="the restarted node back in sync"
    )
