"""Applications and their API keys: the key hashing both the CLI and the API use (the SQL is in
``vdip.store.applications``).

A key is shown once when created; only its SHA-256 is stored (keys are 256-bit random, so a plain
hash is enough) and compared in constant time. Rotating a key keeps the previous one valid for a
grace period (``Settings.key_rotation_grace_s``, a day by default), so that producers can switch.
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

KEY_PREFIX = "vdip_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_matches(key: str, stored_hash: str | None) -> bool:
    return stored_hash is not None and hmac.compare_digest(hash_key(key), stored_hash)


@dataclass(frozen=True)
class Application:
    app_id: str
    name: str
    description: str | None
    is_active: bool
    api_key_hash: str | None
    previous_key_hash: str | None
    previous_key_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime

    def accepts(self, key: str, now: datetime) -> bool:
        """Whether ``key`` is this application's key, or its previous one still in its grace period."""
        current = key_matches(key, self.api_key_hash)
        previous = key_matches(key, self.previous_key_hash)  # always compared: constant time
        in_grace = self.previous_key_expires_at is not None and now < self.previous_key_expires_at
        return current or (previous and in_grace)
