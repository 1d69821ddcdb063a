"""Applications and their API keys: the key hashing both the CLI and the API use (the SQL is in
``vdip.store.applications`` and ``vdip.store.keys``).

An application has any number of keys, each with a name, scopes (``ingest``, ``read``,
``manage``) and an optional expiry; the key made with the application has every scope. A key is
shown once when created; only its SHA-256 is stored (keys are 256-bit random, so a plain hash is
enough) and compared in constant time. Rotating a key keeps the previous one valid for a grace
period (``Settings.key_rotation_grace_s``, a day by default), so that producers can switch. A
revoked or expired key opens nothing.
"""

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

KEY_PREFIX = "vdip_"


class Scope(StrEnum):
    """What a key may do: send events, read an application's data, or change its rules and keys."""

    INGEST = "ingest"
    READ = "read"
    MANAGE = "manage"


ALL_SCOPES: tuple[Scope, ...] = tuple(Scope)


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApplicationKey:
    key_id: int
    app_id: str
    name: str
    scopes: tuple[Scope, ...]
    key_hash: str
    expires_at: datetime | None
    revoked_at: datetime | None
    previous_key_hash: str | None
    previous_key_expires_at: datetime | None
    created_at: datetime

    def is_live(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def previous_valid_until(self, now: datetime) -> datetime | None:
        """Until when the key replaced by the last rotation keeps working (None: it does not)."""
        until = self.previous_key_expires_at
        return until if self.previous_key_hash is not None and until is not None and now < until else None

    def matches(self, hashed: str, now: datetime) -> bool:
        """Whether ``hashed`` (a presented key's hash) opens this key, or its previous one in grace."""
        current = hmac.compare_digest(hashed, self.key_hash)
        previous = hmac.compare_digest(hashed, self.previous_key_hash or "")  # always compared
        in_grace = self.previous_valid_until(now) is not None
        return self.is_live(now) and (current or (previous and in_grace))


@dataclass(frozen=True)
class Quota:
    """How many events an application may send: ``events_per_s`` on average, ``burst`` at once."""

    events_per_s: int
    burst: int
    default: bool


@dataclass(frozen=True)
class Application:
    app_id: str
    name: str
    description: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
    keys: tuple[ApplicationKey, ...] = ()  # oldest first: the first is the key made with it
    quota_events_per_s: int | None = None  # None: the default
    quota_burst: int | None = None
    allowed_origins: Sequence[str] = ()  # whose web pages may send its events (CORS on ingest)
    retention_days: int | None = None  # how long its events are kept; None: for good

    def quota(self, default_events_per_s: int, min_burst: int) -> "Quota":
        """Its ingest quota: its own, or the default; the burst is a second's worth unless set,
        and at least ``min_burst`` (a whole batch)."""
        rate = self.quota_events_per_s or default_events_per_s
        burst = self.quota_burst or max(rate, min_burst)
        return Quota(rate, burst, self.quota_events_per_s is None and self.quota_burst is None)

    def key_for(self, key: str, now: datetime) -> ApplicationKey | None:
        """The key of this application that ``key`` opens, if any. Every key is compared (no early
        exit), each in constant time."""
        hashed = hash_key(key)
        found = None
        for candidate in self.keys:
            if candidate.matches(hashed, now):
                found = candidate
        return found

    @property
    def first_key(self) -> ApplicationKey | None:
        """The key made with the application (every scope), unless it was revoked."""
        return self.keys[0] if self.keys and self.keys[0].revoked_at is None else None
