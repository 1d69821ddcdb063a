"""The loop every sink runs: consume a batch, write it, then commit its offsets.

Offsets are committed only after ``write`` returned, so a crash between the two replays the
batch: writes must be idempotent. When ``write`` raises, the same batch is retried with
exponential backoff (capped) and consumption pauses meanwhile: a database outage stops the
sink, it does not skip records. A batch whose partitions were revoked in between is not
committed; the new owner replays it.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError

log = logging.getLogger(__name__)

Records = Sequence[ConsumerRecord[Any, Any]]
WriteBatch = Callable[[Records], Awaitable[None]]


def new_consumer(bootstrap: str, group_id: str, topic: str, *, max_records: int) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=max_records,
        metadata_max_age_ms=30_000,
    )


async def write_with_retry(
    write: WriteBatch,
    records: Records,
    stop: asyncio.Event,
    *,
    first_delay_s: float = 0.5,
    max_delay_s: float = 30.0,
) -> bool:
    """Call ``write`` until it succeeds (True) or ``stop`` is set (False)."""
    delay = first_delay_s
    while True:
        try:
            await write(records)
            return True
        except Exception as exc:
            log.error("writing a batch of %d failed, retrying in %.1f s: %r", len(records), delay, exc)
        try:
            await asyncio.wait_for(stop.wait(), delay)
            return False
        except TimeoutError:
            delay = min(delay * 2, max_delay_s)


async def run_batches(
    consumer: AIOKafkaConsumer, write: WriteBatch, stop: asyncio.Event, *, max_records: int, timeout_ms: int
) -> None:
    """Consume, write and commit until ``stop`` is set. The consumer must be started."""
    while not stop.is_set():
        batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = await consumer.getmany(
            timeout_ms=timeout_ms, max_records=max_records
        )
        records = [record for partition in batches.values() for record in partition]
        if not records:
            continue
        if not await write_with_retry(write, records, stop):
            return  # stopping before the batch was written: it will be consumed again
        offsets = {tp: partition[-1].offset + 1 for tp, partition in batches.items()}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
            log.warning("offsets not committed (partitions moved); the batch will be replayed: %r", exc)
