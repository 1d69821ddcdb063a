"""``applications``: every statement that writes it, and its reads.

An application's keys are in ``application_keys`` (``vdip.store.keys``); an application read here
comes with them, oldest first.
"""

from datetime import datetime, timedelta
from typing import TypeAlias

import asyncpg

from vdip.applications import Application
from vdip.store import keys

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection

_COLUMNS = (
    "app_id, name, description, is_active, quota_events_per_s, quota_burst, created_at, updated_at,"
    " allowed_origins, retention_days"
)


async def get_application(db: Db, app_id: str) -> Application | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM applications WHERE app_id = $1", app_id)
    if row is None:
        return None
    return Application(**dict(row), keys=tuple(await keys.keys_of(db, app_id)))


async def list_applications(db: Db) -> list[Application]:
    rows = await db.fetch(f"SELECT {_COLUMNS} FROM applications ORDER BY app_id")
    found = await keys.keys_of_all(db, [row["app_id"] for row in rows])
    return [Application(**dict(row), keys=tuple(found.get(row["app_id"], []))) for row in rows]


async def create_application(
    db: asyncpg.Pool, app_id: str, name: str, description: str | None = None
) -> tuple[Application, str] | None:
    """Create an application with a key of every scope. Returns it and the key, or None if the id
    is taken."""
    async with db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"""INSERT INTO applications (app_id, name, description)
                VALUES ($1, $2, $3) ON CONFLICT (app_id) DO NOTHING
                RETURNING {_COLUMNS}""",
            app_id,
            name,
            description,
        )
        if row is None:
            return None
        made, key = await keys.create_key(conn, app_id, "default")
    return Application(**dict(row), keys=(made,)), key


async def rotate_key(db: Db, app_id: str, grace: timedelta = timedelta(0)) -> tuple[Application, str] | None:
    """A new secret for the key made with the application; the old one keeps working for
    ``grace``. None if the application is unknown or that key was revoked."""
    rotated = await keys.rotate_key(db, app_id, None, grace)
    if rotated is None:
        return None
    application = await get_application(db, app_id)
    return (application, rotated[1]) if application else None


async def _set(db: Db, app_id: str, assignments: str, *values: object) -> Application | None:
    """Set ``assignments`` (``column = $2``, …) of the application; None if it is unknown."""
    row = await db.fetchrow(
        f"UPDATE applications SET {assignments}, updated_at = now() WHERE app_id = $1 RETURNING {_COLUMNS}",
        app_id,
        *values,
    )
    return Application(**dict(row), keys=tuple(await keys.keys_of(db, app_id))) if row else None


async def set_active(db: Db, app_id: str, active: bool) -> Application | None:
    return await _set(db, app_id, "is_active = $2", active)


async def set_quota(db: Db, app_id: str, events_per_s: int | None, burst: int | None) -> Application | None:
    """The application's ingest quota (None: the default); None if the application is unknown."""
    return await _set(db, app_id, "quota_events_per_s = $2, quota_burst = $3", events_per_s, burst)


async def set_allowed_origins(db: Db, app_id: str, origins: list[str]) -> Application | None:
    """Replace the origins whose pages may send the application's events (CORS)."""
    return await _set(db, app_id, "allowed_origins = $2", origins)


async def set_retention(db: Db, app_id: str, days: int | None) -> Application | None:
    """How many days the application's events are kept (None: for good)."""
    return await _set(db, app_id, "retention_days = $2", days)


async def retentions(db: Db) -> dict[str, int]:
    """The applications that keep their events for a limited time: days, by app_id."""
    rows = await db.fetch("SELECT app_id, retention_days FROM applications WHERE retention_days IS NOT NULL")
    return {r["app_id"]: r["retention_days"] for r in rows}


async def kept_since(db: Db, app_id: str) -> datetime | None:
    """The moment before which the application's events are not kept (None: all are)."""
    at: datetime | None = await db.fetchval(
        "SELECT now() - make_interval(days => retention_days) FROM applications WHERE app_id = $1", app_id
    )
    return at


async def delete_application(db: Db, app_id: str) -> bool:
    """Delete the application's row (its keys and rules go with it); whether it existed."""
    done: str = await db.execute("DELETE FROM applications WHERE app_id = $1", app_id)
    return done.split()[-1] != "0"
