"""``jobs``: the long jobs an operator starts (replays), their progress and their leases.

A job is made ``queued``; a runner (``sinks.jobs``, in the event store's process) claims the oldest
job whose lease is free, marks it ``running`` and holds it under a lease it extends with each batch
(``advance``), so that the job of a killed runner is taken up again, from its cursor, once its
lease has run out. It ends ``done``, ``failed`` (with its error) or ``cancelled`` (by an operator,
at any time: the runner sees it at its next batch).
"""

import uuid
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection

COLUMNS = """job_id, app_id, kind, params, state, total, scanned, sent, skipped, cursor_at, cursor_id,
             error, created_at, started_at, updated_at, finished_at"""


async def create(
    db: Db, job_id: uuid.UUID, app_id: str, kind: str, params: dict[str, Any], total: int
) -> asyncpg.Record:
    row: asyncpg.Record = await db.fetchrow(
        f"""INSERT INTO jobs (job_id, app_id, kind, params, total) VALUES ($1, $2, $3, $4, $5)
            RETURNING {COLUMNS}""",
        job_id,
        app_id,
        kind,
        params,
        total,
    )
    return row


async def get(db: Db, app_id: str, job_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await db.fetchrow(
        f"SELECT {COLUMNS} FROM jobs WHERE app_id = $1 AND job_id = $2", app_id, job_id
    )
    return row


async def of_app(db: Db, app_id: str, kind: str | None, limit: int) -> list[asyncpg.Record]:
    """The application's jobs (of ``kind``; None: all), newest first."""
    rows: list[asyncpg.Record] = await db.fetch(
        f"""SELECT {COLUMNS} FROM jobs WHERE app_id = $1 AND ($2::text IS NULL OR kind = $2)
            ORDER BY created_at DESC LIMIT $3""",
        app_id,
        kind,
        limit,
    )
    return rows


async def unfinished(db: Db, app_ids: list[str] | None) -> list[asyncpg.Record]:
    """The queued and running jobs (of these applications; None: of all), oldest first."""
    rows: list[asyncpg.Record] = await db.fetch(
        f"""SELECT {COLUMNS} FROM jobs
            WHERE state IN ('queued', 'running') AND ($1::text[] IS NULL OR app_id = ANY($1))
            ORDER BY created_at""",
        app_ids,
    )
    return rows


async def claim(db: Db, lease_s: float) -> asyncpg.Record | None:
    """The oldest queued or running job whose lease is free, now ``running`` under a lease of
    ``lease_s`` held by the caller; None when there is none."""
    row: asyncpg.Record | None = await db.fetchrow(
        f"""UPDATE jobs SET state = 'running', claimed_until = now() + make_interval(secs => $1),
                   started_at = coalesce(started_at, now()), updated_at = now()
            WHERE job_id = (
                SELECT job_id FROM jobs
                WHERE state IN ('queued', 'running') AND (claimed_until IS NULL OR claimed_until < now())
                ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING {COLUMNS}""",
        lease_s,
    )
    return row


async def advance(
    db: Db,
    job_id: uuid.UUID,
    *,
    cursor: tuple[datetime, uuid.UUID] | None,
    scanned: int,
    sent: int,
    skipped: int,
    lease_s: float,
) -> str:
    """A batch of the job gone through, up to ``cursor`` (None: the job has none): its counts
    added, its lease extended; the job's state (``cancelled`` when an operator cancelled it meanwhile)."""
    state: str = await db.fetchval(
        """UPDATE jobs SET cursor_at = coalesce($2, cursor_at), cursor_id = coalesce($3, cursor_id),
                  scanned = scanned + $4, sent = sent + $5,
                  skipped = skipped + $6, updated_at = now(),
                  claimed_until = CASE WHEN state = 'running'
                                       THEN now() + make_interval(secs => $7) END
           WHERE job_id = $1 RETURNING state""",
        job_id,
        *(cursor or (None, None)),
        scanned,
        sent,
        skipped,
        lease_s,
    )
    return state


async def hold(db: Db, job_id: uuid.UUID, lease_s: float) -> str:
    """The job's lease extended (while a batch waits); its state."""
    state: str = await db.fetchval(
        """UPDATE jobs SET claimed_until = CASE WHEN state = 'running'
                                               THEN now() + make_interval(secs => $2) END
           WHERE job_id = $1 RETURNING state""",
        job_id,
        lease_s,
    )
    return state


async def finish(
    db: Db, job_id: uuid.UUID, state: str, error: str | None = None, params: dict[str, Any] | None = None
) -> None:
    """A running job ended: ``done`` or ``failed`` (with ``error``); ``params``: what it keeps of
    what it was asked (None: all)."""
    await db.execute(
        """UPDATE jobs SET state = $2, error = $3, claimed_until = NULL, finished_at = now(),
                  updated_at = now(), params = coalesce($4, params)
           WHERE job_id = $1 AND state = 'running'""",
        job_id,
        state,
        error,
        params,
    )


async def release(db: Db, job_id: uuid.UUID) -> None:
    """The caller stops running the job (its process stops): another runner may take it at once."""
    await db.execute("UPDATE jobs SET claimed_until = NULL WHERE job_id = $1", job_id)


async def cancel(db: Db, app_id: str, job_id: uuid.UUID) -> asyncpg.Record | None:
    """A queued or running job cancelled (``COLUMNS``); None when there is no such unfinished job."""
    row: asyncpg.Record | None = await db.fetchrow(
        f"""UPDATE jobs SET state = 'cancelled', claimed_until = NULL, finished_at = now(),
                   updated_at = now()
            WHERE app_id = $1 AND job_id = $2 AND state IN ('queued', 'running')
            RETURNING {COLUMNS}""",
        app_id,
        job_id,
    )
    return row


async def unfinished_of(db: Db, app_id: str, kind: str) -> asyncpg.Record | None:
    """The application's queued or running job of ``kind``, if there is one."""
    row: asyncpg.Record | None = await db.fetchrow(
        f"""SELECT {COLUMNS} FROM jobs WHERE app_id = $1 AND kind = $2 AND state IN ('queued', 'running')
            ORDER BY created_at LIMIT 1""",
        app_id,
        kind,
    )
    return row


async def get_any(db: Db, job_id: uuid.UUID) -> asyncpg.Record | None:
    """A job of any application (the admin's view)."""
    row: asyncpg.Record | None = await db.fetchrow(f"SELECT {COLUMNS} FROM jobs WHERE job_id = $1", job_id)
    return row


async def delete_others_of_app(db: Db, app_id: str, keep: uuid.UUID) -> None:
    """Delete the application's jobs but ``keep`` (the purge's own: the receipt of the deletion)."""
    await db.execute("DELETE FROM jobs WHERE app_id = $1 AND job_id <> $2", app_id, keep)
