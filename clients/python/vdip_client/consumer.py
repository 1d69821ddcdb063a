"""Consume a queue topic (a routing rule's ``queue`` destination): typed deliveries, at-least-once.

Each record's key is the application's id; its value is a delivery,
``{"delivery_id", "rule_id", "destination_type", "destination_config", "event": <envelope>}``
(or, as a batch record, a JSON array of them). The platform delivers at least once: after a
restart of its router a delivery may come again, with the same ``delivery_id``.

``consume(topic, handler, bootstrap=..., group=...)`` calls ``await handler(delivery)`` for each
delivery, in order per partition, and commits a record's offset only after the handler returned
for every delivery it holds: a handler that raises stops ``consume`` with nothing of that record
committed, so the group's next consumer starts with it again. With ``dedupe=`` (a ``DedupeStore``:
``MemoryDedupe``, or your own durable one) a delivery whose id the store has seen is skipped.
Needs aiokafka (``pip install 'vdip-client[consumer]'``).
"""

import json
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from vdip_client.errors import VdipClientError


class InvalidDelivery(VdipClientError):
    """A record of the topic that is not a delivery."""


@dataclass(frozen=True)
class DeliveredEvent:
    event_id: uuid.UUID
    app_id: str
    event_type: str
    payload: dict[str, Any]
    received_at: datetime
    occurred_at: datetime | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    delivery_id: uuid.UUID
    rule_id: int
    destination_type: str
    destination_config: dict[str, Any]
    event: DeliveredEvent
    topic: str
    partition: int
    offset: int

    @classmethod
    def parse(
        cls, value: bytes | None, topic: str = "", partition: int = 0, offset: int = 0
    ) -> list["Delivery"]:
        """The deliveries of one record's value (one, or a batch record's)."""
        try:
            found = json.loads(value or b"null")
            items = found if isinstance(found, list) else [found]
            return [cls._of(item, topic, partition, offset) for item in items]
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidDelivery(f"{topic}[{partition}]@{offset} is not a delivery: {exc!r}") from exc

    @classmethod
    def _of(cls, item: dict[str, Any], topic: str, partition: int, offset: int) -> "Delivery":
        event = item["event"]
        occurred = event.get("occurred_at")
        return cls(
            delivery_id=uuid.UUID(item["delivery_id"]),
            rule_id=int(item["rule_id"]),
            destination_type=str(item["destination_type"]),
            destination_config=dict(item.get("destination_config") or {}),
            event=DeliveredEvent(
                event_id=uuid.UUID(event["event_id"]),
                app_id=str(event["app_id"]),
                event_type=str(event["event_type"]),
                payload=dict(event.get("payload") or {}),
                received_at=datetime.fromisoformat(event["received_at"]),
                occurred_at=datetime.fromisoformat(occurred) if occurred else None,
                metadata=dict(event.get("metadata") or {}),
            ),
            topic=topic,
            partition=partition,
            offset=offset,
        )


class DedupeStore(Protocol):
    """Where handled delivery ids are kept: a durable one (a table with the id as primary key,
    written in the handler's own transaction) makes the effect exactly-once."""

    async def seen(self, delivery_id: uuid.UUID) -> bool: ...

    async def remember(self, delivery_id: uuid.UUID) -> None: ...


class MemoryDedupe:
    """The last ``size`` delivery ids, in this process only (lost with it)."""

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._ids: OrderedDict[uuid.UUID, None] = OrderedDict()

    async def seen(self, delivery_id: uuid.UUID) -> bool:
        return delivery_id in self._ids

    async def remember(self, delivery_id: uuid.UUID) -> None:
        self._ids[delivery_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)


Handler = Callable[[Delivery], Awaitable[None]]


async def consume(
    topic: str,
    handler: Handler,
    *,
    bootstrap: str,
    group: str,
    dedupe: DedupeStore | None = None,
    limit: int | None = None,
    **consumer_options: Any,
) -> int:
    """Handle the topic's deliveries until ``limit`` records were handled (None: forever).
    Returns how many deliveries the handler got. ``consumer_options`` go to AIOKafkaConsumer
    (e.g. security settings); a new group starts from the oldest record kept."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    options = {"auto_offset_reset": "earliest", **consumer_options, "enable_auto_commit": False}
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, **options)
    await consumer.start()
    handled = records = 0
    try:
        async for record in consumer:
            for delivery in Delivery.parse(record.value, record.topic, record.partition, record.offset):
                if dedupe is not None and await dedupe.seen(delivery.delivery_id):
                    continue
                await handler(delivery)
                handled += 1
                if dedupe is not None:
                    await dedupe.remember(delivery.delivery_id)
            await consumer.commit({TopicPartition(record.topic, record.partition): record.offset + 1})
            records += 1
            if limit is not None and records >= limit:
                break
    finally:
        await consumer.stop()
    return handled
