"""The webhook dispatcher: delivers each ``webhook`` delivery, signed, retried, never blocking others.

Two loops in one process:

- **intake** consumes ``deliveries.webhook`` and records each delivery in ``deliveries`` (message
  included), then commits the offsets: from there PostgreSQL holds it durably, and the table is
  the delay queue. A replayed record changes nothing.
- **dispatch** claims due deliveries (``next_attempt_at`` passed, a lease of ``webhook_lease_s``
  so that a crashed dispatcher's claims come back), at most ``webhook_concurrency_per_endpoint``
  per rule at a time: a slow or dead endpoint holds only its own slots, never another
  endpoint's, and retries wait in the table, not in a partition. An attempt ends within
  ``webhook_timeout_s`` in total, shorter than the lease (``Settings`` checks it), so a delivery
  is never sent twice at once.

Ordering: none is promised. Deliveries are attempted roughly in routing order, and a delivery
waiting for its retry does not hold back the ones after it.

Each attempt is signed the Standard Webhooks way (``webhook-id`` = the delivery id, the same on
every retry; ``webhook-timestamp``; ``webhook-signature``, with the previous secret's signature
too while a rotation's grace period lasts). Only a 2xx is success; redirects are not followed.
Anything else is retried on ``webhook_retry_schedule_s`` (±20 % jitter), or after the receiver's
``Retry-After`` on 429/503; a 410 disables the rule's destination, and so does failing without a
success for ``webhook_disable_after_s``. An address refused by ``sinks/addresses.py`` fails the
delivery at once.
"""

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaProducer

from schemas.rules import Delivery
from sinks.addresses import guarded_client, networks
from sinks.batching import (
    Record,
    Records,
    dead_letter,
    deliveries_of,
    executing,
    insert_rows,
    run_until_signalled,
    serve_sink,
)
from vdip import metrics
from vdip.db import create_pool
from vdip.errors import AddressRefused
from vdip.logs import event_context
from vdip.settings import Settings

log = logging.getLogger(__name__)

JITTER = 0.2

# ------------------------------------------------------------------------------ pure parts


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """A Standard Webhooks ``v1`` signature: HMAC-SHA256 of ``id.timestamp.body``, base64."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def request_body(delivery: Delivery) -> bytes:
    event = delivery.event
    return orjson.dumps(
        {
            "type": event.event_type,
            "timestamp": event.received_at,
            "delivery_id": str(delivery.delivery_id),
            "rule_id": delivery.rule_id,
            "data": event.model_dump(mode="json"),
        }
    )


def request_headers(delivery: Delivery, secrets: list[str], body: bytes, now: float) -> dict[str, str]:
    timestamp = int(now)
    msg_id = str(delivery.delivery_id)
    return {
        **delivery.destination_config.get("headers", {}),
        "content-type": "application/json",
        "user-agent": "vdip-webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
    }


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def retry_delay(
    attempts: int, schedule: list[float], retry_after: float | None, cap: float, rng: random.Random
) -> float | None:
    """Seconds before the next attempt after ``attempts`` failed ones; None: give up."""
    if attempts > len(schedule):
        return None
    if retry_after is not None:
        return min(retry_after, cap)
    return schedule[attempts - 1] * rng.uniform(1 - JITTER, 1 + JITTER)


@dataclass(frozen=True)
class Outcome:
    status_code: int | None = None
    error: str | None = None
    latency_ms: float = 0.0
    retry_after: float | None = None
    refused: bool = False  # the address was refused: retrying cannot help

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


# ------------------------------------------------------------------------------ one attempt


async def attempt(
    client: httpx.AsyncClient, delivery: Delivery, secrets: list[str], timeout_s: float
) -> Outcome:
    """One POST, cut off ``timeout_s`` after it started whatever the phase (the client's own
    timeouts are per phase: a receiver dripping its answer a byte at a time never trips them)."""
    url = delivery.destination_config["url"]
    body = request_body(delivery)
    headers = request_headers(delivery, secrets, body, time.time())
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            response = await client.post(url, content=body, headers=headers)
    except AddressRefused as exc:
        return Outcome(error=str(exc), refused=True)
    except TimeoutError:
        elapsed = (time.perf_counter() - started) * 1000
        return Outcome(error=f"no complete answer within {timeout_s} s", latency_ms=elapsed)
    except httpx.HTTPError as exc:
        elapsed = (time.perf_counter() - started) * 1000
        return Outcome(error=f"{type(exc).__name__}: {exc}"[:1000], latency_ms=elapsed)
    elapsed = (time.perf_counter() - started) * 1000
    retry_after = None
    if response.status_code in (429, 503):
        retry_after = parse_retry_after(response.headers.get("retry-after"), datetime.now(UTC))
    error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
    return Outcome(response.status_code, error, elapsed, retry_after)


# ------------------------------------------------------------------------------ intake

RECORD = """
INSERT INTO deliveries
    (delivery_id, app_id, event_id, rule_id, destination_type, status, message, next_attempt_at)
VALUES ($1, $2, $3, $4, 'webhook', 'pending', $5, now())
ON CONFLICT (delivery_id) DO UPDATE
    SET message = EXCLUDED.message, next_attempt_at = now(), updated_at = now()
    WHERE deliveries.message IS NULL
"""


class Intake:
    def __init__(self, pool: asyncpg.Pool, producer: AIOKafkaProducer, dlq_topic: str) -> None:
        self.pool = pool
        self.producer = producer
        self.dlq_topic = dlq_topic

    async def write(self, records: Records) -> None:
        rows = [
            (record, (d.delivery_id, d.event.app_id, d.event.event_id, d.rule_id, d.model_dump(mode="json")))
            for record, d, _ in await deliveries_of(records, "webhook", "url", self._refused)
        ]
        await insert_rows(self.pool, executing(RECORD), rows, self._refused)

    async def _refused(self, record: Record, reason: str) -> None:
        await dead_letter(self.producer, self.dlq_topic, record, "webhooks", reason)


# ------------------------------------------------------------------------------ dispatch

CLAIM = """
UPDATE deliveries SET claimed_until = now() + make_interval(secs => $2)
WHERE delivery_id IN (
    SELECT delivery_id FROM deliveries
    WHERE status IN ('pending', 'retrying') AND destination_type = 'webhook' AND message IS NOT NULL
      AND next_attempt_at <= now() AND (claimed_until IS NULL OR claimed_until < now())
      AND NOT (rule_id = ANY($3::bigint[]))
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED)
RETURNING delivery_id, rule_id, attempts, message
"""

ENDPOINT = """
SELECT webhook_secret, previous_webhook_secret, previous_secret_expires_at > now() AS previous_valid,
       destination_disabled_reason
FROM routing_rules WHERE rule_id = $1
"""

SET_OUTCOME = """
UPDATE deliveries SET status = $2, attempts = attempts + $3, last_status_code = $4, last_error = $5,
       last_latency_ms = $6, next_attempt_at = now() + make_interval(secs => $7), claimed_until = NULL,
       delivered_at = CASE WHEN $2 = 'delivered' THEN now() END, updated_at = now()
WHERE delivery_id = $1
"""

FAILING = """
UPDATE routing_rules SET destination_failing_since = coalesce(destination_failing_since, now())
WHERE rule_id = $1 RETURNING extract(epoch FROM now() - destination_failing_since)
"""

DISABLE = """
UPDATE routing_rules SET destination_disabled_at = now(), destination_disabled_reason = $2
WHERE rule_id = $1 AND destination_disabled_at IS NULL
"""


class Dispatcher:
    def __init__(self, pool: asyncpg.Pool, client: httpx.AsyncClient, settings: Settings) -> None:
        self.pool = pool
        self.client = client
        self.settings = settings
        self.busy: dict[int, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.rng = random.Random()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                claimed = await self.claim()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("claiming deliveries failed, retrying: %r", exc)
                claimed = 0
            if not claimed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.webhook_poll_interval_s)
        if self.tasks:  # let attempts under way finish; their leases cover a crash
            await asyncio.wait(self.tasks, timeout=self.settings.webhook_timeout_s + 1)

    async def claim(self) -> int:
        per_rule = self.settings.webhook_concurrency_per_endpoint
        full = [rule for rule, n in self.busy.items() if n >= per_rule]
        rows = await self.pool.fetch(CLAIM, 100, self.settings.webhook_lease_s, full)
        extra = []
        for row in rows:
            rule_id = row["rule_id"]
            if self.busy.get(rule_id, 0) >= per_rule:
                extra.append(row["delivery_id"])
                continue
            self.busy[rule_id] = self.busy.get(rule_id, 0) + 1
            task = asyncio.create_task(self.deliver(rule_id, row["attempts"], row["message"]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if extra:  # over this rule's bound: back in the queue, for the next claim
            await self.pool.execute(
                "UPDATE deliveries SET claimed_until = NULL WHERE delivery_id = ANY($1::uuid[])", extra
            )
        return len(rows) - len(extra)

    async def deliver(self, rule_id: int, attempts: int, message: dict[str, Any]) -> None:
        try:
            delivery = Delivery.model_validate(message)
            endpoint = await self.pool.fetchrow(ENDPOINT, rule_id)
            if endpoint is None or endpoint["webhook_secret"] is None:
                await self.finish(delivery, attempts, Outcome(error="the rule no longer exists"), final=True)
            elif endpoint["destination_disabled_reason"] is not None:
                reason = f"destination disabled: {endpoint['destination_disabled_reason']}"
                await self.finish(delivery, attempts, Outcome(error=reason), final=True)
            else:
                secrets = [endpoint["webhook_secret"]]
                if endpoint["previous_valid"] and endpoint["previous_webhook_secret"]:
                    secrets.append(endpoint["previous_webhook_secret"])
                outcome = await attempt(self.client, delivery, secrets, self.settings.webhook_timeout_s)
                await self.finish(delivery, attempts, outcome)
        except Exception:  # the lease brings the delivery back
            log.exception("delivering for rule %s failed", rule_id)
        finally:
            self.busy[rule_id] -= 1
            if not self.busy[rule_id]:
                del self.busy[rule_id]

    async def finish(self, delivery: Delivery, attempts: int, outcome: Outcome, final: bool = False) -> None:
        rule_id, tried = delivery.rule_id, 0 if final else 1
        async with self.pool.acquire() as conn, conn.transaction():
            if outcome.delivered:
                status, wait = "delivered", None
                await conn.execute(
                    "UPDATE routing_rules SET destination_failing_since = NULL WHERE rule_id = $1", rule_id
                )
            elif final or outcome.refused:
                status, wait = "failed", None
            elif outcome.status_code == 410:
                status, wait = "failed", None
                await self.disable(conn, rule_id, "the endpoint answered 410 Gone")
            else:
                failing_s = await conn.fetchval(FAILING, rule_id)
                wait = retry_delay(
                    attempts + 1,
                    self.settings.webhook_retry_schedule_s,
                    outcome.retry_after,
                    self.settings.webhook_max_retry_after_s,
                    self.rng,
                )
                status = "retrying" if wait is not None else "failed"
                if failing_s is not None and float(failing_s) >= self.settings.webhook_disable_after_s:
                    status, wait = "failed", None
                    reason = f"failing without a success for {timedelta(seconds=int(failing_s))}"
                    await self.disable(conn, rule_id, reason)
            await conn.execute(
                SET_OUTCOME,
                delivery.delivery_id,
                status,
                tried,
                outcome.status_code,
                outcome.error,
                outcome.latency_ms if tried else None,
                wait,
            )
        metrics.WEBHOOK_ATTEMPTS.labels(status).inc()
        if tried:
            metrics.WEBHOOK_SECONDS.observe(outcome.latency_ms / 1000)
        log.info(
            "delivery %s (rule %s): %s after attempt %d (%s)",
            delivery.delivery_id,
            rule_id,
            status,
            attempts + tried,
            outcome.status_code or outcome.error,
            extra=event_context(delivery.event),
        )

    async def disable(self, conn: asyncpg.Connection, rule_id: int, reason: str) -> None:
        if await conn.execute(DISABLE, rule_id, reason) == "UPDATE 1":
            log.warning("rule %s: webhook destination disabled: %s", rule_id, reason)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """The intake and the dispatcher, until ``stop``."""
    intake = serve_sink(
        settings,
        topic=settings.topic("deliveries.webhook"),
        group_id=settings.webhook_group_id,
        make_write=lambda pool, producer: Intake(pool, producer, settings.topic("events.dlq")).write,
        stop=stop,
    )
    intake_task = asyncio.create_task(intake)
    pool = await create_pool(settings.database_url, min_size=1, max_size=4)
    allowed = networks(settings.webhook_allowed_networks)
    try:
        async with guarded_client(allowed, settings.webhook_timeout_s) as client:
            await Dispatcher(pool, client, settings).run(stop)
    finally:
        stop.set()
        await intake_task
        await pool.close()


def run(settings: Settings) -> None:
    """Run the webhook dispatcher in the foreground until SIGTERM/SIGINT."""
    metrics.serve(settings.webhooks_metrics_port, settings.metrics_host)
    run_until_signalled(lambda stop: serve(settings, stop))
