"""topics.yaml: loading, and applying it to the real broker."""

import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.conftest import ROOT, Services, consumed
from vdip.errors import TopicError
from vdip.settings import Settings
from vdip.topics import DeadLetterReason, apply_topics, dead_letter_headers, declared_topics, load_topics


def test_project_topics_file_declares_the_spine() -> None:
    specs = {s.name: s for s in load_topics(ROOT / "topics.yaml")}
    assert {"events", "events.routed", "events.dlq"} <= set(specs)
    assert specs["events"].config["cleanup.policy"] == "delete"
    assert all(s.replication_factor == 1 for s in specs.values())
    assert all(s.config["min.insync.replicas"] == "1" for s in specs.values())


def test_copies_come_from_the_deployment_never_from_the_file(tmp_path: Path) -> None:
    cluster = Settings(kafka_brokers=3, topics_file=ROOT / "topics.yaml", topic_prefix="x.")
    specs = declared_topics(cluster)
    assert {(s.replication_factor, s.config["min.insync.replicas"]) for s in specs} == {(3, "2")}
    assert all(s.name.startswith("x.") for s in specs)
    for text in (
        "defaults: {replication_factor: 3}\ntopics:\n  - name: a\n",
        "topics:\n  - name: a\n    replication_factor: 3\n",
        "topics:\n  - name: a\n    config: {min.insync.replicas: 2}\n",
    ):
        path = tmp_path / "topics.yaml"
        path.write_text(text)
        with pytest.raises(TopicError, match="VDIP_TOPIC_"):
            load_topics(path)


def test_defaults_fill_in_and_prefix_applies(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text(
        "defaults: {partitions: 4, config: {retention.ms: 1000}}\n"
        "topics:\n  - name: a\n  - name: b\n    partitions: 2\n    config: {cleanup.policy: compact}\n"
    )
    a, b = load_topics(path, prefix="p.")
    assert (a.name, a.partitions, a.config) == (
        "p.a",
        4,
        {"retention.ms": "1000", "min.insync.replicas": "1"},
    )
    assert (b.name, b.partitions) == ("p.b", 2)
    assert b.config == {"retention.ms": "1000", "cleanup.policy": "compact", "min.insync.replicas": "1"}


@pytest.mark.parametrize(
    "text",
    [
        "topics: nope",
        "topics:\n  - name: a\n  - name: a\n",
        "topics:\n  - name: 'bad name'\n",
        "topics:\n  - name: a\n    partitions: 0\n",
        "topics:\n  - name: a\n    colour: red\n",
        ": : :",
    ],
)
def test_invalid_files_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text(text)
    with pytest.raises(TopicError):
        load_topics(path)


async def test_apply_creates_missing_and_reports_drift(services: Services, tmp_path: Path) -> None:
    prefix = f"topics-{uuid.uuid4().hex[:8]}."
    admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    await admin.start()
    try:
        # Someone created `narrow` by hand with 1 partition and another retention.
        await admin.create_topics([NewTopic(f"{prefix}narrow", 1, 1, topic_configs={"retention.ms": "5000"})])
        path = tmp_path / "topics.yaml"
        path.write_text(
            "defaults: {partitions: 2, config: {retention.ms: 60000}}\n"
            "topics:\n  - name: fresh\n  - name: narrow\n"
        )
        specs = load_topics(path, prefix)
        report = await apply_topics(Settings(kafka_bootstrap=services.kafka_bootstrap), specs)
        assert report.created == [f"{prefix}fresh"]
        assert len(report.drift) == 1
        assert "1 partitions, declared 2" in report.drift[0]
        assert "retention.ms=5000, declared 60000" in report.drift[0]

        again = await apply_topics(Settings(kafka_bootstrap=services.kafka_bootstrap), specs)
        assert again.created == []
        assert again.unchanged == [f"{prefix}fresh"]
        described = await admin.describe_topics([f"{prefix}fresh"])
        assert len(described[0]["partitions"]) == 2
    finally:
        await admin.delete_topics([t for t in await admin.list_topics() if t.startswith(prefix)])
        await admin.close()


async def test_worker_group_gets_start_offsets_where_it_has_none(services: Services) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from streams.app import commit_start_offsets

    topic, group = f"offsets-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    on_services = Settings(kafka_bootstrap=services.kafka_bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1, topic_configs={"retention.ms": "600000"})])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap)
    await producer.start()
    try:
        for _ in range(5):
            await producer.send_and_wait(topic, b"x", partition=0)
        await producer.send_and_wait(topic, b"x", partition=1)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=services.kafka_bootstrap, group_id=group)
    await consumer.start()
    try:
        p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        consumer.assign([p0])
        await consumer.commit({p0: 3})  # p0 was read up to 3; p1 never
        assert await commit_start_offsets(on_services, group, [topic]) == {p1: 0}
        assert (await consumer.committed(p0), await consumer.committed(p1)) == (3, 0)
        assert await commit_start_offsets(on_services, group, [topic]) == {}
        # A new group (the bulk worker's) starts where an earlier one (the worker's) left off.
        later = f"{group}.bulk"
        assert await commit_start_offsets(on_services, later, [topic], group) == {p0: 3, p1: 0}
        assert await commit_start_offsets(on_services, f"{later}2", [topic], "nobody") == {p0: 0, p1: 0}
    finally:
        await consumer.stop()


def test_dead_letter_headers_read_back() -> None:
    """One module writes and reads a dead letter's headers: what is written is read back."""
    origin = consumed("test.events", b"{}", offset=41)
    reason = DeadLetterReason.of(dead_letter_headers("x" * 1200, "routing", origin, index=3))
    assert reason == DeadLetterReason("x" * 1000, "routing", "test.events[0]@41", "3")
    assert DeadLetterReason.of(dead_letter_headers("bad", "validation", origin)).index is None
    assert DeadLetterReason.of(None) == DeadLetterReason(None, None, None, None)
