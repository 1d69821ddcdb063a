"""A downstream service reading a `queue` destination: every event a routing rule sent to its topic.

Each record's key is the application's id; its value is a delivery (JSON):

    {"delivery_id": "...", "rule_id": 7, "destination_type": "queue",
     "destination_config": {"topic": "big-orders"}, "event": {<the event envelope>}}

Delivery is at-least-once: after a router restart a record may come twice, with the same
delivery_id, so skip the ids you have processed. Commit offsets after your own work is done.

Run: python examples/queue_consumer.py big-orders [--bootstrap 127.0.0.1:9092] [--group my-service]
"""

import argparse
import asyncio

import orjson
from aiokafka import AIOKafkaConsumer


async def main(topic: str, bootstrap: str, group: str, limit: int | None) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,  # commit only what was processed
        auto_offset_reset="earliest",  # a new service starts from the oldest delivery kept
    )
    await consumer.start()
    seen: set[str] = set()  # use a durable store in a real service
    handled = 0
    try:
        async for record in consumer:
            delivery = orjson.loads(record.value)
            if delivery["delivery_id"] not in seen:
                seen.add(delivery["delivery_id"])
                event = delivery["event"]
                rule = delivery["rule_id"]
                print(f"rule {rule}: {event['event_type']} {event['event_id']} {event['payload']}")
            await consumer.commit()
            handled += 1
            if limit is not None and handled >= limit:
                break
    finally:
        await consumer.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("topic")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--group", default="example-queue-consumer")
    parser.add_argument("--limit", type=int, default=None, help="stop after this many records")
    args = parser.parse_args()
    asyncio.run(main(args.topic, args.bootstrap, args.group, args.limit))
