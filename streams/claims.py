"""Claims: the first version of an event wins, decided in PostgreSQL before the event is routed.

An event's *version* is its ``(event_type, payload)``, hashed by ``schemas.events.content_hash``.
Before routing a batch, the router claims every event of it in ``event_claims``, keyed by
``(app_id, event_id)``, in one statement, committed before any output is sent (``decide``; the
statements are in ``vdip.store.events``):

1. the events are deduplicated per key in Python, the first in batch (offset) order kept;
2. ``INSERT … SELECT FROM unnest …`` (autocommit) claims them all, the common case; when a key
   was claimed already, that fails, and ``INSERT … ON CONFLICT DO NOTHING RETURNING`` claims the
   keys no one claimed yet (those it returns are won);
3. a separate ``SELECT``, for the other keys only, reads the hash each was claimed with. It is a
   new statement, so it sees a concurrent claimer's row, which step 2 waited for. A claim made
   before claims existed (hash NULL, backfilled from ``data_events``) takes the hash of the
   batch's version that equals the stored event, if one does (a third statement, only then).

Each event is then ``won`` (its version was claimed now), ``identical`` (the claimed version:
routed again with the same delivery ids) or ``conflict`` (another version came first: it is only
dead-lettered). A claim is never committed for a record that is not routed afterwards (its offset
is committed only after its outputs), so the claimed version is the one that is stored.

While PostgreSQL does not answer, routing waits (``Claims.decide`` retries with a growing pause
and sets ``vdip_router_waiting_for_database``): routing v2 of an event to a queue could not be
undone.
"""

import asyncio
import logging
from collections.abc import Sequence
from typing import Literal, NamedTuple
from uuid import UUID

import asyncpg

from schemas import EventEnvelope
from schemas.events import content_hash
from vdip import metrics
from vdip.db import UNAVAILABLE, connect
from vdip.store.events import CLAIM, CLAIMED, FRESH, STORED_VERSION

log = logging.getLogger(__name__)

STATEMENT_TIMEOUT_S = 10.0


class Version(NamedTuple):
    app_id: str
    event_id: UUID
    content_hash: bytes
    event: EventEnvelope | None = None  # what the hash is of (to compare with a stored event)


def version_of(event: EventEnvelope) -> Version:
    return Version(event.app_id, event.event_id, content_hash(event.event_type, event.payload), event)


class Verdict(NamedTuple):
    outcome: Literal["won", "identical", "conflict"]
    first: bytes | None  # the claimed version's hash (None: a claim from before hashes, and none
    # of this batch's versions is the stored one)


async def decide(conn: asyncpg.Connection, versions: Sequence[Version]) -> list[Verdict]:
    """Claim ``versions`` (in batch order) on ``conn``, outside a transaction; a verdict for each.

    Keys go to PostgreSQL in batch order, not sorted: two claimers of one partition (a zombie and
    the new owner) meet its keys in the same order; any other deadlock is detected by PostgreSQL
    and the claimer it aborts tries again."""
    slot_of: dict[tuple[str, int], int] = {}  # (app_id, event_id) -> its key's slot
    slots: list[int] = []  # per version
    keys: list[Version] = []  # per slot, the first copy
    first_copies: list[int] = []  # per slot, the position of its first copy
    for position, version in enumerate(versions):
        slot = slot_of.setdefault((version.app_id, version.event_id.int), len(keys))
        if slot == len(keys):
            keys.append(version)
            first_copies.append(position)
        slots.append(slot)
    app_ids, event_ids = [k.app_id for k in keys], [k.event_id for k in keys]
    hashes = [k.content_hash for k in keys]
    try:
        await conn.execute(FRESH, app_ids, event_ids, hashes, timeout=STATEMENT_TIMEOUT_S)
        others = []
    except asyncpg.UniqueViolationError:
        others = await conn.fetch(CLAIM, app_ids, event_ids, hashes, timeout=STATEMENT_TIMEOUT_S)
    claimed: list[bytes | None] = list(hashes)  # the claimed version's hash, per slot
    won = [True] * len(keys)
    if others:
        lost = [row[0] - 1 for row in others]
        for slot in lost:
            won[slot], claimed[slot] = False, None
        rows = await conn.fetch(
            CLAIMED, [app_ids[s] for s in lost], [event_ids[s] for s in lost], timeout=STATEMENT_TIMEOUT_S
        )
        for row in rows:
            claimed[lost[row[0] - 1]] = row[1]
        legacy = {slot for slot in lost if claimed[slot] is None}
        if legacy:
            stored = await _stored_versions(
                conn, [v for v, s in zip(versions, slots, strict=True) if s in legacy]
            )
            for slot in legacy:
                claimed[slot] = stored.get((app_ids[slot], event_ids[slot]))
    verdicts = []
    for position, (version, slot) in enumerate(zip(versions, slots, strict=True)):
        first = claimed[slot]
        if version.content_hash != first:
            verdicts.append(Verdict("conflict", first))
        elif won[slot] and first_copies[slot] == position:
            verdicts.append(Verdict("won", first))
        else:
            verdicts.append(Verdict("identical", first))
    return verdicts


async def _stored_versions(
    conn: asyncpg.Connection, versions: list[Version]
) -> dict[tuple[str, UUID], bytes]:
    """Give claims made before hashes the hash of the one of ``versions`` that was stored."""
    distinct = list({(v.app_id, v.event_id, v.content_hash): v for v in versions}.values())
    rows = await conn.fetch(
        STORED_VERSION,
        [v.app_id for v in distinct],
        [v.event_id for v in distinct],
        [v.content_hash for v in distinct],
        [v.event.event_type if v.event else None for v in distinct],
        [v.event.payload if v.event else None for v in distinct],
        timeout=STATEMENT_TIMEOUT_S,
    )
    return {(row["app_id"], row["event_id"]): row["content_hash"] for row in rows}


class Claims:
    """``decide`` on a connection of its own (a pool would reset it, one more round trip, after
    each batch), waiting (failing closed) while PostgreSQL is away."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.conn: asyncpg.Connection | None = None

    async def decide(self, versions: Sequence[Version]) -> list[Verdict]:
        if not versions:
            return []
        pause = 0.5
        while True:
            try:
                if self.conn is None or self.conn.is_closed():
                    self.conn = await asyncio.wait_for(connect(self.database_url), STATEMENT_TIMEOUT_S)
                verdicts = await decide(self.conn, versions)
                metrics.ROUTER_WAITING_FOR_DATABASE.set(0)
                return verdicts
            except UNAVAILABLE as exc:
                metrics.ROUTER_WAITING_FOR_DATABASE.set(1)
                log.warning(
                    "routing waits for PostgreSQL: claiming %d event(s) failed (%r); trying again in"
                    " %.1f s (offsets stay put)",
                    len(versions),
                    exc,
                    pause,
                )
                await self.close()
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.terminate()
            self.conn = None
