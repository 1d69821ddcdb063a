"""vdip_client.consumer on real Kafka: typed deliveries, commit after the handler (a failing
handler's record comes again), dedupe by delivery_id."""

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from vdip_client.consumer import Delivery, MemoryDedupe, consume

from tests.conftest import Pipeline


def delivery(n: int, delivery_id: uuid.UUID | None = None) -> dict[str, Any]:
    return {
        "delivery_id": str(delivery_id or uuid.uuid4()),
        "rule_id": 7,
        "destination_type": "queue",
        "destination_config": {"topic": "t"},
        "event": {
            "event_id": str(uuid.uuid4()),
            "app_id": "shop",
            "event_type": "order",
            "payload": {"n": n},
            "metadata": {"source": "http"},
            "received_at": datetime.now(UTC).isoformat(),
            "occurred_at": None,
        },
    }


async def test_commit_after_the_handler_and_dedupe_by_delivery_id(
    pipeline: Pipeline, producer: AIOKafkaProducer
) -> None:
    topic = pipeline.settings.topic(f"consumer-{uuid.uuid4().hex[:8]}")
    bootstrap = pipeline.settings.kafka_bootstrap
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    first = delivery(0)
    values = [first, delivery(1), {**first}, delivery(3)]  # the third is the first, again
    for value in values:
        await producer.send_and_wait(topic, orjson.dumps(value), key=b"shop", partition=0)
    group = f"consumer-{uuid.uuid4().hex[:6]}"
    seen: list[Delivery] = []

    async def failing_on_3(found: Delivery) -> None:
        if found.event.payload["n"] == 3:
            raise RuntimeError("the handler failed")
        seen.append(found)

    dedupe = MemoryDedupe()
    with pytest.raises(RuntimeError):
        await consume(topic, failing_on_3, bootstrap=bootstrap, group=group, dedupe=dedupe)
    assert [d.event.payload["n"] for d in seen] == [0, 1]  # the repeated delivery was skipped
    assert isinstance(seen[0].delivery_id, uuid.UUID) and seen[0].event.event_type == "order"
    assert seen[0].offset == 0 and seen[0].topic == topic

    async def keep(found: Delivery) -> None:
        seen.append(found)

    # The same group again: only the record whose handler failed (nothing after it was committed).
    handled = await consume(topic, keep, bootstrap=bootstrap, group=group, limit=1)
    assert handled == 1 and seen[-1].event.payload["n"] == 3 and seen[-1].offset == 3
