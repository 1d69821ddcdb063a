"""An application's deletion (``DELETE /api/applications/{app_id}``), as a job of the event store's
process (``sinks.jobs``). The API has already, in one transaction, deleted its rules (and published
the empty rule set, so the router routes nothing more for it) and its keys, and disabled it. Then:

1. **It waits for what is in flight.** First ``app_cache_ttl_s``: every gateway has forgotten the
   application's keys, so none accepts its events any more. Then until the pipeline has gone
   through what was accepted before: the workers past the ends of ``events`` and ``events.bulk``
   as they were, then the sinks past the ends of what the workers write (``purge_drain_timeout_s``
   at most for each, after which it goes on and says so in the log).
2. **It deletes its events** with their deliveries, ``purge_batch`` per transaction, counted in the
   job's progress.
3. **It drops its destination tables and deletes its queue topics** (those it owns).
4. **It deletes the rest, in one transaction:** what deliveries are left, its event id claims, its
   statistics, its destinations' ownership, its audit trail, its quota bucket, its other jobs, its
   rules again (a rule made meanwhile; the empty rule set is published again) and its row.

Each step can run again: a job taken up after a kill goes through them from the start, and finds
done what was done. The job's own row stays, as the receipt of the deletion.
"""

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from vdip import rulesets
from vdip.settings import Settings
from vdip.store import (
    applications,
    audit,
    deliveries,
    events,
    jobs,
    owners,
    quotas,
    rules,
    statistics,
    suppressions,
    tables,
)
from vdip.topics import caught_up, consumers, delete_topics, end_offsets

log = logging.getLogger(__name__)


class Purger:
    def __init__(self, pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings) -> None:
        self.pool = pool
        self.producer = producer
        self.settings = settings

    async def run(self, job: Any, stop: asyncio.Event) -> str:
        """Purge the job's application; ``done``, or ``stopped`` when ``stop`` was set first."""
        app_id, job_id, settings = job["app_id"], job["job_id"], self.settings
        made = job["created_at"].timestamp()
        if await pause(stop, made + settings.app_cache_ttl_s - time.time()):  # the gateways forgot it
            return "stopped"
        if not await drained(settings, stop, app_id):
            return "stopped"
        while not stop.is_set():
            async with self.pool.acquire() as conn, conn.transaction():
                ids = await events.delete_batch_of_app(conn, app_id, settings.purge_batch)
                if ids:
                    await deliveries.delete_of_events(conn, app_id, ids)
                    await statistics.forget_counted(conn, app_id, ids)
                await jobs.advance(
                    conn,
                    job_id,
                    cursor=None,
                    scanned=len(ids),
                    sent=0,
                    skipped=0,
                    lease_s=settings.job_lease_s,
                )
            if not ids:
                break
        if stop.is_set():
            return "stopped"
        owned = await owners.owned_by(self.pool, app_id)
        for destination in owned:
            if destination.destination_type == "database_table":
                await tables.drop_table(self.pool, settings.tables_schema, destination.name)
        await delete_topics(
            settings, [settings.topic(d.name) for d in owned if d.destination_type == "queue"]
        )
        async with self.pool.acquire() as conn, conn.transaction():
            await rules.lock_app(conn, app_id)
            await rules.delete_rules_of_app(conn, app_id)
            await rulesets.publish_rules(conn, self.publish, settings, app_id)
            await deliveries.delete_all_of_app(conn, app_id)
            await events.delete_claims_of_app(conn, app_id)
            await statistics.forget_app(conn, app_id)
            await owners.release_all(conn, app_id)
            await suppressions.delete_of_app(conn, app_id)
            await audit.forget_app(conn, app_id)
            await quotas.forget_bucket(conn, app_id)
            await jobs.delete_others_of_app(conn, app_id, job_id)
            await applications.delete_application(conn, app_id)
            await jobs.finish(conn, job_id, "done")
        log.info("application %s deleted: its data purged", app_id)
        return "done"

    async def publish(self, topic: str, key: bytes, value: bytes | None) -> None:
        await (await self.producer.send(topic, value, key=key))


async def drained(settings: Settings, stop: asyncio.Event, app_id: str) -> bool:
    """Until the pipeline has gone through what Kafka holds now: the workers past the ends of
    ``events`` and ``events.bulk`` as they are, then the sinks past the ends of what the workers
    wrote (``purge_drain_timeout_s`` at most for each stage, then it says so in the log and goes
    on); False when ``stop`` came first."""
    groups = consumers(settings)
    workers = groups.pop("worker") + groups.pop("bulk-worker")
    sinks = [pair for each in groups.values() for pair in each]
    for stage in (workers, sinks):  # the workers first: what they write is in the sinks' marks
        marks = [(group, await end_offsets(settings, settings.topic(topic))) for group, topic in stage]
        deadline = time.monotonic() + settings.purge_drain_timeout_s
        for group, mark in marks:
            while not await caught_up(settings, group, mark):
                if time.monotonic() > deadline:
                    log.warning("a job of %s: %s is behind; it goes on all the same", app_id, group)
                    break
                if await pause(stop, 0.5):
                    return False
    return True


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` (if positive); whether ``stop`` was set."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
