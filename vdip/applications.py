"""Applications and their API keys: plain SQL, and the key hashing both the CLI and the API use.

A key is shown once when created; only its SHA-256 is stored (keys are 256-bit random, so a plain
hash is enough) and compared in constant time. Rotating a key keeps the previous one valid for a
grace period (``Settings.key_rotation_grace_s``, a day by default), so that producers can switch.
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeAlias

import asyncpg

KEY_PREFIX = "vdip_"

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


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


_COLUMNS = """app_id, name, description, is_active, api_key_hash, previous_key_hash,
              previous_key_expires_at, created_at, updated_at"""


async def get_application(db: Db, app_id: str) -> Application | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM applications WHERE app_id = $1", app_id)
    return Application(**dict(row)) if row else None


async def list_applications(db: Db) -> list[Application]:
    rows = await db.fetch(f"SELECT {_COLUMNS} FROM applications ORDER BY app_id")
    return [Application(**dict(row)) for row in rows]


async def create_application(
    db: Db, app_id: str, name: str, description: str | None = None
) -> tuple[Application, str] | None:
    """Create an application with a new key. Returns it and the key, or None if the id is taken."""
    key = generate_key()
    row = await db.fetchrow(
        f"""INSERT INTO applications (app_id, name, description, api_key_hash)
            VALUES ($1, $2, $3, $4) ON CONFLICT (app_id) DO NOTHING
            RETURNING {_COLUMNS}""",
        app_id,
        name,
        description,
        hash_key(key),
    )
    return (Application(**dict(row)), key) if row else None


async def rotate_key(db: Db, app_id: str, grace: timedelta = timedelta(0)) -> tuple[Application, str] | None:
    """Give an application a new key; the old one keeps working for ``grace``. None if unknown."""
    key = generate_key()
    row = await db.fetchrow(
        f"""UPDATE applications
            SET previous_key_hash = api_key_hash,
                previous_key_expires_at = now() + $3::interval,
                api_key_hash = $2, updated_at = now()
            WHERE app_id = $1 RETURNING {_COLUMNS}""",
        app_id,
        hash_key(key),
        grace,
    )
    return (Application(**dict(row)), key) if row else None


async def set_active(db: Db, app_id: str, active: bool) -> Application | None:
    row = await db.fetchrow(
        f"""UPDATE applications SET is_active = $2, updated_at = now()
            WHERE app_id = $1 RETURNING {_COLUMNS}""",
        app_id,
        active,
    )
    return Application(**dict(row)) if row else None
