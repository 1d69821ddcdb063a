"""``data_events`` and ``event_claims``: every statement that writes them, and their reads.

``event_claims`` holds the first version of each ``(app_id, event_id)`` (the hash of its
``event_type`` and ``payload``), claimed by the router before it routes the event
(``streams/claims.py``); ``data_events`` holds every routed event, written once by the event store
(``sinks/event_store.py``) from its staging table. An event's status is computed by the database
function ``event_status`` (migrations 0003, 0008) from its stored status and its deliveries.
"""

import uuid
from datetime import datetime
from typing import TypeAlias

import asyncpg

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection

# ------------------------------------------------------------------------------ data_events


def insert_staged(stage: str) -> str:
    """The routed events staged in ``stage`` (the event store's staging table, one row per record
    in batch order ``ord``), each once (its first staged copy); an event stored already stays as
    it is, unless its routing failed and this copy's did not (the same version routed again,
    e.g. its dead letter sent back once the cause was fixed): then it takes this routing and
    status (counted by a trigger). JSON travels as text and becomes jsonb here; stored_at is the
    moment of the write (clock_timestamp), not the start of the transaction."""
    return f"""INSERT INTO data_events (event_id, app_id, event_type, payload, metadata, received_at,
                         occurred_at, occurred_at_clamped, schema_version, status, routing, stored_at)
SELECT DISTINCT ON (app_id, event_id) event_id, app_id, event_type, payload::jsonb, metadata::jsonb,
       received_at, occurred_at, occurred_at_clamped, schema_version, status, routing::jsonb,
       clock_timestamp()
FROM {stage}
ORDER BY app_id, event_id, ord
ON CONFLICT (app_id, event_id) DO UPDATE SET status = EXCLUDED.status, routing = EXCLUDED.routing
WHERE data_events.routing->>'error' IS NOT NULL AND EXCLUDED.routing->>'error' IS NULL
"""


# What the read API shows of an event; its status is event_status (which reads deliveries).
COLUMNS = """event_id, app_id, event_type, payload, metadata, received_at, occurred_at,
              occurred_at_clamped, schema_version, event_status(status, app_id, event_id) AS status, routing,
              stored_at"""


async def list_page(
    db: Db,
    app_id: str | None,
    *,
    event_type: str | None,
    status: str | None,
    start: datetime | None,
    end: datetime | None,
    after_at: datetime | None,
    after_id: uuid.UUID | None,
    limit: int,
    offset: int = 0,
) -> list[asyncpg.Record]:
    """An application's events (``COLUMNS``), newest first, after the keyset ``(after_at, after_id)``
    and the first ``offset`` of those."""
    rows: list[asyncpg.Record] = await db.fetch(
        f"""SELECT {COLUMNS} FROM data_events
            WHERE app_id = $1
              AND ($2::text IS NULL OR event_type = $2)
              AND ($3::text IS NULL OR event_status(status, app_id, event_id) = $3)
              AND ($4::timestamptz IS NULL OR received_at >= $4)
              AND ($5::timestamptz IS NULL OR received_at < $5)
              AND ($6::timestamptz IS NULL OR (received_at, event_id) < ($6, $7::uuid))
            ORDER BY received_at DESC, event_id DESC
            LIMIT $8 OFFSET $9""",
        app_id,
        event_type,
        status,
        start,
        end,
        after_at,
        after_id,
        limit,
        offset,
    )
    return rows


async def find(db: Db, event_id: uuid.UUID, app_id: str | None) -> list[asyncpg.Record]:
    """The stored event ``event_id`` (``COLUMNS``) of ``app_id``, or of every application that used
    the id (None), by app_id."""
    rows: list[asyncpg.Record]
    if app_id is not None:
        rows = await db.fetch(
            f"SELECT {COLUMNS} FROM data_events WHERE app_id = $1 AND event_id = $2", app_id, event_id
        )
    else:
        rows = await db.fetch(
            f"SELECT {COLUMNS} FROM data_events WHERE event_id = $1 ORDER BY app_id", event_id
        )
    return rows


async def first_received(db: Db, app_id: str) -> datetime | None:
    """When ``app_id``'s first stored event was received (None: it has none)."""
    at: datetime | None = await db.fetchval(
        "SELECT min(received_at) FROM data_events WHERE app_id = $1", app_id
    )
    return at


async def take_received_before(
    conn: asyncpg.Connection, app_id: str, before: datetime, batch: int
) -> list[uuid.UUID]:
    """Delete at most ``batch`` of the application's events received before ``before``, oldest
    first; their ids (the caller deletes what hangs on them in the same transaction). Events
    another transaction holds are left for the next call."""
    rows = await conn.fetch(
        """WITH doomed AS (
               SELECT app_id, event_id FROM data_events
               WHERE app_id = $1 AND received_at < $2
               ORDER BY received_at LIMIT $3 FOR UPDATE SKIP LOCKED
           )
           DELETE FROM data_events e USING doomed
           WHERE e.app_id = doomed.app_id AND e.event_id = doomed.event_id
           RETURNING e.event_id""",
        app_id,
        before,
        batch,
    )
    return [r["event_id"] for r in rows]


# The events a replay goes through (``sinks.replay``): received in [start, end), of one type or
# all, in (received_at, event_id) order, after a cursor.
_IN_RANGE = """app_id = $1 AND received_at >= $2 AND received_at < $3
              AND ($4::text IS NULL OR event_type = $4)"""


async def count_in_range(db: Db, app_id: str, start: datetime, end: datetime, event_type: str | None) -> int:
    count: int = await db.fetchval(
        f"SELECT count(*) FROM data_events WHERE {_IN_RANGE}", app_id, start, end, event_type
    )
    return count


async def page_in_range(
    db: Db,
    app_id: str,
    start: datetime,
    end: datetime,
    event_type: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Up to ``limit`` events of the range after ``after``, oldest first: the envelope's columns."""
    after_at, after_id = after or (None, None)
    rows: list[asyncpg.Record] = await db.fetch(
        f"""SELECT event_id, app_id, event_type, payload, metadata, received_at, occurred_at,
                   occurred_at_clamped, schema_version
            FROM data_events
            WHERE {_IN_RANGE} AND ($5::timestamptz IS NULL OR (received_at, event_id) > ($5, $6::uuid))
            ORDER BY received_at, event_id LIMIT $7""",
        app_id,
        start,
        end,
        event_type,
        after_at,
        after_id,
        limit,
    )
    return rows


# ------------------------------------------------------------------------------ event_claims

# The common case: no key was claimed before. A plain INSERT costs PostgreSQL about 40 % less
# than one ON CONFLICT DO NOTHING (no speculative insertion); any key claimed before (or by a
# concurrent claimer, which it waits for) fails it whole, and CLAIM does the work.
FRESH = """
INSERT INTO event_claims (app_id, event_id, content_hash)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::bytea[])
"""

# Claims the keys no one claimed yet, and returns the positions (1-based) of the others.
CLAIM = """
WITH won AS (
    INSERT INTO event_claims (app_id, event_id, content_hash)
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::bytea[])
    ON CONFLICT DO NOTHING
    RETURNING app_id, event_id
)
SELECT k.n FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS k(app_id, event_id, n)
WHERE NOT EXISTS (SELECT FROM won WHERE won.app_id = k.app_id AND won.event_id = k.event_id)
"""

CLAIMED = """
SELECT k.n, c.content_hash
FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS k(app_id, event_id, n)
JOIN event_claims c ON c.app_id = k.app_id AND c.event_id = k.event_id
"""

# A claim made before claims existed has no hash: it gets the hash of the version that equals
# the stored event (jsonb equality: jsonb may write a number another way than JSON did). Reads
# data_events.
STORED_VERSION = """
UPDATE event_claims c SET content_hash = v.content_hash
FROM unnest($1::text[], $2::uuid[], $3::bytea[], $4::text[], $5::jsonb[])
     AS v(app_id, event_id, content_hash, event_type, payload),
     data_events d
WHERE c.app_id = v.app_id AND c.event_id = v.event_id AND c.content_hash IS NULL
  AND d.app_id = v.app_id AND d.event_id = v.event_id
  AND d.event_type = v.event_type AND d.payload = v.payload
RETURNING c.app_id, c.event_id, c.content_hash
"""

# The gateway's conflict check (``gateway/conflicts.py``): the hash each of an application's ids
# was claimed with,
CLAIMED_OF_APP = """
SELECT c.event_id, c.content_hash
FROM unnest($2::uuid[]) AS k(event_id)
JOIN event_claims c ON c.app_id = $1 AND c.event_id = k.event_id
"""

# and, for a claim from before hashes, whether the stored event is another version (jsonb
# equality, as the router).
STORED_OTHER_VERSION = """
SELECT d.event_id
FROM unnest($2::uuid[], $3::text[], $4::jsonb[]) AS k(event_id, event_type, payload)
JOIN data_events d ON d.app_id = $1 AND d.event_id = k.event_id
WHERE d.event_type <> k.event_type OR d.payload <> k.payload
"""


IMPORT = """
INSERT INTO data_events (event_id, app_id, event_type, payload, metadata, received_at, schema_version,
                         status, routing, stored_at)
SELECT e.event_id, $1, e.event_type, e.payload::jsonb, e.metadata::jsonb, e.received_at, 1, 'processed',
       e.routing::jsonb, clock_timestamp()
FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[])
     AS e(event_id, event_type, payload, metadata, received_at, routing)
ON CONFLICT (app_id, event_id) DO UPDATE SET status = EXCLUDED.status, routing = EXCLUDED.routing
WHERE data_events.routing->>'error' IS NOT NULL AND EXCLUDED.routing->>'error' IS NULL
"""


ImportedEvent: TypeAlias = tuple[uuid.UUID, str, str, str, datetime, str]


async def insert_imported(db: Db, app_id: str, events: list[ImportedEvent]) -> int:
    """Store events of ``app_id`` imported from elsewhere as they are, routed already: (event_id,
    event_type, payload, metadata, received_at, routing), JSON as text. Returns how many were new
    (an event stored already stays as it is). Counted by the insert trigger, as every event."""
    if not events:
        return 0
    columns = list(zip(*events, strict=True))
    status: str = await db.execute(IMPORT, app_id, *columns)
    return int(status.split()[-1])


# ------------------------------------------------------------------------------ an application purged


async def delete_batch_of_app(conn: asyncpg.Connection, app_id: str, batch: int) -> list[uuid.UUID]:
    """Delete at most ``batch`` of the application's stored events; their ids (the caller deletes
    what hangs on them in the same transaction)."""
    rows = await conn.fetch(
        """DELETE FROM data_events WHERE app_id = $1 AND event_id IN (
               SELECT event_id FROM data_events WHERE app_id = $1 LIMIT $2 FOR UPDATE SKIP LOCKED)
           RETURNING event_id""",
        app_id,
        batch,
    )
    return [r["event_id"] for r in rows]


async def delete_claims_of_app(db: Db, app_id: str) -> None:
    """Forget the first version of each of the application's event ids."""
    await db.execute("DELETE FROM event_claims WHERE app_id = $1", app_id)


async def delete_batch_matching(
    conn: asyncpg.Connection, app_id: str, path: list[str], values: list[object], batch: int
) -> list[uuid.UUID]:
    """Delete at most ``batch`` of the application's events whose payload has one of ``values``
    at ``path`` (its keys); their ids."""
    rows = await conn.fetch(
        """DELETE FROM data_events WHERE app_id = $1 AND event_id IN (
               SELECT event_id FROM data_events WHERE app_id = $1 AND payload #> $2::text[] = ANY($3::jsonb[])
               LIMIT $4 FOR UPDATE SKIP LOCKED)
           RETURNING event_id""",
        app_id,
        path,
        values,
        batch,
    )
    return [r["event_id"] for r in rows]


async def count_matching(db: Db, app_id: str, path: list[str], values: list[object]) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM data_events WHERE app_id = $1 AND payload #> $2::text[] = ANY($3::jsonb[])",
        app_id,
        path,
        values,
    )
    return count


async def count_of_app(db: Db, app_id: str) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM data_events WHERE app_id = $1", app_id)
    return count


# ------------------------------------------------------------------------------ the admin overview


async def recent_by_app(db: Db, since: datetime) -> list[asyncpg.Record]:
    """Each application's events received since ``since`` (``recent``), their accept -> stored p99
    (``p99_ms``), and when its last event was received (``last_at``); one index scan each."""
    rows: list[asyncpg.Record] = await db.fetch(
        """SELECT a.app_id, s.recent, s.p99_ms, l.last_at
           FROM applications a
           CROSS JOIN LATERAL (
               SELECT count(*) AS recent,
                      percentile_cont(0.99) WITHIN GROUP (
                          ORDER BY extract(epoch FROM e.stored_at - e.received_at)) * 1000 AS p99_ms
               FROM data_events e WHERE e.app_id = a.app_id AND e.received_at >= $1) s
           CROSS JOIN LATERAL (
               SELECT max(e.received_at) AS last_at FROM data_events e WHERE e.app_id = a.app_id) l
           ORDER BY a.app_id""",
        since,
    )
    return rows


async def recent_latency(db: Db, since: datetime) -> tuple[int, float | None]:
    """How many events of the applications were received since ``since``, and their accept ->
    stored p99 in milliseconds (None: none)."""
    row = await db.fetchrow(
        """SELECT count(*) AS recent,
                  percentile_cont(0.99) WITHIN GROUP (
                      ORDER BY extract(epoch FROM e.stored_at - e.received_at)) * 1000 AS p99_ms
           FROM applications a JOIN data_events e ON e.app_id = a.app_id AND e.received_at >= $1""",
        since,
    )
    assert row is not None
    return row["recent"], row["p99_ms"]
