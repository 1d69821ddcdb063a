"""Applications and their API keys: plain SQL, and the key hashing both the CLI and API use.

A key is shown once when created; only its SHA-256 is stored (keys are 256-bit random, so a
plain hash is enough), and it is compared in constant time.
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import asyncpg

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
    is_active: bool
    api_key_hash: str | None


async def get_application(conn: asyncpg.Pool | asyncpg.Connection, app_id: str) -> Application | None:
    row = await conn.fetchrow(
        "SELECT app_id, name, is_active, api_key_hash FROM applications WHERE app_id = $1", app_id
    )
    return Application(**dict(row)) if row else None


async def create_application(
    conn: asyncpg.Pool | asyncpg.Connection, app_id: str, name: str, description: str | None = None
) -> tuple[Application, str] | None:
    """Create an application with a new key. Returns it and the key, or None if the id is taken."""
    key = generate_key()
    row = await conn.fetchrow(
        """INSERT INTO applications (app_id, name, description, api_key_hash)
           VALUES ($1, $2, $3, $4) ON CONFLICT (app_id) DO NOTHING
           RETURNING app_id, name, is_active, api_key_hash""",
        app_id,
        name,
        description,
        hash_key(key),
    )
    return (Application(**dict(row)), key) if row else None


async def rotate_key(conn: asyncpg.Pool | asyncpg.Connection, app_id: str) -> str | None:
    """Give an application a new key (the old one stops working). None if it does not exist."""
    key = generate_key()
    updated = await conn.fetchval(
        "UPDATE applications SET api_key_hash = $2, updated_at = now() WHERE app_id = $1 RETURNING 1",
        app_id,
        hash_key(key),
    )
    return key if updated else None
