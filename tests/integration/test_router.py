"""The router's promises: rules never missing (restarts, a joining worker, a long rules topic, a
rule written just before an event), and outputs acknowledged before offsets are committed."""

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from schemas.rules import AppRules, RoutingRule
from streams.routing import delivery_id
from streams.rulebook import RuleBook
from tests.conftest import (
    AppKey,
    Pipeline,
    Process,
    _free_port,
    consume_all,
    read_to_end,
    rule_applied,
    wait_until,
)
from tests.integration.test_rules import create, queue_event_ids, send
from vdip.settings import Settings


async def routed_rows(pool: asyncpg.Pool, event_ids: list[str], timeout: float = 60) -> list[Any]:
    """The stored rows of ``event_ids``, once all are stored."""
    ids = [uuid.UUID(e) for e in event_ids]
    query = "SELECT event_id, routing FROM data_events WHERE event_id = ANY($1::uuid[])"

    async def all_stored() -> bool:
        return len(await pool.fetch(query, ids)) == len(ids)

    await wait_until(all_stored, timeout, message=f"{len(ids)} events stored")
    return list(await pool.fetch(query, ids))


async def assert_routed_with_the_rule(
    pipeline: Pipeline, pool: asyncpg.Pool, rule: dict[str, Any], event_ids: list[str]
) -> None:
    rows = await routed_rows(pool, event_ids)
    assert {(r["routing"]["rules_evaluated"], tuple(r["routing"]["matched_rules"])) for r in rows} == {
        (1, (rule["rule_id"],))
    }, "every event was routed with its application's rule"
    topic = rule["destination_config"]["topic"]
    assert set(await queue_event_ids(pipeline, topic, set(event_ids))) >= set(event_ids)


async def test_rules_are_there_after_kill_and_after_graceful_restart(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    rule = await create(client, app, condition={})
    first = [await send(client, app, n) for n in range(5)]
    await assert_routed_with_the_rule(pipeline, pool, rule, first)
    for restart in (pipeline.worker.kill, pipeline.worker.stop, pipeline.worker.kill):
        await asyncio.sleep(4)  # the worker has committed all it read (faust commits every 2.8 s)
        restart()  # SIGKILL, or SIGTERM (the worker leaves its group and commits)
        pipeline.worker.start()
        # Sent at once: the restarted worker routes them first thing, before anything else.
        after = [await send(client, app, n) for n in range(5)]
        await assert_routed_with_the_rule(pipeline, pool, rule, after)


async def test_a_rule_applies_to_every_event_accepted_after_it_was_written(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    for _ in range(5):
        rule = await create(client, app, condition={}, event_type_filter=f"t{uuid.uuid4().hex[:6]}")
        # No pause: the event is accepted right after the write was answered.
        event_id = await send(client, app, 1, event_type=rule["event_type_filter"])
        await assert_routed_with_the_rule(pipeline, pool, rule, [event_id])


async def test_a_joining_worker_takes_partitions_over_with_the_rules(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool, log_dir: Any
) -> None:
    rule = await create(client, app, condition={})
    port = _free_port()
    second = Process(
        "worker", pipeline.settings, log_dir, {"VDIP_WORKER_METRICS_PORT": str(port)}, label="worker-2"
    )
    second.start()
    try:
        await asyncio.sleep(8)  # it joins the group: partitions are shared out again
        pipeline.worker.kill()  # and the second one takes over every partition
        sent = [await send(client, app, n) for n in range(12)]
        await assert_routed_with_the_rule(pipeline, pool, rule, sent)
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        routed = [
            line
            for line in text.splitlines()
            if line.startswith('vdip_router_events_total{outcome="routed"}')
        ]
        assert routed and float(routed[0].rsplit(" ", 1)[1]) > 0, "the joining worker routed events"
    finally:
        pipeline.worker.start()
        await asyncio.sleep(5)
        second.stop()


async def test_the_rule_book_reads_thousands_of_records_over_several_segments(settings: Settings) -> None:
    topic = settings.topic(f"rules-{uuid.uuid4().hex[:8]}")
    segment = 1_048_576  # the smallest segment Kafka 4 allows
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    await admin.create_topics(
        [NewTopic(topic, 3, 1, topic_configs={"cleanup.policy": "compact", "segment.bytes": str(segment)})]
    )
    await admin.close()
    now = datetime.now(UTC)

    def rules(app_id: str, version: int) -> bytes:
        body = {
            "app_id": app_id,
            "rule_name": f"v{version}",
            "condition": {"note": "x" * 900},  # about 1.2 KB a record
            "destination_type": "queue",
            "destination_config": {"topic": f"q{version}"},
            "rule_id": version,
            "created_at": now,
            "updated_at": now,
        }
        return AppRules(app_id=app_id, rules=[RoutingRule.model_validate(body)]).model_dump_json().encode()

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    await producer.start()
    apps = [f"app-{n}" for n in range(300)]
    written = 0
    for version in range(10):  # 3,000 records, about 3.6 MB: several segments per partition... in all
        futures = [await producer.send(topic, rules(a, version), key=a.encode()) for a in apps]
        await asyncio.gather(*futures)
        written += len(futures)
    await producer.send_and_wait(topic, None, key=b"app-0")  # app-0 has no rules left
    assert written * 1200 > 3 * segment

    for _ in range(10):  # reading to the end does not depend on a race with the offset reset
        book = RuleBook(settings, topic)
        await book.start()
        await book.stop()
        assert book.rules_for("app-1")[0].rule.rule_id == 9
    book = RuleBook(settings, topic)
    await book.start()
    try:
        assert book.rules_for("app-0") == []
        for app_id in apps[1:]:
            (found,) = book.rules_for(app_id)
            assert found.rule.rule_id == 9, app_id  # the newest of ten versions
        await producer.send_and_wait(topic, rules("app-1", 10), key=b"app-1")
        await book.catch_up()  # what was published before the call is read by its end
        assert book.rules_for("app-1")[0].rule.rule_id == 10
    finally:
        await book.stop()
        await producer.stop()


async def test_a_refused_output_is_sent_again_and_its_input_is_not_committed(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool, settings: Settings
) -> None:
    # A queue topic that refuses records over 1,000 bytes: an event with a larger payload
    # cannot be delivered there until the limit is raised.
    name = f"small-{uuid.uuid4().hex[:8]}"
    topic = settings.topic(name)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "1000"})])
    rule = await create(client, app, condition={"big": True}, destination_config={"topic": name})
    try:
        response = await client.post(
            f"/api/ingest/{app.app_id}",
            json={"event_type": "order", "payload": {"big": True, "blob": "x" * 2000}},
            headers=app.headers,
        )
        assert response.status_code == 202
        big = response.json()["data"]["event_id"]
        source, offset = await record_of(settings, big)

        await asyncio.sleep(8)  # faust commits every 2.8 s: it would have committed by now
        offsets = await admin.list_consumer_group_offsets(settings.worker_id)
        committed = offsets.get(source)
        assert committed is None or committed.offset <= offset, "no offset past the input"
        assert not await pool.fetchval("SELECT 1 FROM data_events WHERE event_id = $1", uuid.UUID(big))
        failures = await metric(settings.worker_metrics_port, "vdip_router_send_failures_total")
        assert failures > 0, "the refusal was counted"
    finally:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": "1048588"})]
        )
    # Once the topic takes it, the delivery is made, then the event stored, then committed.
    await assert_routed_with_the_rule(pipeline, pool, rule, [big])

    async def committed_past() -> bool:
        offsets = await admin.list_consumer_group_offsets(settings.worker_id)
        found = offsets.get(source)
        return found is not None and found.offset > offset

    await wait_until(committed_past, 30, message="the input committed once its outputs were acknowledged")
    await admin.close()


async def test_outputs_batched_beyond_a_topics_record_limit_are_sent_again_alone(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, settings: Settings
) -> None:
    """The router's producer batches records to one partition (512 KiB): a hundred deliveries of
    800 bytes exceed a topic that takes records (batches) of 16 KiB, though each fits alone."""
    name = f"batched-{uuid.uuid4().hex[:8]}"
    topic = settings.topic(name)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "16384"})])
    finally:
        await admin.close()
    await create(client, app, condition={"fill": {"$exists": True}}, destination_config={"topic": name})
    failures = await metric(settings.worker_metrics_port, "vdip_router_send_failures_total")
    events = [{"event_type": "order", "payload": {"fill": "x" * 400, "n": n}} for n in range(100)]
    response = await client.post(
        f"/api/ingest/{app.app_id}/batch", json={"events": events}, headers=app.headers
    )
    assert response.status_code == 202, response.text
    sent = {item["event_id"] for item in response.json()["data"]["results"]}
    delivered = await queue_event_ids(pipeline, name, sent)
    assert sorted(delivered) == sorted(sent)  # each once
    assert await metric(settings.worker_metrics_port, "vdip_router_send_failures_total") == failures


async def record_of(settings: Settings, event_id: str) -> tuple[TopicPartition, int]:
    """Where an event is in ``events``: its partition and offset."""

    def found(records: list[Any]) -> list[Any]:
        return [r for r in records if event_id.encode() in r.value]

    (record,) = found(await consume_all(settings, "events", until=lambda rs: bool(found(rs))))
    return TopicPartition(record.topic, record.partition), record.offset


async def metric(port: int, name: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else 0.0


async def test_a_batch_replayed_after_its_claim_routes_the_first_version_with_the_same_ids(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    app: AppKey,
    pool: asyncpg.Pool,
    settings: Settings,
    producer: AIOKafkaProducer,
) -> None:
    """X(v1) is claimed, but its delivery is held (a queue topic that refuses it); the worker is
    killed (SIGKILL) before any output; the topic is fixed and the worker restarted; then X(v2)
    comes. v1 is delivered with its delivery id and stored, v2 is only dead-lettered."""
    name = f"held-{uuid.uuid4().hex[:8]}"
    topic = settings.topic(name)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "1000"})])
        rule = await create(client, app, condition={"big": True}, destination_config={"topic": name})
        await rule_applied(pipeline, rule)
        x = uuid.uuid4()
        now = datetime.now(UTC).isoformat()
        v1, v2 = (
            {
                "event_id": str(x),
                "app_id": app.app_id,
                "event_type": "order",
                "payload": {"big": True, "blob": blob * 2000},
                "received_at": now,
            }
            for blob in "ab"
        )
        events, key = settings.topic("events"), app.app_id.encode()
        await producer.send_and_wait(events, orjson.dumps(v1), key=key)

        async def claimed_and_held() -> bool:
            claim = await pool.fetchval("SELECT 1 FROM event_claims WHERE event_id = $1", x)
            failures = await metric(settings.worker_metrics_port, "vdip_router_send_failures_total")
            return bool(claim) and failures > 0

        await wait_until(claimed_and_held, 30, message="v1 claimed and its delivery held")
        pipeline.worker.kill()
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": "1048588"})]
        )
    finally:
        await admin.close()
    pipeline.worker.start()
    await producer.send_and_wait(events, orjson.dumps(v2), key=key)

    def of_x(records: list[Any]) -> list[Any]:
        return [r for r in records if str(x).encode() in r.value]

    (dead,) = of_x(await consume_all(settings, "events.dlq", until=lambda rs: bool(of_x(rs)), timeout=90))
    assert dict(dead.headers)["error.stage"] == b"conflict"
    assert orjson.loads(dead.value)["payload"]["blob"][0] == "b"
    queued = [orjson.loads(r.value) for r in of_x(await read_to_end(settings, name))]
    assert queued, "v1 was delivered"
    assert {(q["delivery_id"], q["event"]["payload"]["blob"][0]) for q in queued} == {
        (str(delivery_id(x, rule["rule_id"])), "a")
    }
    (row,) = await routed_rows(pool, [str(x)])
    assert row["routing"]["matched_rules"] == [rule["rule_id"]]
    assert (
        await pool.fetchval("SELECT payload->>'blob' FROM data_events WHERE event_id = $1", x) == "a" * 2000
    )
