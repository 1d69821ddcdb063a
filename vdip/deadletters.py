"""Dead letters: an application's records of ``events.dlq``, found by stage and time, and the
events in them, to be sent back into ``events`` once what rejected them is fixed.

A record of ``events.dlq`` (written with ``vdip.topics.dead_letter_headers``) is keyed by the
application's id and holds what was rejected, unchanged: an event (stages ``validation``,
``routing``, ``conflict``), a routed event (``event-store``) or a delivery (``table-sink``,
``webhooks``), the last two with the event inside (``"event"``). ``event_in`` takes the event out.

Reading goes partition by partition between offsets found from times (Kafka's time index), and
backwards in chunks when only the newest are wanted, so a listing reads what it shows, not the
whole topic.
"""

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeAlias

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaTimeoutError
from pydantic import ValidationError

from schemas import EventEnvelope
from vdip.kafka import plain_consumer
from vdip.settings import Settings
from vdip.topics import DeadLetterReason, partitions_of

Stage = Literal["validation", "routing", "conflict", "event-store", "table-sink", "webhooks"]
Record: TypeAlias = ConsumerRecord[bytes, bytes]

CHUNK = 1000  # records read at a time, going backwards for the newest
MOST_SELECTED = 10_000  # a selection (resend by time) holds at most this many records
READ_WITHIN_S = 30.0


class TooMany(Exception):
    """More dead letters match than one selection may hold."""


@dataclass(frozen=True)
class Filter:
    app_id: str
    stage: Stage | None = None
    since: datetime | None = None
    until: datetime | None = None

    def keeps(self, record: Record) -> bool:
        return record.key == self.app_id.encode() and (
            self.stage is None or DeadLetterReason.of(record.headers).stage == self.stage
        )


def event_in(value: bytes | None, app_id: str) -> EventEnvelope:
    """The event a dead letter holds, as a valid envelope of ``app_id``; raises ``ValueError``
    (a ``ValidationError`` is one) saying why there is none."""
    if value is None:
        raise ValueError("the record has no value")
    try:
        event = EventEnvelope.model_validate_json(value)
    except ValidationError as invalid:
        try:
            inner = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise invalid from None
        if not (isinstance(inner, dict) and isinstance(inner.get("event"), dict)):
            raise
        event = EventEnvelope.model_validate_json(orjson.dumps(inner["event"]))
    if event.app_id != app_id:
        raise ValueError(f"the event is of application {event.app_id}")
    return event


async def _read(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, stop: int) -> list[Record]:
    """The records of ``tp`` from ``start`` up to ``stop`` (below the partition's end)."""
    consumer.assign([tp])
    consumer.seek(tp, start)
    found: list[Record] = []
    try:
        async with asyncio.timeout(READ_WITHIN_S):
            while await consumer.position(tp) < stop:
                for record in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                    if record.offset < stop:
                        found.append(record)
    except TimeoutError:
        raise KafkaTimeoutError(f"{tp.topic}[{tp.partition}] not read within {READ_WITHIN_S:.0f} s") from None
    return found


async def _bounds(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    since: datetime | None,
    until: datetime | None,
) -> dict[TopicPartition, tuple[int, int]]:
    """For each partition, the offsets [first, stop) of the records written from ``since`` to
    before ``until`` (by their timestamps)."""
    starts = await consumer.beginning_offsets(partitions)
    ends = await consumer.end_offsets(partitions)

    async def at(moment: datetime | None, default: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        if moment is None:
            return default
        at_ms = max(0, int(moment.timestamp() * 1000))  # Kafka's timestamps start at the epoch
        found = await consumer.offsets_for_times({tp: at_ms for tp in partitions})
        return {tp: ends[tp] if found[tp] is None else found[tp].offset for tp in partitions}

    lows, highs = await at(since, starts), await at(until, ends)
    return {tp: (max(starts[tp], lows[tp]), min(ends[tp], highs[tp])) for tp in partitions}


async def newest(settings: Settings, which: Filter, limit: int) -> list[Record]:
    """The ``limit`` newest dead letters that ``which`` keeps, newest first."""
    topic = settings.topic("events.dlq")
    partitions = await partitions_of(settings, topic)
    found: list[Record] = []
    async with plain_consumer(settings) as consumer:
        for tp, (low, high) in (await _bounds(consumer, partitions, which.since, which.until)).items():
            kept: list[Record] = []
            while high > low and len(kept) < limit:
                begin = max(low, high - CHUNK)
                kept = [r for r in await _read(consumer, tp, begin, high) if which.keeps(r)] + kept
                high = begin
            found.extend(kept[-limit:])
    found.sort(key=lambda r: (r.timestamp, r.offset), reverse=True)
    return found[:limit]


async def selected(settings: Settings, which: Filter) -> list[Record]:
    """Every dead letter that ``which`` keeps, oldest first by partition; ``TooMany`` beyond
    ``MOST_SELECTED``."""
    topic = settings.topic("events.dlq")
    partitions = await partitions_of(settings, topic)
    found: list[Record] = []
    async with plain_consumer(settings) as consumer:
        for tp, (low, high) in (await _bounds(consumer, partitions, which.since, which.until)).items():
            for begin in range(low, high, CHUNK):
                found += [
                    r for r in await _read(consumer, tp, begin, min(high, begin + CHUNK)) if which.keeps(r)
                ]
                if len(found) > MOST_SELECTED:
                    raise TooMany(f"more than {MOST_SELECTED} dead letters match")
    return found


async def at_offsets(
    settings: Settings, app_id: str, wanted: list[tuple[int, int]]
) -> dict[tuple[int, int], Record]:
    """The dead letters of ``app_id`` at these (partition, offset): those that exist and are its."""
    topic = settings.topic("events.dlq")
    partitions = {tp.partition: tp for tp in await partitions_of(settings, topic)}
    found: dict[tuple[int, int], Record] = {}
    which = Filter(app_id)
    async with plain_consumer(settings) as consumer:
        present = [partitions[p] for p in {p for p, _ in wanted} if p in partitions]
        if not present:
            return found
        starts = await consumer.beginning_offsets(present)
        ends = await consumer.end_offsets(present)
        for partition, offset in sorted(set(wanted)):
            tp = partitions.get(partition)
            if tp is None or not starts[tp] <= offset < ends[tp] or (partition, offset) in found:
                continue
            for record in await _read(consumer, tp, offset, min(ends[tp], offset + 100)):
                if which.keeps(record):
                    found[(record.partition, record.offset)] = record
    return found
