"""``ingest_buckets``: the token bucket of each application's ingest quota, shared by every
gateway process (``gateway.quotas``). Its quota itself is a column of ``applications``."""

from typing import TypeAlias

import asyncpg

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


async def take_tokens(
    db: Db, app_id: str, *, rate: float, burst: float, want: int, need: int, timeout_s: float | None = None
) -> tuple[int, float]:
    """Refill ``app_id``'s bucket, then take up to ``want`` tokens if at least ``need`` are there
    (else none): (taken, tokens left)."""
    row = await db.fetchrow(
        "SELECT * FROM take_ingest_tokens($1, $2, $3, $4, $5)",
        app_id,
        rate,
        burst,
        want,
        need,
        timeout=timeout_s,
    )
    assert row is not None
    return row["taken"], row["tokens_left"]


async def forget_bucket(db: Db, app_id: str) -> None:
    await db.execute("DELETE FROM ingest_buckets WHERE app_id = $1", app_id)
