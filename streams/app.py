"""The faust application: its settings, its topics, the rules agent and the routing agent.

- ``rules`` agent: reads the compacted ``routing-rules`` topic (key app_id, value all of that
  app's rules) into memory, so a rule written through the API applies to the next events without
  a restart. At start, the router reads that topic to its end before routing anything, so the
  rules survive restarts without a faust table. (A table would be worse than redundant: while
  faust restores a changelog it already fetches, and it resumes the stream partitions before it
  seeks them to their committed offsets; records fetched in between were routed and then skipped
  past, losing events when the worker was killed and restarted.)
- ``router`` agent: consumes ``events`` raw and validates each record against the envelope. What
  is not an envelope, and any event whose routing raised, goes to ``events.dlq`` unchanged with
  the reason and origin in headers (an event whose routing raised is also stored, as ``failed``).
  Each valid event is matched against its application's rules;
  every match is sent to its destination's topic, and the event with its routing summary to
  ``events.routed``.

Processing is at-least-once: faust commits a record's offset after the agent finished with it and
after the producer flushed what the agent sent. Every effect downstream is keyed by ``event_id``
or ``delivery_id``, so a replay after a crash changes nothing.
"""

import asyncio
import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from pydantic import ValidationError

from schemas import EventStatus, RoutedEvent, RoutingSummary
from streams.routing import (
    CompiledRule,
    compile_rules,
    parse_app_rules,
    parse_envelope,
    rejection_reason,
    route,
)
from vdip import metrics, statistics
from vdip.db import create_pool
from vdip.logs import event_context
from vdip.settings import Settings
from vdip.topics import partitions_of

log = logging.getLogger(__name__)


class RuleCache:
    """Compiled rules per application, recompiled only when the table's value changes."""

    def __init__(self) -> None:
        self._compiled: dict[bytes, tuple[bytes | None, list[CompiledRule]]] = {}

    def get(self, app_id: bytes, value: bytes | None) -> list[CompiledRule]:
        cached = self._compiled.get(app_id)
        if cached is not None and cached[0] == value:
            return cached[1]
        compiled = compile_rules(parse_app_rules(value))
        self._compiled[app_id] = (value, compiled)
        return compiled


def create_app(settings: Settings) -> faust.App:
    app = faust.App(
        settings.worker_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        datadir=str(settings.worker_datadir),
        value_serializer="raw",
        key_serializer="raw",
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Re-read metadata every 30 s (not 5 min): a group that joined while the broker was still
        # loading its metadata after a restart, and so got no partitions, rebalances soon.
        consumer_metadata_max_age_ms=30_000,
        # A worker that died is out of the group after 10 s (faust's default: 60 s), so its
        # partitions move to a live worker, or to its own restart, without a minute's stall.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        topic_replication_factor=1,
        topic_partitions=3,  # queue topics created on first use
        web_enabled=False,
    )
    events = app.topic(settings.topic("events"), value_type=bytes, key_type=bytes)
    routed = app.topic(settings.topic("events.routed"), value_type=bytes, key_type=bytes)
    dlq = app.topic(settings.topic("events.dlq"), value_type=bytes, key_type=bytes)
    rule_updates = app.topic(settings.topic("routing-rules"), value_type=bytes, key_type=bytes)
    sink_topics = {
        "webhook": app.topic(settings.topic("deliveries.webhook"), value_type=bytes, key_type=bytes),
        "database_table": app.topic(settings.topic("deliveries.table"), value_type=bytes, key_type=bytes),
    }
    queues: dict[str, Any] = {}
    latest: dict[bytes, bytes] = {}  # rule sets read by the rules agent since this worker started
    cache = RuleCache()

    @app.agent(rule_updates, name="rules")
    async def rules(stream: Any) -> None:
        async for record in stream.events():
            if record.key is None:
                continue
            # A tombstone is kept as b"" (no rules), not popped: "absent" means "not seen yet".
            latest[record.key] = record.value or b""
            try:
                newest = max((r.updated_at for r in parse_app_rules(record.value or None)), default=None)
            except ValidationError:
                continue  # the router dead-letters the events of an app whose rules it cannot read
            metrics.RULES_VERSION.labels(record.key.decode(errors="replace")).set(
                newest.timestamp() if newest else 0
            )
            log.info("rules of %s updated", record.key.decode(errors="replace"))

    # Every rule set published before this worker started, read to the end of the compacted topic
    # before the first event is routed; what the rules agent reads afterwards takes precedence.
    snapshot: dict[bytes, bytes] = {}

    def rules_for(key: bytes) -> list[CompiledRule]:
        value = latest.get(key)
        return cache.get(key, snapshot.get(key) if value is None else value or None)

    async def queue_topic(name: str) -> Any:
        topic = queues.get(name)
        if topic is None:
            topic = app.topic(settings.topic(name), value_type=bytes, key_type=bytes)
            await topic.maybe_declare()  # created on first use, with the default partitions
            queues[name] = topic
        return topic

    async def dead_letter(record: Any, stage: str, reason: str) -> None:
        message = record.message
        log.warning("dead-lettering %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason)
        metrics.DEAD_LETTERS.labels(stage).inc()
        await dlq.send(
            key=record.key,
            value=record.value,
            headers=[
                ("error", reason[:1000].encode()),
                ("error.stage", stage.encode()),
                ("source.topic", message.topic.encode()),
                ("source.partition", str(message.partition).encode()),
                ("source.offset", str(message.offset).encode()),
            ],
        )

    @app.agent(events, name="router")
    async def router(stream: Any) -> None:
        snapshot.update(await read_compacted(settings.kafka_bootstrap, settings.topic("routing-rules")))
        async for record in stream.events():
            message = record.message
            end = app.consumer.highwater(message.tp)
            if end is not None:
                metrics.CONSUMER_LAG.labels(app.conf.id, message.topic, message.partition).set(
                    end - message.offset - 1
                )
            try:
                event = parse_envelope(record.value)
            except ValidationError as exc:
                await dead_letter(record, "validation", rejection_reason(exc))
                metrics.ROUTER_EVENTS.labels("invalid").inc()
                continue
            try:
                key = event.app_id.encode()
                result, deliveries = route(event, rules_for(key))
                for delivery in deliveries:
                    if delivery.destination_type == "queue":
                        topic = await queue_topic(delivery.destination_config["topic"])
                    else:
                        topic = sink_topics[delivery.destination_type]
                    await topic.send(key=key, value=delivery.model_dump_json().encode())
                await routed.send(key=key, value=result.model_dump_json().encode())
                metrics.ROUTER_EVENTS.labels("routed").inc()
                log.debug("routed to %d destination(s)", len(deliveries), extra=event_context(event))
                for delivery in deliveries:
                    metrics.RULE_MATCHES.labels(event.app_id, str(delivery.rule_id)).inc()
            except Exception as exc:  # never skip an event silently, never stop the worker
                log.exception("routing failed", extra=event_context(event))
                reason = f"{type(exc).__name__}: {exc}"
                await dead_letter(record, "routing", reason)
                failed = RoutedEvent(
                    event=event,
                    status=EventStatus.FAILED,
                    routing=RoutingSummary(error=reason[:1000], routed_at=datetime.now(UTC)),
                )
                await routed.send(key=key, value=failed.model_dump_json().encode())  # stored, as failed
                metrics.ROUTER_EVENTS.labels("failed").inc()

    pools: list[asyncpg.Pool] = []

    retention_applied = [-math.inf]

    @app.timer(interval=settings.statistics_interval_s)  # type: ignore[untyped-decorator]
    async def fold_statistics() -> None:
        """Fold the changes counted since the last tick into event_statistics; apply the live
        retention at the first tick and hourly (see vdip/statistics.py)."""
        try:
            if not pools:
                pools.append(await create_pool(settings.database_url, min_size=1, max_size=1))
            if time.monotonic() - retention_applied[0] > 3600:
                await statistics.set_live_retention(pools[0], settings.statistics_live_retention_days)
                retention_applied[0] = time.monotonic()
            await statistics.fold(pools[0])
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("folding statistics failed, next tick retries: %r", exc)

    return app


async def read_compacted(bootstrap: str, topic: str) -> dict[bytes, bytes]:
    """The latest value of every key of ``topic``, read from its start to its current end."""
    partitions = await partitions_of(bootstrap, topic)
    latest: dict[bytes, bytes] = {}
    if not partitions:
        return latest
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in partitions])

        while await behind():
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if record.key is not None:
                        latest[record.key] = record.value or b""
    finally:
        await consumer.stop()
    return latest


async def commit_start_offsets(bootstrap: str, group: str, topics: list[str]) -> dict[TopicPartition, int]:
    """Commit, in ``group``, the start of every partition of ``topics`` that has no committed offset.

    faust resumes a newly assigned partition before it seeks it to its committed offset; where
    there is none, records fetched in between are routed and the partition then goes on from
    wherever the fetcher was, past records never routed, whose offsets faust later commits (a
    worker killed before its first commit lost events this way). With a committed offset, the
    seek lands where the fetch began: at worst records are routed twice. Done before the worker
    joins its group; a group that already has members committed its offsets itself.
    """
    partitions = await partitions_of(bootstrap, *topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        missing = [tp for tp in partitions if await consumer.committed(tp) is None]
        if not missing:
            return {}
        starts: dict[TopicPartition, int] = await consumer.beginning_offsets(missing)
        consumer.assign(missing)
        try:
            await consumer.commit(starts)
        except KafkaError as exc:  # the group has members: they commit for themselves
            log.warning("could not commit start offsets for %s: %r", group, exc)
            return {}
        log.info("committed start offsets for %s: %s", group, starts)
        return starts
    finally:
        await consumer.stop()


async def prepare_group(settings: Settings) -> None:
    """Commit start offsets for the worker's group, waiting for the broker if it is not up yet."""
    sources = [settings.topic("events"), settings.topic("routing-rules")]
    while True:
        try:
            await commit_start_offsets(settings.kafka_bootstrap, settings.worker_id, sources)
            return
        except (KafkaConnectionError, KafkaTimeoutError) as exc:
            log.warning("Kafka unavailable (%r); retrying in 2 s", exc)
            await asyncio.sleep(2)


def run(settings: Settings, logging_config: dict[str, Any]) -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the worker below runs on it
    loop.run_until_complete(prepare_group(settings))
    metrics.serve(settings.worker_metrics_port, settings.metrics_host)
    app = create_app(settings)
    level = logging_config["root"]["level"]
    worker = faust.Worker(app, loglevel=level, logging_config=logging_config, redirect_stdouts=False)
    worker.execute_from_commandline()
