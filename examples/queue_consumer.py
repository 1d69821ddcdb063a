"""A downstream service reading a `queue` destination: every event a routing rule sent to its topic,
with vdip_client's consumer helper (`pip install './clients/python[consumer]'`).

Delivery is at-least-once: after a router restart a delivery may come twice, with the same
delivery_id. `consume` commits a record only after the handler returned, and skips the ids its
dedupe store has seen (here in memory; use a durable store in a real service).

Run: python examples/queue_consumer.py big-orders [--bootstrap 127.0.0.1:9092] [--group my-service]
"""

import argparse
import asyncio

from vdip_client.consumer import Delivery, MemoryDedupe, consume


async def handle(delivery: Delivery) -> None:
    event = delivery.event
    print(f"rule {delivery.rule_id}: {event.event_type} {event.event_id} {event.payload}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("topic")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--group", default="example-queue-consumer")
    parser.add_argument("--limit", type=int, default=None, help="stop after this many records")
    args = parser.parse_args()
    asyncio.run(
        consume(
            args.topic,
            handle,
            bootstrap=args.bootstrap,
            group=args.group,
            dedupe=MemoryDedupe(),
            limit=args.limit,
        )
    )
