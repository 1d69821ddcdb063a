"""``applications``: every statement that writes it, and its reads.

Keys are generated and hashed by ``vdip.applications``; only their SHA-256 is stored. Rotating a
key keeps the previous one valid for a grace period.
"""

from datetime import timedelta
from typing import TypeAlias

import asyncpg

from vdip.applications import Application, generate_key, hash_key

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection

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
