"""The routing agent: routes the records of ``events`` in batches, outputs before offsets.

For each batch faust hands over (``noack_take``: nothing is acknowledged for us):

1. the rule book catches up with every rule set published so far (it fails closed);
2. every valid event is claimed in PostgreSQL (``streams.claims``: one statement per batch,
   waiting while PostgreSQL is away), while the router routes them: the first version of an
   event id wins, and only it and identical copies are routed; another version is only
   dead-lettered (stage ``conflict``);
3. each record is routed (``streams.routing.route_event``): its events with their routing
   summaries for ``events.routed`` (together, as a batch record, when the input record was one:
   ``schemas.records``), one record per match for its destination's topic (a queue topic is
   created on first use, tried again while Kafka cannot create it; an event whose queue topic
   Kafka refuses for good fails), and what is not a valid envelope (or whose routing raised)
   for ``events.dlq``;
4. every one of those records is sent, and the batch waits until Kafka acknowledged each of them
   (``acks=all``): deliveries and dead letters first, then the routed events (the event store
   records a queue delivery as done when it stores its event). A record Kafka refuses is sent
   again alone, then with a growing pause, until it is acknowledged: the batch never moves on
   without its outputs;
5. only then is each input record acknowledged to faust, which commits offsets of acknowledged
   records only, in order.

A crash anywhere before step 5 leaves the batch's offsets uncommitted: it is routed again, and
every effect downstream is keyed by ``event_id`` or ``delivery_id``, so nothing is duplicated
(the replayed claims read as identical: the same version goes out with the same ids).
While a refused record (or a queue topic not created) is retried, routing stops
(``vdip_router_send_failures_total`` counts the refusals and the log names the topic and the error).
"""

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import faust
from aiokafka.structs import RecordMetadata

from schemas import EventEnvelope
from schemas.records import batch_records
from schemas.rules import RoutingRule
from streams.claims import Claims, Verdict, Version, version_of
from streams.routing import (
    Routing,
    conflicting,
    parse_record,
    route_event,
    routing_failed,
    suppressed_event,
)
from streams.rulebook import RuleBook
from vdip import metrics
from vdip.logs import event_context
from vdip.settings import Settings
from vdip.topics import REFUSED_FOR_GOOD, dead_letter_headers

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Output:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers | None = None


class Router:
    """The routing agent's body (``run`` is the agent), with the topics it writes to."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        rulebook: RuleBook,
        claims: Claims,
        lane: str,
        batch_size: int,
    ) -> None:
        """``lane``: ``events`` or ``events.bulk``, the topic it routes; its routed events go to
        ``events.routed``, or ``events.routed.bulk``."""
        self.app = app
        self.batch_size = batch_size
        self.settings = settings
        self.rulebook = rulebook
        self.claims = claims
        self.routed = settings.topic(lane.replace("events", "events.routed", 1))
        self.dlq = settings.topic("events.dlq")
        self.sinks = {
            "webhook": settings.topic("deliveries.webhook"),
            "database_table": settings.topic("deliveries.table"),
        }
        self.queues: set[str] = set()  # queue topics known to exist

    async def run(self, stream: Any) -> None:
        await self.rulebook.start()
        size, wait = self.batch_size, self.settings.router_batch_wait_s
        try:
            async for batch in stream.noack_take(size, within=wait):
                await self.route_batch(batch)
                for event in batch:
                    await stream.ack(event)
        except Exception as exc:  # a bug: stop the worker rather than route on past a hole
            log.critical("routing stopped: %r; the worker stops, unrouted records stay uncommitted", exc)
            await self.app.crash(exc)
            raise

    async def route_batch(self, batch: list[Any]) -> None:
        """Route a batch of faust events and return once every output is acknowledged."""
        await self.rulebook.catch_up()
        parsed = [parse_record(record.value) for record in batch]
        versions = [version_of(e) for items in parsed for _, e in items if isinstance(e, EventEnvelope)]
        # The events are routed while PostgreSQL claims them (on another core); nothing is sent
        # before the claims are committed, and what a claim refuses is dead-lettered instead.
        claiming = asyncio.ensure_future(self.claims.decide(versions))
        try:
            await asyncio.sleep(0)  # the claim goes out
            now = datetime.now(UTC)
            routings = self.route_all(parsed, now)
            routed_by = time.monotonic()
            verdicts = await claiming
        finally:
            claiming.cancel()  # only if routing raised
        if time.monotonic() - routed_by > 1.0:  # it waited for PostgreSQL: routed with today's rules
            await self.rulebook.catch_up()
            now = datetime.now(UTC)
            routings = self.route_all(parsed, now)
        judged = iter(zip(versions, verdicts, strict=True))
        outputs: list[Output] = []
        counts = {"routed": 0, "invalid": 0, "failed": 0, "duplicate": 0, "conflict": 0, "suppressed": 0}
        routed: list[Output] = []
        for record, record_routings in zip(batch, routings, strict=True):
            values: list[bytes] = []
            apps: set[str] = set()
            for routing in record_routings:
                if routing.event is not None:  # a valid envelope: as its claim says
                    routing = self.judged(routing, *next(judged))
                try:
                    topics = [await self.topic_of(rule) for rule, _ in routing.deliveries]
                except REFUSED_FOR_GOOD as exc:  # a queue topic Kafka will never create: the event fails
                    assert routing.event is not None
                    routing, topics = routing_failed(routing.event, exc, now, routing.index), []
                counts[routing.outcome] += 1
                outputs.extend(self.outputs_of(record.message, routing, topics))
                if routing.routed is not None:
                    assert routing.event is not None
                    apps.add(routing.event.app_id)
                    values.append(routing.routed)
            # The routed events of a record travel together (a batch record when several), keyed
            # by their application as each event is (the input record's key if they are mixed).
            key = apps.pop().encode() if len(apps) == 1 else record.message.key
            routed.extend(Output(self.routed, key, value) for value, _ in batch_records(values))
        # Deliveries (and dead letters) first: the event store records a queue delivery as done
        # when it stores the routed event, so that must not be written before the delivery was.
        await self.send_all(outputs)
        await self.send_all(routed)
        metrics.ROUTER_BATCH_RECORDS.observe(len(batch))
        metrics.ROUTER_BATCH_EVENTS.observe(sum(counts.values()))
        for outcome, count in counts.items():
            if count:
                metrics.ROUTER_EVENTS.labels(outcome).inc(count)
        last = {event.message.tp: event.message.offset for event in batch}
        for tp, offset in last.items():
            end = self.app.consumer.highwater(tp)
            if end is not None:
                metrics.CONSUMER_LAG.labels(self.app.conf.id, tp.topic, tp.partition).set(end - offset - 1)

    def route_all(
        self, parsed: list[list[tuple[int | None, EventEnvelope | Routing]]], now: datetime
    ) -> list[list[Routing]]:
        """Each parsed record's events routed (what is not an envelope stays as it is)."""
        rules_for, suppresses = self.rulebook.rules_for, self.rulebook.suppresses
        return [
            [
                item
                if isinstance(item, Routing)
                else suppressed_event(item, index)
                if suppresses(item)
                else route_event(item, rules_for, now, index)
                for index, item in items
            ]
            for items in parsed
        ]

    @staticmethod
    def judged(routing: Routing, version: Version, verdict: Verdict) -> Routing:
        """An event's routing as its claim lets it through (the first version, or an identical
        copy, counted as a duplicate), or its dead letter when another version claimed it first."""
        assert routing.event is not None
        if routing.outcome == "suppressed":  # nothing of it goes anywhere, not even a dead letter
            return routing
        if verdict.outcome == "conflict":
            return conflicting(routing.event, verdict.first, version.content_hash, routing.index)
        if verdict.outcome == "identical" and routing.outcome == "routed":
            routing.outcome = "duplicate"
        return routing

    def outputs_of(self, message: Any, routing: Routing, topics: list[str]) -> list[Output]:
        """The records to send for one event of an input record (``topics``: of its deliveries)."""
        found: list[Output] = []
        key = routing.event.app_id.encode() if routing.event else message.key
        for (rule, delivery), topic in zip(routing.deliveries, topics, strict=True):
            found.append(Output(topic, key, delivery))
            metrics.RULE_MATCHES.labels(rule.app_id, str(rule.rule_id)).inc()
        if routing.rejection is not None:
            stage, reason = routing.rejection
            context = event_context(routing.event) if routing.event else {}
            where = f"{message.topic}[{message.partition}]@{message.offset}"
            if routing.index is not None:
                where += f" #{routing.index}"
            log.warning("dead-lettering %s: %s", where, reason, extra=context)
            metrics.DEAD_LETTERS.labels(stage).inc()
            headers = dead_letter_headers(reason, stage, message, routing.index)
            # One event of a batch record: that event alone.
            value = message.value if routing.index is None else routing.value
            found.append(Output(self.dlq, message.key, value, headers))
        return found

    async def topic_of(self, rule: RoutingRule) -> str:
        """A delivery's topic. A queue destination's is created on first use (3 partitions). While
        Kafka does not create it for a reason of the moment (a broker away, too few brokers for
        the replication factor), routing waits and tries again with a growing pause, as for a
        refused record; a refusal for good (``REFUSED_FOR_GOOD``) is raised."""
        if rule.destination_type != "queue":
            return self.sinks[rule.destination_type]
        topic = self.settings.topic(rule.destination_config["topic"])
        pause = 0.5
        while topic not in self.queues:
            try:
                await self.app.topic(topic, value_type=bytes, key_type=bytes).maybe_declare()
                self.queues.add(topic)
            except REFUSED_FOR_GOOD:
                raise
            except Exception as exc:
                metrics.ROUTER_SEND_FAILURES.inc()
                log.error(
                    "Kafka did not create the queue topic %s: %r; trying again in %.1f s (offsets stay put)",
                    topic,
                    exc,
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)
        return topic

    async def send_all(self, outputs: list[Output], *, first_pause_s: float = 0.5) -> None:
        """Send every output and return once Kafka acknowledged each; resend the refused ones.

        They go out together (the producer batches records to one partition, up to 512 KiB a
        batch); what Kafka refuses is sent again alone, each record in a batch of its own (a
        batch of small records can exceed a topic's ``max.message.bytes`` where none of them
        does), and again with a growing pause while Kafka still refuses it."""
        refused = await self._send_together(outputs)
        pause = first_pause_s
        while refused:
            refused = [failed for output, _ in refused for failed in await self._send_together([output])]
            if not refused:
                return
            metrics.ROUTER_SEND_FAILURES.inc(len(refused))
            output, error = refused[0]
            log.error(
                "Kafka refused %d record(s), e.g. to %s: %r; sending again in %.1f s (offsets stay put)",
                len(refused),
                output.topic,
                error,
                pause,
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 30.0)

    async def _send_together(self, outputs: list[Output]) -> list[tuple[Output, BaseException]]:
        """Send ``outputs`` and wait for every acknowledgement: the refused ones, with why."""
        results = await asyncio.gather(*[await self._send(o) for o in outputs], return_exceptions=True)
        return [(o, r) for o, r in zip(outputs, results, strict=True) if isinstance(r, BaseException)]

    async def _send(self, output: Output) -> Awaitable[RecordMetadata]:
        try:
            future: Awaitable[RecordMetadata] = await self.app.producer.send(
                output.topic, output.key, output.value, None, None, output.headers
            )
        except Exception as exc:  # refused before it was buffered (e.g. too large for the client)
            failed: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed
        return future
