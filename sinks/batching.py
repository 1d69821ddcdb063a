"""The loop every sink runs: consume a batch, write it, then commit its offsets.

Offsets are committed only after ``write`` returned, so a crash between the two replays the
batch: writes must be idempotent. When ``write`` raises, the same batch is retried with
exponential backoff (capped) and consumption pauses meanwhile: a database outage stops the
sink, it does not skip records. A batch whose partitions were revoked in between is not
committed; the new owner replays it.
"""

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeAlias, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError

from vdip import metrics
from vdip.db import create_pool, migrate_url
from vdip.kafka import client_options
from vdip.settings import Settings
from vdip.topics import dead_letter_headers

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
Records = Sequence[ConsumerRecord[Any, Any]]
WriteBatch = Callable[[Records], Awaitable[None]]
# Writes rows inside the caller's transaction.
WriteRows = Callable[[asyncpg.Connection, list[tuple[Any, ...]]], Awaitable[None]]
# Errors that belong to a row's values, not to the database being unreachable.
T = TypeVar("T")  # what a row came from (a record, or one value of a batch record)
REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


def new_consumer(settings: Settings, group_id: str, topic: str, *, max_records: int) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        **client_options(settings),
        group_id=group_id,
        client_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=max_records,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        metadata_max_age_ms=30_000,
        # A member that died leaves the group after 8 s; heartbeats every second let the others
        # hear of the rebalance (and take its partitions over) within about a second of that.
        session_timeout_ms=8_000,
        heartbeat_interval_ms=1_000,
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
    consumer: AIOKafkaConsumer,
    write: WriteBatch,
    stop: asyncio.Event,
    *,
    max_records: int,
    timeout_ms: int,
    name: str = "sink",
) -> None:
    """Consume, write and commit until ``stop`` is set. The consumer must be started. ``name``
    labels the metrics (the consumer group)."""
    while not stop.is_set():
        batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = await consumer.getmany(
            timeout_ms=timeout_ms, max_records=max_records
        )
        records = [record for partition in batches.values() for record in partition]
        if not records:
            continue
        started = time.perf_counter()
        if not await write_with_retry(write, records, stop):
            return  # stopping before the batch was written: it will be consumed again
        metrics.SINK_WRITE_SECONDS.labels(name).observe(time.perf_counter() - started)
        metrics.SINK_BATCH_RECORDS.labels(name).observe(len(records))
        assigned = consumer.assignment()  # a rebalance during the write may have moved some away
        for tp, partition in batches.items():
            end = consumer.highwater(tp) if tp in assigned else None  # it asserts the assignment
            if end is not None:
                metrics.CONSUMER_LAG.labels(name, tp.topic, tp.partition).set(end - partition[-1].offset - 1)
        offsets = {tp: partition[-1].offset + 1 for tp, partition in batches.items()}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
            log.warning("offsets not committed (partitions moved); the batch will be replayed: %r", exc)


async def dead_letter(
    producer: AIOKafkaProducer,
    topic: str,
    record: Record,
    stage: str,
    reason: str,
    part: tuple[int, bytes] | None = None,
) -> None:
    """Send ``record`` unchanged to the dead-letter ``topic``, the reason and origin in headers;
    or, with ``part`` (its position and value), only that value of a batch record."""
    index, value = part if part is not None else (None, record.value)
    where = f"{record.topic}[{record.partition}]@{record.offset}" + (f" #{index}" if part else "")
    log.error("dead-lettering %s: %s", where, reason)
    metrics.DEAD_LETTERS.labels(stage).inc()
    await producer.send_and_wait(
        topic, key=record.key, value=value, headers=dead_letter_headers(reason, stage, record, index)
    )


async def stage(conn: asyncpg.Connection, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    """COPY ``rows`` into this connection's temporary staging ``table`` (created with ``columns``
    on first use; ``ON COMMIT DELETE ROWS`` empties it when the transaction ends). Call it inside
    a transaction, then move the rows on with ``INSERT ... SELECT``."""
    await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} ({columns}) ON COMMIT DELETE ROWS")
    try:
        await conn.copy_records_to_table(table, records=rows)
    except (OverflowError, TypeError, ValueError) as exc:
        # A value asyncpg cannot encode (an integer out of range, say): refused, as executemany
        # reports it, not a reason to retry the batch forever.
        raise asyncpg.DataError(f"invalid input for COPY: {exc}") from exc


async def insert_rows(
    pool: asyncpg.Pool,
    write: WriteRows,
    rows: Sequence[tuple[T, tuple[Any, ...]]],
    refused: Callable[[T, str], Awaitable[None]],
) -> None:
    """``write`` all rows in one transaction. When PostgreSQL refuses a value (never a connection
    problem: that raises, and the batch is retried), write each half again the same way, down to
    single rows, and hand only the rows that fail alone to ``refused``: the outcome of going row
    by row, as Kafka Connect's JDBC sink does, in a few transactions instead of one per row."""
    if not rows:
        return
    try:
        async with pool.acquire() as conn, conn.transaction():
            await write(conn, [row for _, row in rows])
    except REFUSED as exc:
        if len(rows) == 1:
            await refused(rows[0][0], f"{type(exc).__name__}: {exc}")
            return
        middle = len(rows) // 2
        await insert_rows(pool, write, rows[:middle], refused)
        await insert_rows(pool, write, rows[middle:], refused)


async def serve_sink(
    settings: Settings,
    *,
    topic: str,
    group_id: str,
    make_write: Callable[[asyncpg.Pool, AIOKafkaProducer], WriteBatch],
    stop: asyncio.Event,
) -> None:
    """Run one sink until ``stop``: migrations, a pool, a dead-letter producer, the batch loop."""
    await migrate_url(settings.database_url)  # idempotent; concurrent starts wait on a lock
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    producer = AIOKafkaProducer(**client_options(settings), acks="all", enable_idempotence=True)
    consumer = new_consumer(settings, group_id, topic, max_records=settings.sink_batch_size)
    await producer.start()
    await consumer.start()
    log.info("sink %s consuming %s", group_id, topic)
    try:
        await run_batches(
            consumer,
            make_write(pool, producer),
            stop,
            max_records=settings.sink_batch_size,
            timeout_ms=settings.sink_batch_timeout_ms,
            name=group_id,
        )
    finally:
        await consumer.stop()
        await producer.stop()
        await pool.close()


def run_sink(
    settings: Settings,
    *,
    inputs: Sequence[tuple[str, str]],
    metrics_port: int,
    make_write: Callable[[asyncpg.Pool, AIOKafkaProducer], WriteBatch],
    also: dict[str, Callable[[asyncio.Event], Coroutine[Any, Any, None]]] | None = None,
) -> None:
    """Serve this process's metrics and run one sink loop per (topic, consumer group) of
    ``inputs``, and each of ``also`` (by name), together, in the foreground until SIGTERM/SIGINT
    (or until one of them fails)."""
    metrics.serve(metrics_port, settings.metrics_host)

    async def serve(stop: asyncio.Event) -> None:
        loops = {
            f"the sink loop of {group_id}": serve_sink(
                settings, topic=topic, group_id=group_id, make_write=make_write, stop=stop
            )
            for topic, group_id in inputs
        }
        loops.update({name: part(stop) for name, part in (also or {}).items()})
        await together(loops, stop)

    run_until_signalled(serve)


async def together(parts: dict[str, Coroutine[Any, Any, None]], stop: asyncio.Event) -> None:
    """Run ``parts`` (each until ``stop``) as tasks until each has ended. The first to end sets
    ``stop`` for the others; if it ended before ``stop`` was set, this raises its exception (or
    says it returned) once the others have stopped."""
    tasks = {asyncio.create_task(part, name=name): name for name, part in parts.items()}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        early = None if stop.is_set() else next(iter(done))
    finally:
        stop.set()
        await asyncio.wait(tasks)
    errors = [error for task in tasks if (error := task.exception()) is not None]
    if early is not None:
        error = early.exception()
        log.error("%s ended on its own (%r): stopping", tasks[early], error)
        raise error or RuntimeError(f"{tasks[early]} returned before it was stopped")
    if errors:
        raise errors[0]


def run_until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``serve(stop)`` in the foreground; SIGTERM or SIGINT sets ``stop``."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    asyncio.run(main())
