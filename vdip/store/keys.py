"""``application_keys``: every statement that writes it, and its reads.

Keys are generated and hashed by ``vdip.applications``; only their SHA-256 is stored. Rotating a
key keeps the previous one valid for a grace period; revoking one ends it (and its previous one)
at once. Rows are never deleted (but with their application), so a listing shows revoked keys.
"""

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TypeAlias

import asyncpg

from vdip.applications import ALL_SCOPES, ApplicationKey, Scope, generate_key, hash_key

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection

COLUMNS = """key_id, app_id, name, scopes, key_hash, expires_at, revoked_at, previous_key_hash,
             previous_key_expires_at, created_at"""


def as_key(row: asyncpg.Record) -> ApplicationKey:
    return ApplicationKey(**{**dict(row), "scopes": tuple(Scope(s) for s in row["scopes"])})


async def keys_of(db: Db, app_id: str) -> list[ApplicationKey]:
    """An application's keys, revoked ones too, oldest first."""
    rows = await db.fetch(f"SELECT {COLUMNS} FROM application_keys WHERE app_id = $1 ORDER BY key_id", app_id)
    return [as_key(row) for row in rows]


async def keys_of_all(db: Db, app_ids: Iterable[str]) -> dict[str, list[ApplicationKey]]:
    rows = await db.fetch(
        f"SELECT {COLUMNS} FROM application_keys WHERE app_id = ANY($1::text[]) ORDER BY key_id",
        list(app_ids),
    )
    found: dict[str, list[ApplicationKey]] = {}
    for row in rows:
        found.setdefault(row["app_id"], []).append(as_key(row))
    return found


async def create_key(
    db: Db,
    app_id: str,
    name: str,
    scopes: Iterable[Scope] = ALL_SCOPES,
    expires_at: datetime | None = None,
) -> tuple[ApplicationKey, str]:
    """A new key of an existing application; returns it and the key itself (shown once)."""
    key = generate_key()
    row = await db.fetchrow(
        f"""INSERT INTO application_keys (app_id, name, scopes, key_hash, expires_at)
            VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}""",
        app_id,
        name,
        sorted(set(scopes), key=ALL_SCOPES.index),
        hash_key(key),
        expires_at,
    )
    assert row is not None
    return as_key(row), key


async def rotate_key(
    db: Db, app_id: str, key_id: int | None, grace: timedelta = timedelta(0)
) -> tuple[ApplicationKey, str] | None:
    """A new secret for a live key (``key_id``; None: the key made with the application); the old
    one keeps working for ``grace``. None if there is no such live key."""
    key = generate_key()
    row = await db.fetchrow(
        f"""UPDATE application_keys
            SET previous_key_hash = key_hash, previous_key_expires_at = now() + $3::interval,
                key_hash = $4, updated_at = now()
            WHERE key_id = coalesce($2::bigint, (SELECT min(key_id) FROM application_keys WHERE app_id = $1))
              AND app_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
            RETURNING {COLUMNS}""",
        app_id,
        key_id,
        grace,
        hash_key(key),
    )
    return (as_key(row), key) if row else None


async def revoke_key(db: Db, app_id: str, key_id: int) -> ApplicationKey | None:
    """Revoke a key at once (its previous one too). None if the application has no such key."""
    row = await db.fetchrow(
        f"""UPDATE application_keys SET revoked_at = coalesce(revoked_at, now()), updated_at = now()
            WHERE key_id = $2 AND app_id = $1 RETURNING {COLUMNS}""",
        app_id,
        key_id,
    )
    return as_key(row) if row else None


async def delete_keys_of_app(db: Db, app_id: str) -> None:
    """Delete every key of the application: none opens it any more."""
    await db.execute("DELETE FROM application_keys WHERE app_id = $1", app_id)
