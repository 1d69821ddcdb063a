"""``destination_owners``: every statement that writes it, and its reads.

A queue topic or a destination table belongs to the application whose rule first claimed it
(``vdip.rulesets.claim_destination``, in the rule's write transaction); the table sink claims a
table nobody owns yet for the application of its rows. Only the admin token moves a destination to
another application (``transfer``). Names are the rule's own (a topic without the topic prefix).
"""

from datetime import datetime
from typing import TypeAlias

import asyncpg
from pydantic import BaseModel

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection

_COLUMNS = "destination_type, name, app_id, claimed_at"

# The destination's name in a rule's destination_config, by destination type.
NAME_KEYS = {"queue": "topic", "database_table": "table"}


class OwnedDestination(BaseModel):
    destination_type: str
    name: str
    app_id: str
    claimed_at: datetime


async def claim(db: Db, destination_type: str, name: str, app_id: str) -> str:
    """Claim the destination for ``app_id`` unless another application owns it; returns its owner."""
    owner: str | None = await db.fetchval(
        """WITH claimed AS (
               INSERT INTO destination_owners (destination_type, name, app_id) VALUES ($1, $2, $3)
               ON CONFLICT (destination_type, name) DO NOTHING RETURNING app_id)
           SELECT app_id FROM claimed
           UNION ALL
           SELECT app_id FROM destination_owners WHERE destination_type = $1 AND name = $2
           LIMIT 1""",
        destination_type,
        name,
        app_id,
    )
    if owner is None:  # claimed by a transaction that committed while this statement waited on it
        owner = await db.fetchval(
            "SELECT app_id FROM destination_owners WHERE destination_type = $1 AND name = $2",
            destination_type,
            name,
        )
    assert owner is not None
    return owner


async def owners_of(db: Db, destination_type: str, names: list[str]) -> dict[str, str]:
    rows = await db.fetch(
        "SELECT name, app_id FROM destination_owners WHERE destination_type = $1 AND name = ANY($2::text[])",
        destination_type,
        names,
    )
    return {row["name"]: row["app_id"] for row in rows}


async def owned_by(db: Db, app_id: str) -> list[OwnedDestination]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM destination_owners WHERE app_id = $1 ORDER BY destination_type, name",
        app_id,
    )
    return [OwnedDestination(**dict(row)) for row in rows]


async def users_other_than(db: Db, destination_type: str, name: str, app_id: str) -> list[str]:
    """The applications other than ``app_id`` whose rules name the destination (reads
    routing_rules)."""
    rows = await db.fetch(
        """SELECT DISTINCT app_id FROM routing_rules
           WHERE destination_type = $1 AND destination_config ->> $4 = $2 AND app_id <> $3
           ORDER BY app_id""",
        destination_type,
        name,
        app_id,
        NAME_KEYS[destination_type],
    )
    return [row["app_id"] for row in rows]


async def transfer(
    conn: asyncpg.Connection, destination_type: str, name: str, app_id: str
) -> tuple[OwnedDestination, str | None]:
    """Make ``app_id`` the owner (claiming it if nobody owns it); returns it and the previous owner.
    Call it in a transaction."""
    previous: str | None = await conn.fetchval(
        "SELECT app_id FROM destination_owners WHERE destination_type = $1 AND name = $2 FOR UPDATE",
        destination_type,
        name,
    )
    row = await conn.fetchrow(
        f"""INSERT INTO destination_owners (destination_type, name, app_id) VALUES ($1, $2, $3)
            ON CONFLICT (destination_type, name) DO UPDATE SET app_id = EXCLUDED.app_id, claimed_at = now()
            RETURNING {_COLUMNS}""",
        destination_type,
        name,
        app_id,
    )
    assert row is not None
    return OwnedDestination(**dict(row)), previous


async def release_all(db: Db, app_id: str) -> None:
    """The application owns no destination any more."""
    await db.execute("DELETE FROM destination_owners WHERE app_id = $1", app_id)
