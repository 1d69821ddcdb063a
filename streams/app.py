"""The stream worker: the faust application, wired from its pieces.

- ``streams.rulebook.RuleBook``: every application's newest rule set, read from the compacted
  ``routing-rules`` topic with a consumer of its own, caught up before each batch is routed.
- ``streams.router.Router``: the routing agent over ``events``, in batches, outputs acknowledged
  before offsets are committed (at-least-once; every effect downstream is keyed by ``event_id``
  or ``delivery_id``, so a replay after a crash changes nothing). A second one, the same code,
  routes the bulk lane ``events.bulk`` (large batches) a few records at a time, so that single
  events and small batches in ``events`` never wait behind a bulk backlog.
- ``streams.fold.StatisticsFold``: a timer folding counted status changes into statistics.

There is no faust table: while faust restores a changelog it already fetches, and it resumes the
stream partitions before it seeks them to their committed offsets; records fetched in between
were routed and then skipped past, losing events when the worker was killed and restarted.
"""

import asyncio
import logging
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


def create_app(settings: Settings) -> faust.App:
    app = faust.App(
        settings.worker_id,
        broker=[f"kafka://{address}" for address in settings.kafka_bootstrap.split(",")],
        broker_credentials=broker_credentials(settings),
        datadir=str(settings.worker_datadir),
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
    for lane, name, batch_size in (
        ("events", "router", settings.router_batch_size),
        ("events.bulk", "router-bulk", settings.router_bulk_batch_size),
    ):
        topic = app.topic(settings.topic(lane), value_type=bytes, key_type=bytes)
        app.agent(topic, name=name)(
            Router(app, settings, rulebook, Claims(settings.database_url), lane, batch_size).run
        )

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def refresh_rules() -> None:
        """Keep the rules (and their metrics) fresh while no event arrives."""
        if rulebook.started:
            await rulebook.catch_up()

    fold = StatisticsFold(settings)
    app.timer(interval=settings.statistics_interval_s)(fold.tick)
    return app


async def commit_start_offsets(
    settings: Settings, group: str, topics: list[str]
) -> dict[TopicPartition, int]:
    """Commit, in ``group``, the start of every partition of ``topics`` that has no committed offset.

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


async def prepare_group(settings: Settings) -> None:
    """Commit start offsets for the worker's group, waiting for the broker if it is not up yet."""
    sources = [settings.topic("events"), settings.topic("events.bulk")]
    while True:
        try:
            await commit_start_offsets(settings, settings.worker_id, sources)
            return
        except (KafkaConnectionError, KafkaTimeoutError) as exc:
            log.warning("Kafka unavailable (%r); retrying in 2 s", exc)
            await asyncio.sleep(2)


def run(settings: Settings, logging_config: dict[str, Any]) -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the worker below runs on it
    loop.run_until_complete(prepare_group(settings))
    metrics.serve(settings.worker_metrics_port, settings.metrics_host)
    new_worker(create_app(settings), logging_config).execute_from_commandline()


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
