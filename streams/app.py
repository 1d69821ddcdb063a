"""The stream worker: the faust application, wired from its pieces.

- ``streams.rulebook.RuleBook``: every application's newest rule set, read from the compacted
  ``routing-rules`` topic with a consumer of its own, caught up before each batch is routed.
- ``streams.router.Router``: the routing agent over ``events``, in batches, outputs acknowledged
  before offsets are committed (at-least-once; every effect downstream is keyed by ``event_id``
  or ``delivery_id``, so a replay after a crash changes nothing).
- ``streams.fold.StatisticsFold``: a timer folding counted status changes into statistics.

The bulk lane, ``events.bulk`` (large batches), is routed by the same code in a worker process of
its own (``vdip bulk-worker``: its own consumer group, producer, event loop and CPU time, at a
lower priority), so that single events and small batches in ``events`` never wait behind a bulk
backlog, neither in Kafka nor for the CPU.

There is no faust table: while faust restores a changelog it already fetches, and it resumes the
stream partitions before it seeks them to their committed offsets; records fetched in between
were routed and then skipped past, losing events when the worker was killed and restarted.
"""

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from streams.claims import Claims
from streams.fold import StatisticsFold
from streams.router import Router
from streams.rulebook import RuleBook
from vdip import metrics
from vdip.kafka import broker_credentials, client_options
from vdip.settings import Settings
from vdip.topics import partitions_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lane:
    """What one worker process routes: ``vdip worker`` the interactive lane, ``vdip bulk-worker``
    the bulk lane."""

    source: str  # the topic it routes (its routed events go to events.routed[.bulk])
    group: str  # faust's app id: its consumer group
    batch_size: int  # records routed together
    datadir: Path
    metrics_port: int
    folds: bool  # whether it folds statistics (one process does)
    nice: int  # added to the process's CPU niceness


def lane_of(settings: Settings, bulk: bool = False) -> Lane:
    if bulk:
        return Lane(
            source="events.bulk",
            group=settings.bulk_worker_id,
            batch_size=settings.router_bulk_batch_size,
            datadir=settings.worker_datadir / "bulk",
            metrics_port=settings.bulk_worker_metrics_port,
            folds=False,
            nice=settings.bulk_worker_nice,
        )
    return Lane(
        source="events",
        group=settings.worker_id,
        batch_size=settings.router_batch_size,
        datadir=settings.worker_datadir,
        metrics_port=settings.worker_metrics_port,
        folds=True,
        nice=0,
    )


def create_app(settings: Settings, lane: Lane) -> faust.App:
    app = faust.App(
        lane.group,
        broker=[f"kafka://{address}" for address in settings.kafka_bootstrap.split(",")],
        broker_credentials=broker_credentials(settings),
        datadir=str(lane.datadir),
        value_serializer="raw",
        key_serializer="raw",
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # One produce request at a time per broker (aiokafka), carrying one batch per partition:
        # with 16 KiB batches (the default), every routed batch record (about 40 KiB for 100
        # events) cost a round trip of its own. The router resends a refused record alone.
        producer_max_batch_size=512 * 1024,
        consumer_max_fetch_size=4 * 1024 * 1024,
        # Re-read metadata every 30 s (not 5 min): a group that joined while the broker was still
        # loading its metadata after a restart, and so got no partitions, rebalances soon.
        consumer_metadata_max_age_ms=30_000,
        # A worker that died is out of the group after 8 s (faust's default: 60 s), so its
        # partitions move to a live worker, or to its own restart, without a minute's stall.
        broker_session_timeout=8.0,
        broker_heartbeat_interval=1.0,  # the others hear of a rebalance within a second
        topic_replication_factor=settings.replication_factor,  # queue topics created on first use
        topic_partitions=3,
        web_enabled=False,
    )
    rulebook = RuleBook(settings, settings.topic("routing-rules"))
    topic = app.topic(settings.topic(lane.source), value_type=bytes, key_type=bytes)
    router = Router(app, settings, rulebook, Claims(settings.database_url), lane.source, lane.batch_size)
    app.agent(topic, name="router")(router.run)

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def refresh_rules() -> None:
        """Keep the rules (and their metrics) fresh while no event arrives."""
        if rulebook.started:
            await rulebook.catch_up()

    if lane.folds:
        fold = StatisticsFold(settings)
        app.timer(interval=settings.statistics_interval_s)(fold.tick)
    return app


async def commit_start_offsets(
    settings: Settings, group: str, topics: list[str], earlier_group: str | None = None
) -> dict[TopicPartition, int]:
    """Commit, in ``group``, the start of every partition of ``topics`` that has no committed offset
    (or ``earlier_group``'s committed offset, where that group routed the partition before).

    faust resumes a newly assigned partition before it seeks it to its committed offset; where
    there is none, records fetched in between are routed and the partition then goes on from
    wherever the fetcher was, past records never routed, whose offsets faust later commits (a
    worker killed before its first commit lost events this way). With a committed offset, the
    seek lands where the fetch began: at worst records are routed twice. Done before the worker
    joins its group; a group that already has members committed its offsets itself.
    """
    partitions = await partitions_of(settings, *topics)
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        missing = [tp for tp in partitions if await consumer.committed(tp) is None]
        if not missing:
            return {}
        starts: dict[TopicPartition, int] = await consumer.beginning_offsets(missing)
        if earlier_group is not None:
            starts.update(await committed_offsets(settings, earlier_group, missing))
        consumer.assign(missing)
        try:
            await consumer.commit(starts)
        except KafkaError as exc:  # the group has members: they commit for themselves
            log.warning("could not commit start offsets for %s: %r", group, exc)
            return {}
        log.info("committed start offsets for %s: %s", group, starts)
        return starts
    finally:
        await consumer.stop()


async def committed_offsets(
    settings: Settings, group: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """``group``'s committed offsets of those of ``partitions`` that have one."""
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        found = {tp: await consumer.committed(tp) for tp in partitions}
        return {tp: offset for tp, offset in found.items() if offset is not None}
    finally:
        await consumer.stop()


async def prepare_group(settings: Settings, lane: Lane) -> None:
    """Commit start offsets for the lane's group, waiting for the broker if it is not up yet. The
    bulk lane starts where the interactive worker's group left it, when that group routed both."""
    earlier = settings.worker_id if lane.group != settings.worker_id else None
    while True:
        try:
            await commit_start_offsets(settings, lane.group, [settings.topic(lane.source)], earlier)
            return
        except (KafkaConnectionError, KafkaTimeoutError) as exc:
            log.warning("Kafka unavailable (%r); retrying in 2 s", exc)
            await asyncio.sleep(2)


def run(settings: Settings, logging_config: dict[str, Any], bulk: bool = False) -> None:
    """Run the worker of a lane in the foreground until SIGTERM/SIGINT."""
    lane = lane_of(settings, bulk)
    lane.datadir.mkdir(parents=True, exist_ok=True)  # faust makes only its last part
    if lane.nice:
        os.nice(lane.nice)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the worker below runs on it
    loop.run_until_complete(prepare_group(settings, lane))
    metrics.serve(lane.metrics_port, settings.metrics_host)
    new_worker(create_app(settings, lane), logging_config).execute_from_commandline()


def new_worker(app: faust.App, logging_config: dict[str, Any]) -> faust.Worker:
    level = logging_config["root"]["level"]
    # quiet: faust would print bare lines of its own ("-INT-" on SIGINT, a blank line when it stops at once).
    worker = faust.Worker(
        app, loglevel=level, logging_config=logging_config, redirect_stdouts=False, quiet=True
    )
    # faust's terminal spinner, at WARNING and above, sets the root logger to DEBUG and adds a
    # handler: every debug line of every library (one per produced record) would then be built.
    worker.spinner = None
    return worker
