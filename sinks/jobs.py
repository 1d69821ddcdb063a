"""The job runner, in the event store's process: it claims the oldest job whose lease is free
(``vdip.store.jobs``), runs it (a replay: ``sinks.replay``; an application's deletion:
``sinks.purge``; a subject's: ``sinks.deletions``) while holding its lease, and takes the
next. A job whose runner was killed is taken up again from its cursor once its lease
(``job_lease_s``) has run out; one whose runner stops (SIGTERM) is released at once.

While PostgreSQL or Kafka is away, or Kafka refuses a record for the moment, the job waits and goes
on from its cursor; a refusal for good (a queue topic Kafka will never make) or an error of ours
ends it ``failed``, with the error.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from sinks.deletions import Eraser
from sinks.purge import Purger
from sinks.replay import Replayer
from vdip.db import UNAVAILABLE, create_pool
from vdip.kafka import client_options
from vdip.settings import Settings
from vdip.store import jobs
from vdip.topics import REFUSED_FOR_GOOD

log = logging.getLogger(__name__)


# Runs a claimed job (its row) until it ends ("done", "cancelled") or the event is set ("stopped").
Run = Callable[[Any, asyncio.Event], Awaitable[str]]


async def run_one(pool: asyncpg.Pool, run: Run, job: Any, stop: asyncio.Event) -> bool:
    """Run a claimed job until it ends or ``stop``. After a failure of the moment the job is
    released (taken up again from its cursor) and this says so: the runner pauses."""
    job_id = job["job_id"]
    log.info("job %s (%s of %s) runs from %s", job_id, job["kind"], job["app_id"], job["cursor_at"])
    try:
        ended = await run(job, stop)
    except REFUSED_FOR_GOOD as exc:
        await _fail(pool, job_id, exc)
    except (*UNAVAILABLE, KafkaError, OSError) as exc:
        log.warning("job %s waits (%r); it goes on from its cursor", job_id, exc)
        with contextlib.suppress(*UNAVAILABLE):
            await jobs.release(pool, job_id)
        return True
    except Exception as exc:
        log.exception("job %s failed", job_id)
        await _fail(pool, job_id, exc)
    else:
        if ended == "stopped":
            await jobs.release(pool, job_id)
        log.info("job %s: %s", job_id, ended)
    return False


async def _fail(pool: asyncpg.Pool, job_id: Any, exc: Exception) -> None:
    await jobs.finish(pool, job_id, "failed", f"{type(exc).__name__}: {exc}"[:1000])


async def keep_running(settings: Settings, stop: asyncio.Event) -> None:
    """Claim and run jobs, one at a time, until ``stop``; waits while PostgreSQL is away."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    producer = AIOKafkaProducer(
        **client_options(settings), client_id="vdip-jobs", acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    runs: dict[str, Run] = {
        "replay": Replayer(pool, producer, settings).run,
        "purge": Purger(pool, producer, settings).run,
        "deletion": Eraser(pool, settings).run,
    }
    try:
        while not stop.is_set():
            try:
                job = await jobs.claim(pool, settings.job_lease_s)
            except UNAVAILABLE as exc:
                log.warning("no job claimed this time: %r", exc)
                job = None
            if job is not None and not await run_one(pool, runs[job["kind"]], job, stop):
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.job_poll_interval_s)
    finally:
        await producer.stop()
        await pool.close()
