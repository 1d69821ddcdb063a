"""``suppressions``: the values an application asked never to keep again, as hashes
(``schemas.rules.suppression_hash``), published with its rule set (``rules.snapshot``) so that the
router drops the events that carry one."""

from typing import TypeAlias

import asyncpg

from schemas.rules import Suppression

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


async def add(conn: asyncpg.Connection, app_id: str, path: str, value_hashes: list[str]) -> None:
    """Suppress these values at ``path`` (those suppressed already stay as they are)."""
    await conn.execute(
        """INSERT INTO suppressions (app_id, path, value_hash) SELECT $1, $2, unnest($3::text[])
           ON CONFLICT DO NOTHING""",
        app_id,
        path,
        value_hashes,
    )


async def of_app(db: Db, app_id: str) -> list[Suppression]:
    rows = await db.fetch(
        """SELECT path, array_agg(value_hash ORDER BY value_hash) AS value_hashes FROM suppressions
           WHERE app_id = $1 GROUP BY path ORDER BY path""",
        app_id,
    )
    return [Suppression(path=row["path"], value_hashes=row["value_hashes"]) for row in rows]


async def delete_of_app(db: Db, app_id: str) -> None:
    await db.execute("DELETE FROM suppressions WHERE app_id = $1", app_id)
