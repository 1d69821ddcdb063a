"""The delivery contract every producer follows, without I/O: event ids made here (UUIDv7), the
batch body, what an answer means (done, retry which events, or a typed error), and how long to
wait before a retry (Retry-After, else full-jitter exponential backoff)."""

import os
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from vdip_client.errors import ClientError, error_for

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def uuid7(now_ms: int | None = None) -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits; sorts by time."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(os.urandom(10)) & ((1 << 80) - 1)
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # variant 10
    return uuid.UUID(int=value)


@dataclass(frozen=True)
class Event:
    event_type: str
    payload: dict[str, Any]
    event_id: uuid.UUID = field(default_factory=uuid7)
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_json(self) -> dict[str, Any]:
        return {
            "event_id": str(self.event_id),
            "event_type": self.event_type,
            "payload": self.payload,
            "occurred_at": self.occurred_at.isoformat(),
        }


def batch_body(events: list[Event]) -> dict[str, Any]:
    return {"events": [event.as_json() for event in events]}


@dataclass
class Outcome:
    """What to do after one attempt: ``retry`` holds the events to send again (same ids), after
    ``wait_s`` at least (a Retry-After); ``error`` a refusal that retrying cannot change, with
    the events it concerns in ``failed``."""

    retry: list[Event] = field(default_factory=list)
    wait_s: float | None = None
    error: ClientError | None = None
    failed: list[Event] = field(default_factory=list)


def retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After in seconds: a number, or an HTTP date (RFC 9110); None when absent or invalid."""
    given = response.headers.get("retry-after")
    if given is None:
        return None
    try:
        return max(0.0, float(given))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(given) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def outcome_of(events: list[Event], response: httpx.Response) -> Outcome:
    """What an answer of the batch endpoint means for ``events``."""
    status = response.status_code
    if status == 202:
        return Outcome()
    if status in RETRY_STATUSES:
        return Outcome(retry=events, wait_s=retry_after_s(response))
    if status == 207:  # each rejected event says why: Kafka's refusals are retried, the rest are final
        retry: list[Event] = []
        failed: list[Event] = []
        for result in response.json()["data"]["results"]:
            if result["status"] == "accepted":
                continue
            event = events[result["index"]]
            kafka = any(error.get("field") == "kafka" for error in result["errors"])
            (retry if kafka else failed).append(event)
        error = error_for(response) if failed else None
        return Outcome(retry=retry, error=error, failed=failed)
    return Outcome(error=error_for(response), failed=events)


@dataclass
class Backoff:
    """Full-jitter exponential backoff (a random wait in [0, min(cap, base * 2**n)]), or the
    server's Retry-After when it gave one (never less, a little jitter on top)."""

    base_s: float = 0.2
    cap_s: float = 30.0
    attempt: int = 0

    def next_wait(self, retry_after: float | None) -> float:
        self.attempt += 1
        if retry_after is not None:
            return retry_after + random.uniform(0, min(1.0, self.base_s * self.attempt))
        return random.uniform(0, min(self.cap_s, self.base_s * 2**self.attempt))

    def reset(self) -> None:
        self.attempt = 0
