"""The webhook dispatcher: delivers each ``webhook`` delivery, signed, retried, never blocking others.

Two loops in one process:

- **intake** consumes ``deliveries.webhook``, records each batch of deliveries in ``deliveries``
  (message included) in one statement, then commits the offsets: from there PostgreSQL holds
  them durably, and the table is the delay queue. A replayed record changes nothing.
- **dispatch** claims, in one statement, as many due deliveries of each webhook rule as it may
  start now (the rule's ``max_in_flight``, default ``webhook_concurrency_per_endpoint``, less
  what is in flight; no more than its ``max_per_second`` allows), each with a lease of
  ``webhook_lease_s`` so that a crashed dispatcher's claims come back. It claims whenever the
  intake recorded deliveries and whenever an attempt ended (its slot is free at once, before
  its outcome is written), and every ``webhook_poll_interval_s`` for retries coming due and
  leases running out. When the lease covers two attempts (the default), it claims up to twice
  an endpoint's max_in_flight: the ones beyond its free slots wait in this process and start the
  moment a slot frees, without a round trip to PostgreSQL (each within one attempt's time of
  its claim, so well within its lease); stopping puts them back. A slow or dead endpoint holds
  only its own slots, never another endpoint's, and retries wait in the table, not in a
  partition. Successes that end while others are being recorded go together in the next
  statement (none waits for others: what a killed dispatcher leaves unrecorded is sent again).
  An attempt ends within ``webhook_timeout_s`` in total, shorter than the lease (``Settings``
  checks it), so a delivery is never sent twice at once, by this dispatcher or another.

The body is built from the message as recorded, without validating it again; a success is
logged at DEBUG only (a failed attempt at INFO). If the intake or the dispatch loop ends on
its own, the other stops and the process exits with the error.

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
import functools
import hashlib
import hmac
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

import aiohttp
import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from pydantic import ConfigDict, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from schemas import DeliveryStatus
from schemas.events import EnvelopeView, EventEnvelope, EventMetadata
from schemas.rules import MAX_IN_FLIGHT, Delivery
from sinks.addresses import WebhookClient, networks
from sinks.batching import (
    Record,
    Records,
    dead_letter,
    insert_rows,
    run_until_signalled,
    serve_sink,
    together,
)
from vdip import metrics
from vdip.db import UNAVAILABLE, create_pool, migrate_url
from vdip.errors import AddressRefused
from vdip.settings import WEBHOOK_LEASE_MARGIN_S, Settings
from vdip.store import deliveries, rules

log = logging.getLogger(__name__)

JITTER = 0.2
ORPHANS_EVERY_S = 1.0  # deliveries of a deleted rule are failed this often

# ------------------------------------------------------------------------------ pure parts


@functools.lru_cache(maxsize=1024)
def _keyed(secret: str) -> hmac.HMAC:
    """HMAC-SHA256 keyed with ``secret``, nothing hashed yet: each signature copies it."""
    return hmac.new(base64.b64decode(secret.removeprefix("whsec_")), digestmod=hashlib.sha256)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """A Standard Webhooks ``v1`` signature: HMAC-SHA256 of ``id.timestamp.body``, base64."""
    mac = _keyed(secret).copy()
    mac.update(f"{msg_id}.{timestamp}.".encode())
    mac.update(body)
    return "v1," + base64.b64encode(mac.digest()).decode()


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


ENVELOPE_FIELDS = tuple(EventEnvelope.model_fields)
METADATA_FIELDS = tuple(EventMetadata.model_fields)
ENVELOPE_KEYS = frozenset(ENVELOPE_FIELDS)
METADATA_KEYS = frozenset(METADATA_FIELDS)


def recorded_body(message: dict[str, Any]) -> bytes:
    """``request_body`` of a delivery as the intake recorded it (``Delivery.model_dump(mode="json")``,
    back from jsonb), the same bytes without validating it again: only the envelope's fields go
    back in the model's order (jsonb keeps its own). A message of another shape is validated."""
    event = message["event"]
    metadata = event["metadata"]
    if event.keys() != ENVELOPE_KEYS or type(metadata) is not dict or metadata.keys() != METADATA_KEYS:
        return request_body(Delivery.model_validate(message))
    data = {name: event[name] for name in ENVELOPE_FIELDS}
    data["metadata"] = {name: metadata[name] for name in METADATA_FIELDS}
    return orjson.dumps(
        {
            "type": event["event_type"],
            "timestamp": datetime.fromisoformat(event["received_at"]),
            "delivery_id": message["delivery_id"],
            "rule_id": message["rule_id"],
            "data": data,
        }
    )


def signed_headers(
    msg_id: str, config: Mapping[str, Any], secrets: list[str], body: bytes, now: float
) -> dict[str, str]:
    """The headers of one attempt: the destination's own (``config["headers"]``), then ours."""
    timestamp = int(now)
    return {
        **config.get("headers", {}),
        "content-type": "application/json",
        "user-agent": "vdip-webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
    }


def request_headers(delivery: Delivery, secrets: list[str], body: bytes, now: float) -> dict[str, str]:
    return signed_headers(str(delivery.delivery_id), delivery.destination_config, secrets, body, now)


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


def log_context(message: dict[str, Any]) -> dict[str, str]:
    """``vdip.logs.event_context`` of a recorded delivery's event."""
    event = message.get("event") or {}
    metadata = event.get("metadata") or {}
    return {"event_id": str(event.get("event_id")), "correlation_id": metadata.get("correlation_id") or "-"}


# ------------------------------------------------------------------------------ one attempt


async def attempt(client: WebhookClient, message: dict[str, Any], secrets: list[str]) -> Outcome:
    """One POST of a recorded delivery, cut off ``client.timeout_s`` after it started whatever
    the phase."""
    config = message["destination_config"]
    body = recorded_body(message)
    headers = signed_headers(message["delivery_id"], config, secrets, body, time.time())
    started = time.perf_counter()
    try:
        status_code, retry_after_header = await client.post(config["url"], body, headers)
    except AddressRefused as exc:
        return Outcome(error=str(exc), refused=True)
    except TimeoutError:
        elapsed = (time.perf_counter() - started) * 1000
        return Outcome(error=f"no complete answer within {client.timeout_s} s", latency_ms=elapsed)
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        elapsed = (time.perf_counter() - started) * 1000
        return Outcome(error=f"{type(exc).__name__}: {exc}"[:1000], latency_ms=elapsed)
    elapsed = (time.perf_counter() - started) * 1000
    retry_after = None
    if status_code in (429, 503):
        retry_after = parse_retry_after(retry_after_header, datetime.now(UTC))
    error = None if 200 <= status_code < 300 else f"HTTP {status_code}"
    return Outcome(status_code, error, elapsed, retry_after)


# ------------------------------------------------------------------------------ intake


class WebhookDelivery(TypedDict):
    """A ``Delivery`` as the router writes it, checked for its shape and types without building
    the models (a fifth of the cost: the router validated the event). What the intake records is
    the record's JSON as it came, which is then ``Delivery.model_dump(mode="json")``."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    delivery_id: UUID
    rule_id: int
    destination_type: str
    destination_config: dict[str, Any]
    event: EnvelopeView


_DELIVERY = TypeAdapter(WebhookDelivery)


class Intake:
    """Records each delivery, then calls ``recorded`` (the dispatcher's wake-up): in this
    process, a delivery is claimed and sent as soon as it is in the table."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        dlq_topic: str,
        recorded: Callable[[], None] = lambda: None,
    ) -> None:
        self.pool = pool
        self.producer = producer
        self.dlq_topic = dlq_topic
        self.recorded = recorded

    async def write(self, records: Records) -> None:
        rows = []
        for record in records:
            try:
                d = _DELIVERY.validate_json(record.value)
            except ValidationError as exc:
                await self._refused(record, str(exc))
                continue
            if d["destination_type"] != "webhook" or not isinstance(d["destination_config"].get("url"), str):
                await self._refused(record, "not a webhook delivery")
                continue
            event = d["event"]
            row = (d["delivery_id"], event["app_id"], event["event_id"], d["rule_id"], record.value.decode())
            rows.append((record, row))
        await insert_rows(self.pool, deliveries.record_webhooks, rows, self._refused)
        if rows:
            self.recorded()

    async def _refused(self, record: Record, reason: str) -> None:
        await dead_letter(self.producer, self.dlq_topic, record, "webhooks", reason)


# ------------------------------------------------------------------------------ dispatch

T = TypeVar("T")


class GroupWriter(Generic[T]):
    """Writes what is submitted while a write is under way together, in the next one (a success
    does not wait for others: the longer it goes unrecorded, the more a killed dispatcher's
    successor sends again): each ``submit`` returns once its item is written (or raises what the
    write raised)."""

    def __init__(self, write: Callable[[list[T]], Awaitable[None]]) -> None:
        self.write = write
        self.waiting: list[tuple[T, asyncio.Future[None]]] = []
        self.writing: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        done = asyncio.get_running_loop().create_future()
        self.waiting.append((item, done))
        if self.writing is None:
            self.writing = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        try:
            while self.waiting:
                await asyncio.sleep(0)  # what the same turn of the loop submits goes along
                batch, self.waiting = self.waiting, []
                try:
                    await self.write([item for item, _ in batch])
                except Exception as exc:
                    for _, done in batch:
                        done.set_exception(exc)
                else:
                    for _, done in batch:
                        done.set_result(None)
        finally:
            self.writing = None


@dataclass
class Bucket:
    """A rule's ``max_per_second``: a token bucket holding at most one second's worth."""

    rate: float
    tokens: float
    at: float

    def refill(self, now: float) -> None:
        self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.at) * self.rate)
        self.at = now


@dataclass(frozen=True)
class Success:
    delivery_id: UUID
    rule_id: int
    status_code: int
    latency_ms: float


class Dispatcher:
    """Claims what each endpoint may start, whenever the intake recorded deliveries or an
    attempt ended (``wake``), and every ``webhook_poll_interval_s`` for retries coming due and
    leases running out."""

    def __init__(self, pool: asyncpg.Pool, client: WebhookClient, settings: Settings) -> None:
        self.pool = pool
        self.client = client
        self.settings = settings
        self.busy: dict[int, int] = {}
        self.buckets: dict[int, Bucket] = {}
        self.waiting: dict[int, deque[asyncpg.Record]] = {}  # claimed, to start when a slot frees
        self.limits: dict[int, int] = {}  # each rule's max_in_flight, as last claimed
        # Claimed deliveries may wait for a slot (at most one attempt's time) if their lease
        # still covers that wait and their own attempt.
        waits = settings.webhook_lease_s >= 2 * settings.webhook_timeout_s + WEBHOOK_LEASE_MARGIN_S
        self.depth = 2 if waits else 1
        self.tasks: set[asyncio.Task[None]] = set()
        self.rng = random.Random()
        self.wake = asyncio.Event()
        self.successes = GroupWriter(self._write_successes)
        self.orphans_claimed_at = 0.0
        self.attempts = {status: metrics.WEBHOOK_ATTEMPTS.labels(status) for status in DeliveryStatus}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.wake.clear()
            try:
                await self.claim()
                if time.monotonic() - self.orphans_claimed_at >= ORPHANS_EVERY_S:
                    self.orphans_claimed_at = time.monotonic()
                    await self.claim_orphans()
            except UNAVAILABLE as exc:
                log.warning("claiming deliveries failed, retrying: %r", exc)
                await asyncio.sleep(self.settings.webhook_poll_interval_s)
            # A claim took all that each endpoint may start (or all that was due): the next one
            # when woken (an attempt ended, deliveries were recorded) or polling.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self._wait_s())
        with contextlib.suppress(*UNAVAILABLE):
            await self.release_waiting()
        if self.tasks:  # let attempts under way finish; their leases cover a crash
            await asyncio.wait(self.tasks, timeout=self.settings.webhook_timeout_s + 1)

    def _wait_s(self) -> float:
        """The poll interval, or less when a rate-limited rule gets its next token sooner."""
        wait = self.settings.webhook_poll_interval_s
        for bucket in self.buckets.values():
            if bucket.tokens < 1:
                wait = min(wait, (1 - bucket.tokens) / bucket.rate)
        return max(wait, 0.001)

    async def claim(self) -> int:
        now = time.monotonic()
        for bucket in self.buckets.values():
            bucket.refill(now)
        rule_ids = set(self.busy) | set(self.buckets) | set(self.waiting)
        busy = [self.busy.get(rule, 0) + len(self.waiting.get(rule, ())) for rule in rule_ids]
        allowance = [int(self.buckets[r].tokens) if r in self.buckets else None for r in rule_ids]
        rows = await deliveries.claim_webhooks(
            self.pool,
            lease_s=self.settings.webhook_lease_s,
            rule_ids=list(rule_ids),
            busy=busy,
            allowance=allowance,
            default_in_flight=self.settings.webhook_concurrency_per_endpoint,
            depth=self.depth,
        )
        for row in rows:
            rule_id, config = row["rule_id"], row["destination_config"]
            self._limit_rate(rule_id, config, now)
            self.limits[rule_id] = min(
                config.get("max_in_flight", self.settings.webhook_concurrency_per_endpoint), MAX_IN_FLIGHT
            )
            self.waiting.setdefault(rule_id, deque()).append(row)
        for rule_id in {row["rule_id"] for row in rows}:
            self._start_waiting(rule_id)
        return len(rows)

    def _start_waiting(self, rule_id: int) -> None:
        """Start the rule's claimed deliveries while it has free slots."""
        waiting = self.waiting.get(rule_id)
        limit = self.limits.get(rule_id, self.settings.webhook_concurrency_per_endpoint)
        while waiting and self.busy.get(rule_id, 0) < limit:
            row = waiting.popleft()
            self.start(rule_id, row["attempts"], row["message"], row)
        if not waiting:
            self.waiting.pop(rule_id, None)

    async def release_waiting(self) -> None:
        """Claimed deliveries not started (stopping): back in the queue for another dispatcher."""
        ids = [row["delivery_id"] for rows in self.waiting.values() for row in rows]
        self.waiting.clear()
        if ids:
            await deliveries.release_claims(self.pool, ids)

    def _limit_rate(self, rule_id: int, config: dict[str, Any], now: float) -> None:
        rate = config.get("max_per_second")
        if not rate:
            self.buckets.pop(rule_id, None)
            return
        bucket = self.buckets.get(rule_id)
        if bucket is None or bucket.rate != rate:
            bucket = self.buckets[rule_id] = Bucket(float(rate), max(1.0, float(rate)), now)
        bucket.tokens -= 1

    async def claim_orphans(self) -> int:
        rows = await deliveries.claim_orphans(self.pool, limit=100, lease_s=self.settings.webhook_lease_s)
        for row in rows:
            self.start(row["rule_id"], row["attempts"], row["message"], None)
        return len(rows)

    def start(
        self, rule_id: int, attempts: int, message: dict[str, Any], endpoint: Mapping[str, Any] | None
    ) -> None:
        self.busy[rule_id] = self.busy.get(rule_id, 0) + 1
        task = asyncio.create_task(self.deliver(rule_id, attempts, message, endpoint))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def deliver(
        self, rule_id: int, attempts: int, message: dict[str, Any], endpoint: Mapping[str, Any] | None = None
    ) -> None:
        """One claimed delivery (counted in ``busy``): an attempt, its slot freed as soon as the
        attempt ended, then its outcome recorded. ``endpoint``: the rule's secrets and state, as
        claimed with it; None: read them now."""
        freed = False

        def free() -> None:
            nonlocal freed
            if not freed:
                freed = True
                self.busy[rule_id] -= 1
                if not self.busy[rule_id]:
                    del self.busy[rule_id]
                self._start_waiting(rule_id)
                self.wake.set()

        try:
            delivery_id = UUID(message["delivery_id"])
            if endpoint is None:
                endpoint = await rules.webhook_endpoint(self.pool, rule_id)
            if endpoint is None or endpoint["webhook_secret"] is None:
                free()
                outcome = Outcome(error="the rule no longer exists")
                await self.finish(delivery_id, rule_id, message, attempts, outcome, final=True)
            elif endpoint["destination_disabled_reason"] is not None:
                free()
                reason = f"destination disabled: {endpoint['destination_disabled_reason']}"
                await self.finish(delivery_id, rule_id, message, attempts, Outcome(error=reason), final=True)
            else:
                secrets = [endpoint["webhook_secret"]]
                if endpoint["previous_valid"] and endpoint["previous_webhook_secret"]:
                    secrets.append(endpoint["previous_webhook_secret"])
                outcome = await attempt(self.client, message, secrets)
                free()
                await self.finish(delivery_id, rule_id, message, attempts, outcome)
        except Exception:  # the lease brings the delivery back
            log.exception("delivering for rule %s failed", rule_id)
        finally:
            free()

    async def finish(
        self,
        delivery_id: UUID,
        rule_id: int,
        message: dict[str, Any],
        attempts: int,
        outcome: Outcome,
        final: bool = False,
    ) -> None:
        tried = 0 if final else 1
        if outcome.delivered and outcome.status_code is not None:
            await self.successes.submit(
                Success(delivery_id, rule_id, outcome.status_code, outcome.latency_ms)
            )
            self._count(delivery_id, rule_id, message, DeliveryStatus.DELIVERED, attempts + 1, outcome)
            return
        async with self.pool.acquire() as conn, conn.transaction():
            if final or outcome.refused:
                status, wait = DeliveryStatus.FAILED, None
            elif outcome.status_code == 410:
                status, wait = DeliveryStatus.FAILED, None
                await self.disable(conn, rule_id, "the endpoint answered 410 Gone")
            else:
                failing_s = await rules.destination_failing(conn, rule_id)
                wait = retry_delay(
                    attempts + 1,
                    self.settings.webhook_retry_schedule_s,
                    outcome.retry_after,
                    self.settings.webhook_max_retry_after_s,
                    self.rng,
                )
                status = DeliveryStatus.RETRYING if wait is not None else DeliveryStatus.FAILED
                if failing_s is not None and float(failing_s) >= self.settings.webhook_disable_after_s:
                    status, wait = DeliveryStatus.FAILED, None
                    reason = f"failing without a success for {timedelta(seconds=int(failing_s))}"
                    await self.disable(conn, rule_id, reason)
            await deliveries.set_outcome(
                conn,
                delivery_id,
                status=status,
                tried=tried,
                status_code=outcome.status_code,
                error=outcome.error,
                latency_ms=outcome.latency_ms if tried else None,
                wait_s=wait,
            )
        self._count(delivery_id, rule_id, message, status, attempts + tried, outcome)

    def _count(
        self,
        delivery_id: UUID,
        rule_id: int,
        message: dict[str, Any],
        status: DeliveryStatus,
        attempt_number: int,
        outcome: Outcome,
    ) -> None:
        """Metrics, and a log line: INFO for a failed attempt, DEBUG for a success (one a delivery
        was most of a busy dispatcher's logging; PostgreSQL records each outcome anyway)."""
        self.attempts[status].inc()
        if outcome.status_code is not None or outcome.latency_ms:
            metrics.WEBHOOK_SECONDS.observe(outcome.latency_ms / 1000)
        level = logging.DEBUG if status is DeliveryStatus.DELIVERED else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "delivery %s (rule %s): %s after attempt %d (%s)",
                delivery_id,
                rule_id,
                status,
                attempt_number,
                outcome.status_code or outcome.error,
                extra=log_context(message),
            )

    async def _write_successes(self, successes: list[Success]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await rules.destinations_recovered(conn, sorted({s.rule_id for s in successes}))
            await deliveries.mark_delivered(
                conn,
                [s.delivery_id for s in successes],
                [s.status_code for s in successes],
                [s.latency_ms for s in successes],
            )

    async def disable(self, conn: asyncpg.Connection, rule_id: int, reason: str) -> None:
        if await rules.disable_destination(conn, rule_id, reason):
            log.warning("rule %s: webhook destination disabled: %s", rule_id, reason)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """The intake and the dispatcher, until ``stop``. If either ends before, the other is stopped
    too and this raises (the process exits with the error): never half alive, sending while
    nothing new is recorded or recording while nothing is sent."""
    await migrate_url(settings.database_url)  # before the first claim; serve_sink runs it too
    pool = await create_pool(settings.database_url, min_size=1, max_size=4, session_state=False)
    allowed = networks(settings.webhook_allowed_networks)
    try:
        async with WebhookClient(allowed, settings.webhook_timeout_s) as client:
            dispatcher = Dispatcher(pool, client, settings)
            intake = serve_sink(
                settings,
                topic=settings.topic("deliveries.webhook"),
                group_id=settings.webhook_group_id,
                make_write=lambda pool, producer: (
                    Intake(pool, producer, settings.topic("events.dlq"), dispatcher.wake.set).write
                ),
                stop=stop,
            )
            await together(
                {"the webhook intake": intake, "the webhook dispatcher": dispatcher.run(stop)}, stop
            )
    finally:
        await pool.close()


def run(settings: Settings) -> None:
    """Run the webhook dispatcher in the foreground until SIGTERM/SIGINT."""
    metrics.serve(settings.webhooks_metrics_port, settings.metrics_host)
    run_until_signalled(lambda stop: serve(settings, stop))
