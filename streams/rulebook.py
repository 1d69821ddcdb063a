"""The rule book: every application's newest published rule set, compiled, read from Kafka.

The compacted ``routing-rules`` topic holds each application's whole rule set (key app_id; a
tombstone when it has none). The rule book reads it with a consumer of its own, outside any
group: from the start of every partition when the worker starts, then onwards.

It fails closed. ``catch_up`` reads every partition up to the end offsets Kafka reports at the
moment it is called, and the router calls it before routing each batch. A rule write is
acknowledged by Kafka before the API answers, so every rule set published before an event was
accepted is below those end offsets: no event is routed with fewer rules than its application had
when the event was accepted. While Kafka cannot say where the end is, the router waits (and says
so in its log and in ``vdip_router_waiting_for_rules``) rather than route with what it has.
"""

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from schemas import EventEnvelope
from streams.routing import (
    CompiledRule,
    Suppressed,
    compile_rules,
    is_suppressed,
    parse_app_rules,
    suppressed_by,
)
from vdip import metrics
from vdip.kafka import client_options
from vdip.settings import Settings
from vdip.topics import partitions_of

log = logging.getLogger(__name__)


class RulesUnreadable(Exception):
    """An application's published rule set is not valid: its events are dead-lettered."""


class RuleBook:
    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings  # how to reach Kafka
        self.topic = topic
        self._rules: dict[str, list[CompiledRule]] = {}
        self._suppressed: dict[str, Suppressed] = {}
        self._unreadable: set[str] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._lock = asyncio.Lock()
        self._starting = asyncio.Lock()
        self.started = False  # every rule set published before start() was read

    def rules_for(self, app_id: str) -> list[CompiledRule]:
        """The application's active rules, compiled, in evaluation order (none if it has none)."""
        if app_id in self._unreadable:
            raise RulesUnreadable(f"the published rules of {app_id} cannot be read")
        return self._rules.get(app_id, [])

    def suppresses(self, event: EventEnvelope) -> bool:
        """Whether the event carries a value its application suppresses."""
        suppressed = self._suppressed.get(event.app_id)
        return suppressed is not None and is_suppressed(event, suppressed)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Take one record of the topic: a rule set, or a tombstone (no rules left)."""
        if key is None:
            return
        app_id = key.decode(errors="replace")
        try:
            rule_set = parse_app_rules(value or None)
        except ValidationError as exc:
            log.error("the rules of %s cannot be read; its events are dead-lettered: %s", app_id, exc)
            self._unreadable.add(app_id)
            return
        rules = rule_set.rules if rule_set else []
        # A rule belongs to one application for good: delivery ids and table rows (keyed by event
        # id and rule id) are unique per application only because no rule routes another's events.
        foreign = sorted({rule.app_id for rule in rules} - {app_id})
        if foreign:
            log.error(
                "the rules published for %s belong to %s; its events are dead-lettered", app_id, foreign
            )
            self._unreadable.add(app_id)
            return
        self._unreadable.discard(app_id)
        self._rules[app_id] = compile_rules(rules)
        self._suppressed[app_id] = suppressed_by(rule_set.suppressions if rule_set else [])
        newest = max((rule.updated_at for rule in rules), default=None)
        metrics.RULES_VERSION.labels(app_id).set(newest.timestamp() if newest else 0)
        log.info("rules of %s: %d active", app_id, len(self._rules[app_id]))

    async def start(self) -> None:
        """Read every rule set published so far; waits for Kafka and for the topic. Once started,
        it stays started: faust restarts an agent after a rebalance, and the book carries on. Both
        routing agents (``events``, ``events.bulk``) start it; the second waits for the first."""
        async with self._starting:
            if self.started:
                return
            while True:
                try:
                    await self._open()
                    break
                except KafkaError as exc:
                    metrics.ROUTER_WAITING_FOR_RULES.set(1)
                    log.warning("cannot read %s yet (%r); retrying in 2 s", self.topic, exc)
                    await self.stop()
                    await asyncio.sleep(2)
            await self.catch_up()
            self.started = True

    async def _open(self) -> None:
        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # besides the explicit seeks below, whatever the default
            group_id=None,
            # It fetches only while it is behind (paused otherwise) and a fetch waits 20 ms at
            # most for data: Kafka answers a connection's requests in order, so a long-polling
            # fetch would hold back the end-offsets request routing waits for (500 ms by default).
            fetch_max_wait_ms=20,
        )
        self._consumer = consumer
        await consumer.start()
        self._partitions = await partitions_of(self.settings, self.topic)
        if not self._partitions:
            raise KafkaError(f"topic {self.topic} does not exist")
        consumer.assign(self._partitions)
        for tp, offset in (await consumer.beginning_offsets(self._partitions)).items():
            consumer.seek(tp, offset)
        consumer.pause(*self._partitions)

    async def catch_up(self) -> None:
        """Read up to the end offsets of this moment; waits (fails closed) while Kafka does not answer."""
        async with self._lock:
            while True:
                try:
                    await self._read_to_end()
                    metrics.ROUTER_WAITING_FOR_RULES.set(0)
                    return
                except KafkaError as exc:
                    metrics.ROUTER_WAITING_FOR_RULES.set(1)
                    log.warning("routing waits for the rules: cannot read %s (%r)", self.topic, exc)
                    await asyncio.sleep(1)

    async def _read_to_end(self) -> None:
        consumer = self._consumer
        assert consumer is not None, "start() first"
        ends: dict[TopicPartition, int] = await consumer.end_offsets(self._partitions)
        while behind := [tp for tp in self._partitions if await consumer.position(tp) < ends[tp]]:
            consumer.resume(*behind)
            try:
                batches: dict[Any, list[Any]] = await consumer.getmany(*behind, timeout_ms=1000)
            finally:
                consumer.pause(*behind)
            if not batches:
                metrics.ROUTER_WAITING_FOR_RULES.set(1)
                log.warning("routing waits for the rules: %s gave nothing for 1 s", self.topic)
            for records in batches.values():
                for record in records:
                    self.apply(record.key, record.value)

    async def stop(self) -> None:
        """Close the consumer; the rules read so far stay readable (``rules_for``)."""
        self.started = False
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
