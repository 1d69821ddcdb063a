"""Topics as code: load ``topics.yaml`` and make the broker match it; and what every process does
with topics the same way: read one to its end, and write and read the headers of a dead letter.

``apply`` creates the topics that are missing and reports drift (fewer or more partitions than
declared, another replication factor, a config value that differs) instead of ignoring it.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidConfigurationError,
    InvalidPartitionsError,
    InvalidTopicError,
    PolicyViolationError,
    TopicAuthorizationFailedError,
)
from aiokafka.protocol.metadata import MetadataRequest
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from vdip.errors import TopicError
from vdip.kafka import client_options, plain_consumer
from vdip.settings import Settings


def _config_value(value: Any) -> str:
    """Kafka wants strings; YAML gives numbers and booleans too."""
    return str(value).lower() if isinstance(value, bool) else str(value)


_CREATED_VISIBLE_WITHIN = 30.0

# What Kafka answers when it will never create a queue topic, whatever the moment: its name (one
# that collides with an existing topic's once '.' and '_' are equated), the rights or the policy.
# The router fails the event (stored as failed, dead-lettered: stage routing, to be sent back
# once the cause is fixed) and routes on; a replay fails. Any other refusal is of the moment.
REFUSED_FOR_GOOD: tuple[type[Exception], ...] = (
    InvalidTopicError,
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    PolicyViolationError,
    InvalidConfigurationError,
    InvalidPartitionsError,
)


TopicConfig = dict[str, Annotated[str, BeforeValidator(_config_value)]]


class TopicSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,200}$")
    description: str = ""
    partitions: int = Field(ge=1)
    replication_factor: int = Field(default=1, ge=1)
    config: TopicConfig = Field(default_factory=dict)


class _Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    partitions: int = 3
    config: TopicConfig = Field(default_factory=dict)


# How many copies a topic has depends on the cluster, not on the topic: it comes from settings.
_FROM_SETTINGS = {
    "replication_factor": "VDIP_TOPIC_REPLICATION_FACTOR",
    "min.insync.replicas": "VDIP_TOPIC_MIN_INSYNC_REPLICAS",
}


def declared_topics(settings: Settings, path: Path | None = None) -> list[TopicSpec]:
    """The system's topics (``settings.topics_file``, or ``path``) as this deployment wants them:
    its topic prefix, replication factor and ``min.insync.replicas``."""
    return load_topics(
        path or settings.topics_file,
        settings.topic_prefix,
        replication_factor=settings.replication_factor,
        min_insync_replicas=settings.min_insync_replicas,
    )


def load_topics(
    path: Path, prefix: str = "", *, replication_factor: int = 1, min_insync_replicas: int = 1
) -> list[TopicSpec]:
    """Read topics.yaml; defaults fill what a topic leaves out; names get ``prefix``; every topic
    gets ``replication_factor`` copies and ``min.insync.replicas`` (which the file may not set)."""
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TopicError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("topics"), list):
        raise TopicError(f"{path}: expected a mapping with a 'topics' list")
    _refuse_replication(path, raw.get("defaults") or {})
    try:
        defaults = _Defaults.model_validate(raw.get("defaults") or {})
        specs = []
        for item in raw["topics"]:
            if not isinstance(item, dict):
                raise TopicError(f"{path}: each topic must be a mapping, got {item!r}")
            _refuse_replication(path, item)
            spec = TopicSpec.model_validate({**defaults.model_dump(exclude={"config"}), **item})
            spec.replication_factor = replication_factor
            spec.config = {
                **defaults.config,
                **spec.config,
                "min.insync.replicas": str(min_insync_replicas),
            }
            spec.name = prefix + spec.name
            specs.append(spec)
    except ValidationError as exc:
        raise TopicError(f"{path}: {exc}") from exc
    names = [s.name for s in specs]
    if len(names) != len(set(names)):
        raise TopicError(f"{path}: a topic is declared twice")
    return specs


def _refuse_replication(path: Path, item: dict[str, Any]) -> None:
    config = item.get("config")
    for key, variable in _FROM_SETTINGS.items():
        if key in item or (isinstance(config, dict) and key in config):
            raise TopicError(f"{path}: {key} is not set per topic but for the deployment, by {variable}")


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)


async def apply_topics(settings: Settings, specs: list[TopicSpec]) -> ApplyReport:
    report = ApplyReport()
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.config)
                    for s in missing
                ]
            )
            report.created.extend(s.name for s in missing)
            await _until_described(admin, missing)
        present = [s for s in specs if s.name in existing]
        if present:
            await _check_drift(admin, present, report)
    finally:
        await admin.close()
    return report


async def _until_described(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> None:
    """Return once every broker describes the new topics with a leader for every partition.

    A broker answers CreateTopics before the new topics reach every broker's metadata cache, and
    a metadata request goes to any broker: a describe (or a produce) right after could find a
    topic without partitions. aiokafka's admin client has no per-broker describe, hence the
    request sent to each broker by id.
    """
    deadline = asyncio.get_running_loop().time() + _CREATED_VISIBLE_WITHIN
    wanted = {s.name: s.partitions for s in specs}
    brokers = [b.nodeId for b in admin._client.cluster.brokers()]
    while True:
        missing: set[str] = set()
        for node_id in brokers:
            response = await admin._send_request(MetadataRequest(list(wanted)), node_id)
            topics = {t["topic"]: t for t in response.to_object()["topics"]}
            for name, partitions in wanted.items():
                topic = topics.get(name)
                if not (
                    topic
                    and topic["error_code"] == 0
                    and len(topic["partitions"]) == partitions
                    and all(p["leader"] >= 0 for p in topic["partitions"])
                ):
                    missing.add(name)
        if not missing:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TopicError(
                f"created topics not described by every broker after "
                f"{_CREATED_VISIBLE_WITHIN:.0f} s: " + ", ".join(sorted(missing))
            )
        await asyncio.sleep(0.2)


async def _check_drift(admin: AIOKafkaAdminClient, specs: list[TopicSpec], report: ApplyReport) -> None:
    described = {t["topic"]: t for t in await admin.describe_topics([s.name for s in specs])}
    configs: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs]
    ):
        for resource in response.resources:
            # (error_code, error_message, resource_type, resource_name, config_entries)
            name, entries = resource[3], resource[4]
            configs[name] = {entry[0]: entry[1] for entry in entries}
    for spec in specs:
        problems = []
        partitions = described[spec.name]["partitions"]
        if len(partitions) != spec.partitions:
            problems.append(f"{len(partitions)} partitions, declared {spec.partitions}")
        replicas = min((len(p["replicas"]) for p in partitions), default=0)
        if replicas != spec.replication_factor:
            problems.append(f"replication factor {replicas}, declared {spec.replication_factor}")
        actual = configs.get(spec.name, {})
        for key, value in sorted(spec.config.items()):
            if actual.get(key) != value:
                problems.append(f"{key}={actual.get(key)}, declared {value}")
        if problems:
            report.drift.append(f"{spec.name}: " + "; ".join(problems))
        else:
            report.unchanged.append(spec.name)


async def partitions_of(settings: Settings, *topics: str) -> list[TopicPartition]:
    """Every partition of ``topics`` (none for a topic that does not exist)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]


async def end_offsets(settings: Settings, *topics: str) -> dict[TopicPartition, int]:
    """Where each partition of ``topics`` ends now."""
    partitions = await partitions_of(settings, *topics)
    async with plain_consumer(settings) as consumer:
        ends = await consumer.end_offsets(partitions)
    return {tp: int(end) for tp, end in ends.items()}


async def caught_up(settings: Settings, group: str, marks: dict[TopicPartition, int]) -> bool:
    """Whether ``group`` has committed every partition of ``marks`` up to its mark at least."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group, partitions=list(marks))
    finally:
        await admin.close()
    at = {tp: meta.offset for tp, meta in committed.items() if meta is not None}
    return all(at.get(tp, -1) >= mark for tp, mark in marks.items() if mark > 0)


async def delete_topics(settings: Settings, names: list[str]) -> None:
    """Delete these topics (those that do not exist are no error)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [name for name in names if name in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


def consumers(settings: Settings) -> dict[str, list[tuple[str, str]]]:
    """Each process's (consumer group, topic it reads, short name), in the pipeline's order: the
    workers, then the sinks."""
    return {
        "worker": [(settings.worker_id, "events")],
        "bulk-worker": [(settings.bulk_worker_id, "events.bulk")],
        "sink": [
            (settings.sink_group_id, "events.routed"),
            (f"{settings.sink_group_id}.bulk", "events.routed.bulk"),
        ],
        "table-sink": [(settings.table_sink_group_id, "deliveries.table")],
        "webhooks": [(settings.webhook_group_id, "deliveries.webhook")],
    }


async def consumer_lags(settings: Settings, timeout_s: float = 10) -> list[tuple[str, str, str, int | None]]:
    """(process, group, topic, lag) of each of ``consumers``; lag None when Kafka gave no figure
    (down, the topic missing, nothing committed yet) within ``timeout_s``."""

    async def lag(group: str, topic: str) -> int | None:
        try:
            return await asyncio.wait_for(group_lag(settings, group, settings.topic(topic)), timeout_s)
        except Exception:  # no figure, whatever the reason: the caller shows none
            return None

    pairs = [(name, group, topic) for name, each in consumers(settings).items() for group, topic in each]
    found = await asyncio.gather(*(lag(group, topic) for _, group, topic in pairs))
    return [(*pair, value) for pair, value in zip(pairs, found, strict=True)]


async def group_lag(settings: Settings, group: str, topic: str) -> int | None:
    """How many records of ``topic`` the consumer group has not committed yet (None: the group
    has committed nothing there, or Kafka did not answer)."""
    partitions = await partitions_of(settings, topic)
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
    finally:
        await admin.close()
    ends = await end_offsets(settings, topic)
    done: dict[TopicPartition, int] = {
        tp: meta.offset for tp, meta in committed.items() if meta is not None and meta.offset >= 0
    }
    if not done:
        return None
    return sum(int(end) - done.get(tp, 0) for tp, end in ends.items())


async def read_to_end(
    settings: Settings, topic: str, *, last: int | None = None, timeout_s: float | None = None
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` (its full name) below the end offsets Kafka reports at the call,
    partition by partition in offset order: what was acknowledged before the call is all there,
    with no guess at how long to wait for it. ``last``: only each partition's last ``last``
    records. Nothing for a topic that does not exist; ``TimeoutError`` when not read within
    ``timeout_s`` (None: no limit)."""
    partitions = await partitions_of(settings, topic)
    if not partitions:
        return []
    records: list[ConsumerRecord[bytes, bytes]] = []
    async with plain_consumer(settings) as consumer:
        consumer.assign(partitions)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        starts: dict[TopicPartition, int] = await consumer.beginning_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, starts[tp] if last is None else max(starts[tp], ends[tp] - last))
        deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
        left = [tp for tp in partitions if await consumer.position(tp) < ends[tp]]
        while left:
            if deadline is not None and asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{topic} not read to its end within {timeout_s} s")
            for tp, found in (await consumer.getmany(*left, timeout_ms=500)).items():
                records.extend(r for r in found if r.offset < ends[tp])
            left = [tp for tp in left if await consumer.position(tp) < ends[tp]]
    return records


# ------------------------------------------------------------------------------ dead letters
# A record of ``events.dlq`` is the consumed record unchanged (or one value of a batch record),
# with why and where from in its headers. Written by the router and by every sink
# (``dead_letter_headers``), read by the dashboard's dead-letters API (``DeadLetterReason.of``).


def dead_letter_headers(
    reason: str, stage: str, origin: Any, index: int | None = None
) -> list[tuple[str, bytes]]:
    """The headers of a record of ``events.dlq``: why (``error``, ``error.stage``) and where it
    came from (``origin``: the consumed record, with ``topic``, ``partition`` and ``offset``;
    ``index``: the value's position when it was one value of a batch record)."""
    headers = [
        ("error", reason[:1000].encode()),
        ("error.stage", stage.encode()),
        ("source.topic", origin.topic.encode()),
        ("source.partition", str(origin.partition).encode()),
        ("source.offset", str(origin.offset).encode()),
    ]
    if index is not None:
        headers.append(("source.index", str(index).encode()))
    return headers


@dataclass(frozen=True)
class DeadLetterReason:
    """What ``dead_letter_headers`` wrote, read back (None: a header the record lacks)."""

    error: str | None
    stage: str | None
    source: str | None  # the consumed record: "topic[partition]@offset"
    index: str | None  # its value's position in a batch record

    @classmethod
    def of(cls, headers: Sequence[tuple[str, bytes]] | None) -> "DeadLetterReason":
        found = {name: value.decode(errors="replace") for name, value in headers or ()}
        source = found.get("source.topic")
        if source is not None:
            source = f"{source}[{found.get('source.partition')}]@{found.get('source.offset')}"
        return cls(found.get("error"), found.get("error.stage"), source, found.get("source.index"))
