"""``Client`` (a background thread) and ``AsyncClient`` (an asyncio task): ``track()`` queues an
event and returns its id at once; batches go to ``POST {url}/batch`` when ``batch_size`` events
are queued or ``flush_interval_s`` after the oldest was, and on ``flush()`` and ``close()``.

Delivery: every event gets its UUIDv7 here, so a retry sends the same ids and the platform keeps
one of each. A dropped connection, a timeout, 429, 500, 502, 503 and 504 are retried, after the
server's ``Retry-After`` when it gave one, else after a full-jitter exponential backoff (0.2 s
doubling up to 30 s), for ``retry_for_s`` (5 minutes); then the events are reported as ``GaveUp``.
In a 207, the events Kafka refused are retried and the invalid ones reported. A refusal that a
retry would get again (400, 401, 403, 404, 409, 413, 422) is reported at once as its
``ClientError`` type. Reported means: passed to ``on_error(error, events)`` when given (else
logged), and raised by the next ``flush()`` or ``close()``.

Overflow: the queue holds at most ``max_queue`` events (10,000). When it is full, ``track()``
raises ``QueueFull`` (``overflow="raise"``, the default) or drops the new event, counts it in
``dropped`` and logs it (``overflow="drop"``); events already queued are never dropped.
"""

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import httpx

from vdip_client._delivery import Backoff, Event, Outcome, batch_body, outcome_of
from vdip_client.errors import ClientClosed, GaveUp, QueueFull, VdipClientError

log = logging.getLogger("vdip_client")
MAX_BATCH = 500  # the gateway's max_batch_events by default
OnError = Callable[[VdipClientError, list[Event]], None]


class _Queue:
    """The state both clients share: the queue, its overflow policy, and the reported errors."""

    def __init__(
        self,
        url: str,
        key: str,
        batch_size: int,
        flush_interval_s: float,
        max_queue: int,
        overflow: Literal["raise", "drop"],
        retry_for_s: float,
        on_error: OnError | None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size is 1 to {MAX_BATCH}")
        self.batch_url = url.rstrip("/") + "/batch"
        self.headers = {"X-API-Key": key, "User-Agent": "vdip-client-python/0.1"}
        self.batch_size, self.flush_interval_s = batch_size, flush_interval_s
        self.max_queue, self.overflow = max_queue, overflow
        self.retry_for_s = retry_for_s
        self.on_error = on_error
        self.queue: deque[Event] = deque()
        self.oldest_at = 0.0  # when the oldest queued event was queued (monotonic)
        self.inflight = 0
        self.flushing = False
        self.closing = False
        self.dropped = 0
        self.errors: list[VdipClientError] = []

    def add(
        self,
        event_type: str,
        payload: dict[str, Any] | None,
        event_id: uuid.UUID | None,
        occurred_at: datetime | None,
    ) -> tuple[Event | None, bool]:
        """The event made, and whether a batch is full (None: dropped)."""
        if self.closing:
            raise ClientClosed("the client is closed")
        extra: dict[str, Any] = {"event_id": event_id} if event_id else {}
        if occurred_at is not None:
            extra["occurred_at"] = occurred_at
        event = Event(event_type, payload or {}, **extra)
        if len(self.queue) >= self.max_queue:
            if self.overflow == "raise":
                raise QueueFull(f"{len(self.queue)} events are queued already")
            self.dropped += 1
            log.warning("vdip queue full: dropped event %s (%d dropped)", event.event_id, self.dropped)
            return None, False
        if not self.queue:
            self.oldest_at = time.monotonic()
        self.queue.append(event)
        return event, len(self.queue) >= self.batch_size

    def ready(self, now: float) -> bool:
        """Whether a batch should go now."""
        return bool(self.queue) and (
            len(self.queue) >= self.batch_size
            or self.flushing
            or self.closing
            or now >= self.oldest_at + self.flush_interval_s
        )

    def wait_s(self, now: float) -> float | None:
        return max(0.0, self.oldest_at + self.flush_interval_s - now) if self.queue else None

    def take(self) -> list[Event]:
        batch = [self.queue.popleft() for _ in range(min(self.batch_size, len(self.queue)))]
        self.inflight = len(batch)
        if self.queue:
            self.oldest_at = time.monotonic()
        return batch

    def idle(self) -> bool:
        return not self.queue and self.inflight == 0

    def report(self, error: VdipClientError, events: list[Event]) -> None:
        if len(self.errors) < 100:
            self.errors.append(error)
        if self.on_error is not None:
            self.on_error(error, events)
        else:
            log.warning("vdip: %d event(s) not accepted: %s", len(events), error)

    def raise_reported(self) -> None:
        errors, self.errors = self.errors, []
        if errors:
            raise errors[0]

    def after(self, events: list[Event], outcome: Outcome, started: float) -> list[Event]:
        """The events to send again after an attempt (reporting the others)."""
        if outcome.error is not None:
            self.report(outcome.error, outcome.failed)
        if outcome.retry and time.monotonic() - started > self.retry_for_s:
            self.report(GaveUp(f"not accepted after {self.retry_for_s} s of retries"), outcome.retry)
            return []
        return outcome.retry


def _transport_failure(events: list[Event], exc: httpx.TransportError) -> Outcome:
    """No answer (refused, reset, timed out): maybe accepted; the same ids again are safe."""
    log.info("vdip: no answer for %d event(s) (%r); retrying with the same ids", len(events), exc)
    return Outcome(retry=events)


class Client:
    """Sends events from a background thread. ``url`` is the application's ingest endpoint,
    ``http://host:8000/api/ingest/<app_id>``; ``key`` a key with the ``ingest`` scope."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        batch_size: int = 100,
        flush_interval_s: float = 1.0,
        max_queue: int = 10_000,
        overflow: Literal["raise", "drop"] = "raise",
        timeout_s: float = 10.0,
        retry_for_s: float = 300.0,
        on_error: OnError | None = None,
    ) -> None:
        self._q = _Queue(url, key, batch_size, flush_interval_s, max_queue, overflow, retry_for_s, on_error)
        self._cond = threading.Condition()
        self._abort = threading.Event()
        self._http = httpx.Client(timeout=timeout_s, headers=self._q.headers)
        self._thread = threading.Thread(target=self._run, name="vdip-client", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return self._q.dropped

    def track(
        self,
        event_type: str,
        payload: dict[str, Any] | None = None,
        *,
        event_id: uuid.UUID | None = None,
        occurred_at: datetime | None = None,
    ) -> uuid.UUID | None:
        """Queue an event; its id, or None when it was dropped (``overflow="drop"``)."""
        with self._cond:
            event, full = self._q.add(event_type, payload, event_id, occurred_at)
            if event is not None and (full or len(self._q.queue) == 1):
                self._cond.notify_all()
        return event.event_id if event is not None else None

    def flush(self, timeout: float | None = None) -> None:
        """Send what is queued and wait until each event was accepted or reported; raise the
        first error reported since the last ``flush()``."""
        with self._cond:
            self._q.flushing = True
            self._cond.notify_all()
            done = self._cond.wait_for(self._q.idle, timeout)
            self._q.flushing = False
            if not done:
                raise TimeoutError(f"{len(self._q.queue) + self._q.inflight} event(s) still unsent")
            self._q.raise_reported()

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued (for ``timeout`` at most: then what is left is lost), then stop."""
        with self._cond:
            self._q.closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abort.set()
            self._thread.join()
        self._http.close()
        with self._cond:
            self._q.raise_reported()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._abort.is_set():
            with self._cond:
                while not self._q.ready(time.monotonic()):
                    if self._q.closing and self._q.idle():
                        return
                    self._cond.wait(self._q.wait_s(time.monotonic()))
                batch = self._q.take()
            self._send(batch)
            with self._cond:
                self._q.inflight = 0
                self._cond.notify_all()

    def _send(self, events: list[Event]) -> None:
        backoff, started = Backoff(), time.monotonic()
        while events and not self._abort.is_set():
            try:
                response = self._http.post(self._q.batch_url, json=batch_body(events))
                outcome = outcome_of(events, response)
            except httpx.TransportError as exc:
                outcome = _transport_failure(events, exc)
            with self._cond:
                events = self._q.after(events, outcome, started)
            if events:
                self._abort.wait(backoff.next_wait(outcome.wait_s))


class AsyncClient:
    """``Client`` for asyncio: ``track()`` is the same (it does not block), ``flush()`` and
    ``close()`` are awaited; the sending task starts with the first event."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        batch_size: int = 100,
        flush_interval_s: float = 1.0,
        max_queue: int = 10_000,
        overflow: Literal["raise", "drop"] = "raise",
        timeout_s: float = 10.0,
        retry_for_s: float = 300.0,
        on_error: OnError | None = None,
    ) -> None:
        self._q = _Queue(url, key, batch_size, flush_interval_s, max_queue, overflow, retry_for_s, on_error)
        self._timeout_s = timeout_s
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def dropped(self) -> int:
        return self._q.dropped

    def track(
        self,
        event_type: str,
        payload: dict[str, Any] | None = None,
        *,
        event_id: uuid.UUID | None = None,
        occurred_at: datetime | None = None,
    ) -> uuid.UUID | None:
        event, full = self._q.add(event_type, payload, event_id, occurred_at)
        if event is None:
            return None
        self._idle.clear()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if full or len(self._q.queue) == 1:
            self._wake.set()
        return event.event_id

    async def flush(self) -> None:
        if not self._q.idle():
            self._q.flushing = True
            self._wake.set()
            await self._idle.wait()
            self._q.flushing = False
        self._q.raise_reported()

    async def close(self, within_s: float | None = None) -> None:
        """Send what is queued (for ``within_s`` at most: then what is left is lost), then stop."""
        self._q.closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), within_s)
            except TimeoutError:
                self._task.cancel()
        self._q.raise_reported()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=self._timeout_s, headers=self._q.headers) as http:
            while True:
                while not self._q.ready(time.monotonic()):
                    if self._q.closing and self._q.idle():
                        return
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._q.wait_s(time.monotonic()))
                await self._send(http, self._q.take())
                self._q.inflight = 0
                if self._q.idle():
                    self._idle.set()

    async def _send(self, http: httpx.AsyncClient, events: list[Event]) -> None:
        backoff, started = Backoff(), time.monotonic()
        while events:
            try:
                response = await http.post(self._q.batch_url, json=batch_body(events))
                outcome = outcome_of(events, response)
            except httpx.TransportError as exc:
                outcome = _transport_failure(events, exc)
            events = self._q.after(events, outcome, started)
            if events:
                await asyncio.sleep(backoff.next_wait(outcome.wait_s))
