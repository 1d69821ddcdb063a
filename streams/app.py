"""The faust application: its settings, its topics and the routing agent.

The agent consumes ``events`` raw, validates each record against the envelope, sends what is not
an envelope to ``events.dlq`` unchanged (the reason and origin in headers), and passes every valid
event, routed, to ``events.routed`` keyed by its app_id. Processing is at-least-once: faust
commits a record's offset after the agent finished with it and after the producer flushed what
the agent sent; every effect downstream is idempotent on ``event_id``.
"""

import logging
from typing import Any

import faust
from pydantic import ValidationError

from streams.routing import parse_envelope, rejection_reason, route
from vdip.settings import Settings

log = logging.getLogger(__name__)


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
        topic_replication_factor=1,
        web_enabled=False,
    )
    events = app.topic(settings.topic("events"), value_type=bytes, key_type=bytes)
    routed = app.topic(settings.topic("events.routed"), value_type=bytes, key_type=bytes)
    dlq = app.topic(settings.topic("events.dlq"), value_type=bytes, key_type=bytes)

    @app.agent(events, name="router")
    async def router(stream: Any) -> None:
        async for record in stream.events():
            message = record.message
            try:
                event = parse_envelope(record.value)
            except ValidationError as exc:
                reason = rejection_reason(exc)
                log.warning(
                    "dead-lettering %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason
                )
                await dlq.send(
                    key=record.key,
                    value=record.value,
                    headers=[
                        ("error", reason.encode()),
                        ("error.stage", b"validation"),
                        ("source.topic", message.topic.encode()),
                        ("source.partition", str(message.partition).encode()),
                        ("source.offset", str(message.offset).encode()),
                    ],
                )
                continue
            result = route(event)
            await routed.send(key=event.app_id.encode(), value=result.model_dump_json().encode())

    return app


def run(settings: Settings, loglevel: str = "info") -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT."""
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, redirect_stdouts=False)
    worker.execute_from_commandline()
