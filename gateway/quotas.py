"""Ingest quotas: each application's events per second and burst (``vdip.applications.Quota``),
counted in one token bucket in PostgreSQL that every gateway process shares
(``vdip.store.quotas``), so that the quota holds however many gateways run.

A process takes an application's tokens for a short lease (``LEASE_S`` of its quota, at least
what the request needs) and spends them in memory, so most requests do not ask PostgreSQL;
tokens unspent when the lease ends are dropped. One request per application and process asks at a
time. A refusal is remembered in memory until the bucket will have refilled (at most a lease),
so a flood over quota costs PostgreSQL about one query per lease, not one per request.

Ingest never depends on PostgreSQL: when it is slower than ``quota_check_timeout_s`` or away,
each process counts the quota on its own, in memory, for the next ``PAUSE_S`` (with N gateways an
application may then send up to N times its quota).
"""

import asyncio
import logging
import math
import time
from dataclasses import dataclass

import asyncpg

from vdip import metrics
from vdip.applications import Quota
from vdip.store.quotas import take_tokens

log = logging.getLogger(__name__)

LEASE_S = 0.05  # tokens are taken for this long, about this much of the quota at once
PAUSE_S = 5.0  # after PostgreSQL failed to answer, buckets are counted in memory this long


@dataclass
class Lease:
    """An application's tokens in this process."""

    tokens: int = 0
    until: float = 0.0  # monotonic: unspent tokens are dropped then
    refused_until: float = 0.0  # until then, refuse without asking PostgreSQL
    retry_at: float = 0.0  # when the bucket will have what the refused request needed


@dataclass
class LocalBucket:
    """The quota counted in this process alone, while PostgreSQL is away."""

    tokens: float
    at: float

    def take(self, quota: Quota, cost: int, now: float) -> float | None:
        self.tokens = min(quota.burst, self.tokens + (now - self.at) * quota.events_per_s)
        self.at = now
        if self.tokens >= cost:
            self.tokens -= cost
            return None
        return (cost - self.tokens) / quota.events_per_s


class Quotas:
    def __init__(self, pool: asyncpg.Pool, timeout_s: float) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        self.leases: dict[str, Lease] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.local: dict[str, LocalBucket] = {}
        self.alone_until = 0.0  # counting in memory until then

    async def acquire(self, app_id: str, quota: Quota, cost: int) -> float | None:
        """None when ``cost`` events of ``app_id`` may go now; else the seconds until they may."""
        lease = self.leases.setdefault(app_id, Lease())
        if self._spend(lease, cost, time.monotonic()):
            return None
        if (wait := self.refused(app_id)) is not None:
            return wait
        async with self.locks.setdefault(app_id, asyncio.Lock()):
            now = time.monotonic()  # another request may have taken tokens meanwhile
            if self._spend(lease, cost, now):
                return None
            if now < lease.refused_until:
                return lease.retry_at - now
            if now < self.alone_until:
                return self._alone(app_id, quota, cost, now)
            metrics.INGEST_QUOTA.labels(app_id).set(quota.events_per_s)
            metrics.INGEST_QUOTA_BURST.labels(app_id).set(quota.burst)
            need = cost - lease.tokens
            want = max(need, math.ceil(quota.events_per_s * LEASE_S))
            try:
                async with self.pool.acquire(timeout=self.timeout_s) as conn:
                    taken, left = await take_tokens(
                        conn,
                        app_id,
                        rate=quota.events_per_s,
                        burst=quota.burst,
                        want=want,
                        need=need,
                        timeout_s=self.timeout_s,
                    )
            except Exception as exc:  # slow or away: this process counts alone for a while
                self.alone_until = time.monotonic() + PAUSE_S
                metrics.QUOTA_CHECKS_LOCAL.inc()
                log.warning(
                    "quota buckets unreachable (%r): counted in this process for %.0f s", exc, PAUSE_S
                )
                return self._alone(app_id, quota, cost, time.monotonic())
            now = time.monotonic()
            if taken:
                lease.tokens += taken - cost
                lease.until = now + LEASE_S
                return None
            wait = (need - left) / quota.events_per_s
            lease.retry_at = now + wait
            lease.refused_until = now + min(wait, LEASE_S)
            return wait

    def refused(self, app_id: str) -> float | None:
        """The seconds until ``app_id``'s bucket refills, while its last refusal here holds (as
        ``acquire`` would answer, without counting anything); else None."""
        lease = self.leases.get(app_id)
        now = time.monotonic()
        if lease is None or now >= lease.refused_until:
            return None
        return lease.retry_at - now

    @staticmethod
    def _spend(lease: Lease, cost: int, now: float) -> bool:
        if now >= lease.until:
            lease.tokens = 0
        if lease.tokens < cost:
            return False
        lease.tokens -= cost
        return True

    def _alone(self, app_id: str, quota: Quota, cost: int, now: float) -> float | None:
        bucket = self.local.setdefault(app_id, LocalBucket(quota.burst, now))
        return bucket.take(quota, cost, now)
