"""The gateway's read-only conflict check: is a client-chosen event id claimed by another version?
(Its two queries are in ``vdip.store.events``.)

The router claims each event's version, ``(event_type, payload)``, before routing it
(``streams/claims.py``): the first version of an event wins, and a differing retry is
dead-lettered. When the claim is already there, the gateway tells the client at once (409)
instead of accepting an event that will not be stored. Only ids the client chose (``event_id``,
``Idempotency-Key``) are checked: a new UUIDv7 cannot be claimed.

Ingest never depends on PostgreSQL: a check that takes longer than ``conflict_check_timeout_s``
or fails is skipped (the event is accepted, and dead-lettered by the router if it conflicts), and
the next ``conflict_check_pause_s`` skip the check altogether.
"""

import logging
import time
import uuid
from collections.abc import Sequence
from typing import NamedTuple

import asyncpg

from schemas.events import content_hash
from vdip import metrics
from vdip.store.events import CLAIMED_OF_APP, STORED_OTHER_VERSION

log = logging.getLogger(__name__)


class Candidate(NamedTuple):
    event_id: uuid.UUID
    event_type: str
    payload: dict[str, object]


class ConflictCheck:
    def __init__(self, pool: asyncpg.Pool, timeout_s: float, pause_s: float) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        self.skip_until = 0.0

    async def conflicting(self, app_id: str, candidates: Sequence[Candidate]) -> set[uuid.UUID]:
        """The ids among ``candidates`` whose claimed version is another one (fails open: none)."""
        if not candidates or time.monotonic() < self.skip_until:
            if candidates:
                metrics.CONFLICT_CHECKS_SKIPPED.inc()
            return set()
        try:
            # asyncpg's own timeouts, not asyncio.wait_for: a query cancelled from outside can
            # leave its connection mid-operation for the next user of the pool.
            async with self.pool.acquire(timeout=self.timeout_s) as conn:
                return await self._conflicting(conn, app_id, candidates)
        except Exception as exc:  # the check only advises: whatever fails, ingest goes on
            self.skip_until = time.monotonic() + self.pause_s
            metrics.CONFLICT_CHECKS_SKIPPED.inc()
            log.warning(
                "conflict check skipped (%r): events accepted unchecked; the next %.0f s skip it too",
                exc,
                self.pause_s,
            )
            return set()

    async def _conflicting(
        self, conn: asyncpg.Connection, app_id: str, candidates: Sequence[Candidate]
    ) -> set[uuid.UUID]:
        claims = await conn.fetch(
            CLAIMED_OF_APP, app_id, [c.event_id for c in candidates], timeout=self.timeout_s
        )
        if not claims:
            return set()
        hashes = {row["event_id"]: row["content_hash"] for row in claims}
        found: set[uuid.UUID] = set()
        legacy: list[Candidate] = []
        for candidate in candidates:
            if candidate.event_id not in hashes:
                continue
            first = hashes[candidate.event_id]
            if first is None:
                legacy.append(candidate)
            elif first != content_hash(candidate.event_type, candidate.payload):
                found.add(candidate.event_id)
        if legacy:
            rows = await conn.fetch(
                STORED_OTHER_VERSION,
                app_id,
                [c.event_id for c in legacy],
                [c.event_type for c in legacy],
                [c.payload for c in legacy],
                timeout=self.timeout_s,
            )
            found.update(row["event_id"] for row in rows)
        return found
