"""Replays: an application's stored events received in a range routed again through its active
rules, as a job (``sinks.jobs`` runs it, ``vdip.store.jobs`` holds it).

A batch at a time, oldest first (``replay_batch`` events, no more than the job's ``events_per_s``,
``replay_events_per_s`` by default):

1. the events after the job's cursor are read, and routed with the application's rules as they
   are now (``rule_ids``: only those) by the router's own pure function;
2. each match is a delivery whose ``delivery_id`` (event, rule) says whether it was made before:
   one that exists is skipped, unless ``force`` and it has ended (delivered or failed), then it
   is delivered again under the same ``delivery_id``; one under way is always left alone;
3. the new deliveries (and a forced table or queue delivery) are sent to their topics as the
   router sends them, and the batch waits for Kafka's acknowledgement of each;
4. then, in one transaction: the queue deliveries sent are recorded as delivered, the forced
   webhook deliveries put back in the dispatcher's queue, and the job's cursor and counts moved.

A runner killed anywhere goes through its last batch again: what the sinks recorded already is
skipped, and what is sent again carries the same ``delivery_id``, which every sink writes once (a
queue topic's consumer may see a record twice, as with the router after a crash).
The event keeps its status and routing summary from its first routing; the deliveries a replay
adds are in its deliveries, and count in the statistics as any other.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from schemas import DeliveryStatus, EventEnvelope
from schemas.jobs import ReplayRequest
from schemas.rules import RoutingRule
from streams.routing import CompiledRule, compile_rules, delivery_id, route_event
from vdip.settings import Settings
from vdip.store import deliveries, events, jobs, rules
from vdip.topics import TopicSpec, apply_topics

log = logging.getLogger(__name__)

UNDER_WAY = {DeliveryStatus.PENDING, DeliveryStatus.RETRYING}


@dataclass(frozen=True)
class Match:
    """An event a rule matched: its delivery, as the router would send it."""

    event: EventEnvelope
    rule: RoutingRule
    record: bytes

    @property
    def delivery_id(self) -> uuid.UUID:
        return delivery_id(self.event.event_id, self.rule.rule_id)


@dataclass
class Plan:
    """What a batch sends and records."""

    sends: list[Match] = field(default_factory=list)  # to their topics
    queue_rows: list[tuple[Any, ...]] = field(default_factory=list)  # recorded once acknowledged
    requeues: list[tuple[uuid.UUID, str]] = field(default_factory=list)  # forced webhooks
    skipped: int = 0

    @property
    def sent(self) -> int:
        return len(self.sends) + len(self.requeues)


def matches(batch: list[EventEnvelope], compiled: list[CompiledRule], now: datetime) -> list[Match]:
    """Every (event, rule) of the batch that matches, with its delivery record. An event whose
    routing raises is logged and has none."""
    found: list[Match] = []
    for event in batch:
        routing = route_event(event, lambda _: compiled, now, None)
        if routing.outcome == "failed":
            log.warning("replay: routing event %s raised: %s", event.event_id, routing.rejection)
        found.extend(Match(event, rule, record) for rule, record in routing.deliveries)
    return found


def plan(found: list[Match], statuses: dict[uuid.UUID, str], force: bool) -> Plan:
    """What to do with each match, given the status of the deliveries that exist."""
    made = Plan()
    for match in found:
        status = statuses.get(match.delivery_id)
        if status is not None and (not force or status in UNDER_WAY):
            made.skipped += 1
        elif status is not None and match.rule.destination_type == "webhook":
            made.requeues.append((match.delivery_id, match.record.decode()))
        else:
            made.sends.append(match)
            if match.rule.destination_type == "queue":
                made.queue_rows.append(
                    (match.delivery_id, match.event.app_id, match.event.event_id, match.rule.rule_id)
                )
    return made


def active_rules(all_rules: list[RoutingRule], rule_ids: list[int] | None) -> list[CompiledRule]:
    """The rules a replay routes with: the active ones (of ``rule_ids``), compiled in order."""
    return compile_rules([r for r in all_rules if rule_ids is None or r.rule_id in rule_ids])


class Replayer:
    """Runs replay jobs: a producer and the queue topics known to exist."""

    def __init__(self, pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings) -> None:
        self.pool = pool
        self.producer = producer
        self.settings = settings
        self.queues: set[str] = set()

    def topic_of(self, rule: RoutingRule) -> str:
        if rule.destination_type == "queue":
            return self.settings.topic(rule.destination_config["topic"])
        return self.settings.topic(
            "deliveries.webhook" if rule.destination_type == "webhook" else "deliveries.table"
        )

    async def run(self, job: Any, stop: asyncio.Event) -> str:
        """Go through the job from its cursor until it is done (``done``), cancelled
        (``cancelled``) or ``stop`` is set (``stopped``)."""
        params = ReplayRequest.model_validate(job["params"])
        cursor = (job["cursor_at"], job["cursor_id"]) if job["cursor_at"] is not None else None
        rate = params.events_per_s or self.settings.replay_events_per_s
        size = self.settings.replay_batch
        while not stop.is_set():
            began = time.monotonic()
            rows = await events.page_in_range(
                self.pool, job["app_id"], params.start, params.end, params.event_type, cursor, size
            )
            if not rows:
                await jobs.finish(self.pool, job["job_id"], "done")
                return "done"
            batch = [EventEnvelope.model_validate(dict(row)) for row in rows]
            compiled = active_rules(await rules.list_rules(self.pool, job["app_id"], False), params.rule_ids)
            found = matches(batch, compiled, datetime.now(UTC))
            statuses = await deliveries.statuses(self.pool, [m.delivery_id for m in found])
            made = plan(found, statuses, params.force)
            await self.send(made.sends)
            cursor = (batch[-1].received_at, batch[-1].event_id)
            async with self.pool.acquire() as conn, conn.transaction():
                if made.queue_rows:
                    await deliveries.record_queue_sent(conn, made.queue_rows)
                if made.requeues:
                    await deliveries.requeue_webhooks(conn, made.requeues)
                state = await jobs.advance(
                    conn,
                    job["job_id"],
                    cursor=cursor,
                    scanned=len(batch),
                    sent=made.sent,
                    skipped=made.skipped,
                    lease_s=self.settings.job_lease_s,
                )
            if state != "running":
                return state
            # Throttled: no more than ``rate`` events a second, so that live traffic keeps its pace.
            await _pause(stop, len(batch) / rate - (time.monotonic() - began))
        return "stopped"

    async def send(self, sends: list[Match]) -> None:
        """Send each delivery to its topic (queue topics made when missing) and wait for every
        acknowledgement; raises the first refusal."""
        await self.declare({self.topic_of(m.rule) for m in sends if m.rule.destination_type == "queue"})
        futures = [
            await self.producer.send(self.topic_of(m.rule), m.record, key=m.event.app_id.encode())
            for m in sends
        ]
        await asyncio.gather(*futures)

    async def declare(self, topics: set[str]) -> None:
        missing = topics - self.queues
        if missing:
            factor = self.settings.replication_factor
            await apply_topics(
                self.settings, [TopicSpec(name=t, partitions=3, replication_factor=factor) for t in missing]
            )
            self.queues |= missing


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
