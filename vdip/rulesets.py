"""Writing routing rules: each change and the publish of its application's rule set, as one.

A write runs in one transaction that locks the application, applies the change (``vdip.store.rules``)
and publishes the application's complete rule set to the compacted ``routing-rules`` topic,
waiting for Kafka's acknowledgement before it commits: if Kafka cannot be reached the write
fails and nothing changed in PostgreSQL.

A publish that timed out may still reach Kafka later (the record stays in the producer), and a
commit can fail after the publish: either way the topic would hold a rule set that PostgreSQL does
not. So after any failed write the ``Republisher`` publishes the stored rule set again, under the
application's lock, until Kafka acknowledges it. The producer sends the records of a key in order
(idempotent, one request at a time per partition), so that record lands after the late one, and
the topic ends equal to PostgreSQL.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from schemas.rules import RuleFields
from vdip.db import UNAVAILABLE
from vdip.errors import BrokerUnavailable, DestinationOwned
from vdip.settings import Settings
from vdip.store import owners
from vdip.store import rules as store

log = logging.getLogger(__name__)

# Produces one record (None: a tombstone) and returns once Kafka acknowledged it; raises
# BrokerUnavailable otherwise (the gateway's EventProducer.publish).
Publish = Callable[[str, bytes, bytes | None], Awaitable[None]]
UNPUBLISHED: tuple[type[BaseException], ...] = (BrokerUnavailable, *UNAVAILABLE)
R = TypeVar("R")


async def publish_rules(conn: asyncpg.Connection, publish: Publish, settings: Settings, app_id: str) -> None:
    """Publish the application's rule set as ``conn`` sees it (no rule and no suppression left: a
    tombstone)."""
    snapshot = await store.snapshot(conn, app_id)
    value = snapshot.model_dump_json().encode() if snapshot.rules or snapshot.suppressions else None
    await publish(settings.topic("routing-rules"), app_id.encode(), value)


async def claim_destination(conn: asyncpg.Connection, fields: RuleFields) -> None:
    """Claim the rule's queue topic or table for its application (the first rule naming it claims
    it); raise ``DestinationOwned`` if another application owns it. Call it in the rule's write."""
    key = owners.NAME_KEYS.get(fields.destination_type)
    name = fields.destination_config.get(key) if key else None
    if isinstance(name, str):
        owner = await owners.claim(conn, fields.destination_type, name, fields.app_id)
        if owner != fields.app_id:
            raise DestinationOwned(fields.destination_type, name)


class Republisher:
    """Publishes an application's stored rule set again, until Kafka acknowledges it, after a
    write that failed once its publish may have started (see the module's doc)."""

    def __init__(self, pool: asyncpg.Pool, publish: Publish, settings: Settings) -> None:
        self._pool = pool
        self._publish = publish
        self._settings = settings
        self._apps: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def schedule(self, app_id: str) -> None:
        self._apps.add(app_id)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        pause = 0.5
        while self._apps:
            for app_id in list(self._apps):
                self._apps.discard(app_id)  # scheduled again meanwhile: published again
                published = False
                try:
                    published = await self._publish_stored(app_id)
                finally:
                    if not published:
                        self._apps.add(app_id)
            if self._apps:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)

    async def _publish_stored(self, app_id: str) -> bool:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await store.lock_app(conn, app_id)  # no other write's record in between
                await publish_rules(conn, self._publish, self._settings, app_id)
        except UNPUBLISHED as exc:
            log.warning("publishing the stored rules of %s again failed: %r", app_id, exc)
            return False
        log.info("published the stored rules of %s again", app_id)
        return True

    async def stop(self) -> None:
        """A last try for what is still pending, before the producer flushes the late records."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for app_id in list(self._apps):
            if not await self._publish_stored(app_id):
                log.error(
                    "the rules of %s on Kafka may differ from PostgreSQL's until the next write", app_id
                )


async def write_rules(
    pool: asyncpg.Pool,
    publish: Publish,
    republisher: Republisher,
    settings: Settings,
    app_id: str,
    change: Callable[[asyncpg.Connection], Awaitable[R | None]],
) -> R | None:
    """Apply ``change`` (None: nothing to change, nothing published) and publish the application's
    rule set, in one transaction (see the module's doc): a rule's change, or any change to what
    is published with the rules (its suppressions, its deletion)."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            await store.lock_app(conn, app_id)
            rule = await change(conn)
            if rule is not None:
                await publish_rules(conn, publish, settings, app_id)
    except BaseException:
        # A publish that timed out may land later; one that landed may not be committed.
        republisher.schedule(app_id)
        raise
    return rule
