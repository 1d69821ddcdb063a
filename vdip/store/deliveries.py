"""``deliveries``: one row per (event, matching rule), where its delivery stands; every statement
that writes it, and its reads.

Rows are written by the event store (with the event: a queue delivery is done, the others
pending), then by the sink that delivers them: the table sink (the row of the destination table
and its outcome in one statement), the webhook dispatcher (the message to send, its claims, its
outcomes: this table is the webhooks' delay queue), and the read API's redeliver. The statistics
triggers (migrations 0006, 0008) count each status change in the writing transaction.
"""

import uuid
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from schemas.events import DeliveryStatus
from schemas.rules import MAX_IN_FLIGHT
from vdip.store.tables import quote_ident

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection

# ------------------------------------------------------------------------------ the event store


def insert_staged(stage: str) -> str:
    """The deliveries of the routed events staged in ``stage`` (the event store's staging table:
    ``ord``, ``app_id``, ``event_id``, ``routing``, ``routed_at``), each once (its first staged
    copy). A delivery to a queue was done when the router's produce was acknowledged; the others
    are pending until their sink says otherwise."""
    return f"""
INSERT INTO deliveries (delivery_id, app_id, event_id, rule_id, destination_type, status, attempts,
                        delivered_at)
SELECT DISTINCT ON (d.delivery_id) d.delivery_id, s.app_id, s.event_id, d.rule_id, d.destination_type,
       CASE WHEN d.destination_type = 'queue' THEN 'delivered' ELSE 'pending' END,
       CASE WHEN d.destination_type = 'queue' THEN 1 ELSE 0 END,
       CASE WHEN d.destination_type = 'queue' THEN s.routed_at END
FROM {stage} s, jsonb_to_recordset(s.routing::jsonb -> 'deliveries')
     AS d(delivery_id uuid, rule_id bigint, destination_type text)
ORDER BY d.delivery_id, s.ord
ON CONFLICT (delivery_id) DO NOTHING"""


# ------------------------------------------------------------------------------ the table sink


def table_rows_statement(schema: str, table: str) -> str:
    """The rows of destination table ``schema.table`` (each once: a record may come twice in a
    batch; the first wins) and their deliveries recorded as delivered, in one statement: it writes
    the destination table too. Its parameters are the columns of ``sinks.tables.to_row`` rows, as
    arrays; JSON travels as text and becomes jsonb here."""
    return f"""WITH batch AS (
                   SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                                        $6::text[], $7::timestamptz[], $8::uuid[]) WITH ORDINALITY
                       AS b(event_id, rule_id, app_id, event_type, payload, metadata, received_at,
                            delivery_id, ord)),
               written AS (
                   INSERT INTO {quote_ident(schema)}.{quote_ident(table)}
                       (event_id, rule_id, app_id, event_type, payload, metadata, received_at)
                   SELECT DISTINCT ON (event_id, rule_id) event_id, rule_id, app_id, event_type,
                          payload::jsonb, metadata::jsonb, received_at
                   FROM batch ORDER BY event_id, rule_id, ord
                   ON CONFLICT (event_id, rule_id) DO NOTHING)
               INSERT INTO deliveries
                   (delivery_id, app_id, event_id, rule_id, destination_type, status, attempts, delivered_at)
               SELECT DISTINCT ON (delivery_id) delivery_id, app_id, event_id, rule_id, 'database_table',
                      'delivered', 1, now()
               FROM batch ORDER BY delivery_id, ord
               ON CONFLICT (delivery_id) DO UPDATE SET status = 'delivered', last_error = NULL,
                   attempts = deliveries.attempts + 1, updated_at = now(),
                   delivered_at = coalesce(deliveries.delivered_at, now())"""


TABLE_FAILED = """INSERT INTO deliveries
                (delivery_id, app_id, event_id, rule_id, destination_type, status, attempts, last_error)
            VALUES ($1, $2, $3, $4, 'database_table', 'failed', 1, $5)
            ON CONFLICT (delivery_id) DO UPDATE SET status = 'failed', last_error = $5,
                attempts = deliveries.attempts + 1, updated_at = now()"""


async def table_row_failed(
    db: Db, delivery_id: uuid.UUID, *, app_id: str, event_id: uuid.UUID, rule_id: int, error: str
) -> None:
    """A ``database_table`` delivery failed for good (its row was refused)."""
    await db.execute(TABLE_FAILED, delivery_id, app_id, event_id, rule_id, error)


# ------------------------------------------------------------------------------ webhooks

# Records a batch of deliveries with their messages, due now, in one statement (so the counting
# trigger runs once per batch); a replayed record changes nothing. Parameters, one array each:
# delivery_id, app_id, event_id, rule_id, message (JSON text). A delivery_id twice in the batch
# is recorded once, its first copy.
RECORD_WEBHOOKS = """
INSERT INTO deliveries
    (delivery_id, app_id, event_id, rule_id, destination_type, status, message, next_attempt_at)
SELECT DISTINCT ON (delivery_id) delivery_id, app_id, event_id, rule_id, 'webhook', 'pending',
       message::jsonb, now()
FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::bigint[], $5::text[]) WITH ORDINALITY
    AS r(delivery_id, app_id, event_id, rule_id, message, ord)
ORDER BY delivery_id, ord
ON CONFLICT (delivery_id) DO UPDATE
    SET message = EXCLUDED.message, next_attempt_at = now(), updated_at = now()
    WHERE deliveries.message IS NULL
"""


async def record_webhooks(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """``RECORD_WEBHOOKS`` of rows (delivery_id, app_id, event_id, rule_id, message as JSON text)."""
    await conn.execute(RECORD_WEBHOOKS, *(list(column) for column in zip(*rows, strict=True)))


# Each webhook rule's due deliveries, oldest first: $6 times its max_in_flight (capped; $6 is 2
# when the next ones wait in this process, to start the moment a slot frees) less what this
# dispatcher has in flight or waiting for it ($2, $3), and no more than its rate allows ($4:
# tokens left; NULL: not known yet, one second's worth). Reads routing_rules.
CLAIM_WEBHOOKS = f"""
WITH busy AS (
    SELECT * FROM unnest($2::bigint[], $3::int[], $4::int[]) AS b(rule_id, busy, allowance)
), picked AS (
    SELECT due.delivery_id, r.webhook_secret, r.previous_webhook_secret,
           r.previous_secret_expires_at > now() AS previous_valid, r.destination_disabled_reason,
           r.destination_config
    FROM routing_rules r
    LEFT JOIN busy b ON b.rule_id = r.rule_id
    CROSS JOIN LATERAL (
        SELECT d.delivery_id FROM deliveries d
        WHERE d.rule_id = r.rule_id AND d.status IN ('pending', 'retrying') AND d.destination_type = 'webhook'
          AND d.message IS NOT NULL AND d.next_attempt_at <= now()
          AND (d.claimed_until IS NULL OR d.claimed_until < now())
        ORDER BY d.next_attempt_at
        LIMIT greatest(0, least(
            least(coalesce((r.destination_config->>'max_in_flight')::int, $5), {MAX_IN_FLIGHT}) * $6
                - coalesce(b.busy, 0),
            coalesce(b.allowance, ceil((r.destination_config->>'max_per_second')::float8)::int,
                     {MAX_IN_FLIGHT})))
        FOR UPDATE OF d SKIP LOCKED
    ) due
    WHERE r.destination_type = 'webhook'
)
UPDATE deliveries d SET claimed_until = now() + make_interval(secs => $1)
FROM picked p WHERE d.delivery_id = p.delivery_id
RETURNING d.delivery_id, d.rule_id, d.attempts, d.message, p.webhook_secret, p.previous_webhook_secret,
          p.previous_valid, p.destination_disabled_reason, p.destination_config
"""

# Due deliveries whose rule is gone or no longer a webhook rule (CLAIM_WEBHOOKS never sees them).
# Reads routing_rules.
ORPHANS = """
UPDATE deliveries SET claimed_until = now() + make_interval(secs => $2)
WHERE delivery_id IN (
    SELECT delivery_id FROM deliveries d
    WHERE status IN ('pending', 'retrying') AND destination_type = 'webhook' AND message IS NOT NULL
      AND next_attempt_at <= now() AND (claimed_until IS NULL OR claimed_until < now())
      AND NOT EXISTS (SELECT 1 FROM routing_rules r
                      WHERE r.rule_id = d.rule_id AND r.destination_type = 'webhook')
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED)
RETURNING delivery_id, rule_id, attempts, message
"""

SET_OUTCOME = """
UPDATE deliveries SET status = $2, attempts = attempts + $3, last_status_code = $4, last_error = $5,
       last_latency_ms = $6, next_attempt_at = now() + make_interval(secs => $7), claimed_until = NULL,
       delivered_at = CASE WHEN $2 = 'delivered' THEN now() END, updated_at = now()
WHERE delivery_id = $1
"""

# Many successes in one statement each (what SET_OUTCOME writes for a 2xx).
DELIVERED = """
UPDATE deliveries d SET status = 'delivered', attempts = d.attempts + 1, last_status_code = o.status_code,
       last_error = NULL, last_latency_ms = o.latency_ms, next_attempt_at = NULL, claimed_until = NULL,
       delivered_at = now(), updated_at = now()
FROM unnest($1::uuid[], $2::int[], $3::float8[]) AS o(delivery_id, status_code, latency_ms)
WHERE d.delivery_id = o.delivery_id
"""


async def claim_webhooks(
    db: Db,
    *,
    lease_s: float,
    rule_ids: list[int],
    busy: list[int],
    allowance: list[int | None],
    default_in_flight: int,
    depth: int,
) -> list[asyncpg.Record]:
    """Claim for ``lease_s`` each webhook rule's due deliveries it may start (``CLAIM_WEBHOOKS``);
    each row has the delivery and its rule's secrets, state and destination_config."""
    rows: list[asyncpg.Record] = await db.fetch(
        CLAIM_WEBHOOKS, lease_s, rule_ids, busy, allowance, default_in_flight, depth
    )
    return rows


async def claim_orphans(db: Db, *, limit: int, lease_s: float) -> list[asyncpg.Record]:
    """Claim for ``lease_s`` up to ``limit`` due webhook deliveries that no webhook rule owns."""
    rows: list[asyncpg.Record] = await db.fetch(ORPHANS, limit, lease_s)
    return rows


async def release_claims(db: Db, delivery_ids: list[uuid.UUID]) -> None:
    """Claimed deliveries not started: back in the queue for any dispatcher."""
    await db.execute(
        "UPDATE deliveries SET claimed_until = NULL WHERE delivery_id = ANY($1::uuid[])", delivery_ids
    )


async def set_outcome(
    conn: asyncpg.Connection,
    delivery_id: uuid.UUID,
    *,
    status: DeliveryStatus,
    tried: int,
    status_code: int | None,
    error: str | None,
    latency_ms: float | None,
    wait_s: float | None,
) -> None:
    """A webhook attempt's outcome (``tried``: 1, or 0 when none was made); the next attempt is
    due in ``wait_s`` (None: none)."""
    await conn.execute(SET_OUTCOME, delivery_id, status, tried, status_code, error, latency_ms, wait_s)


async def mark_delivered(
    conn: asyncpg.Connection,
    delivery_ids: list[uuid.UUID],
    status_codes: list[int],
    latencies_ms: list[float],
) -> None:
    """Many webhook successes at once."""
    await conn.execute(DELIVERED, delivery_ids, status_codes, latencies_ms)


# ------------------------------------------------------------------------------ the read API

COLUMNS = """delivery_id, event_id, rule_id, destination_type, status, attempts, last_status_code,
                       last_error, last_latency_ms, next_attempt_at, created_at, updated_at, delivered_at"""


async def of_event(db: Db, app_id: str, event_id: uuid.UUID) -> list[asyncpg.Record]:
    """An event's deliveries (``COLUMNS``), by rule."""
    rows: list[asyncpg.Record] = await db.fetch(
        f"SELECT {COLUMNS} FROM deliveries WHERE app_id = $1 AND event_id = $2 ORDER BY rule_id",
        app_id,
        event_id,
    )
    return rows


async def redeliver(
    db: Db, delivery_id: uuid.UUID, *, app_id: str, event_id: uuid.UUID
) -> asyncpg.Record | None:
    """A failed webhook delivery back in the dispatcher's queue, due now (``COLUMNS``); None when
    the event has no such failed webhook delivery."""
    row: asyncpg.Record | None = await db.fetchrow(
        f"""UPDATE deliveries SET status = 'pending', next_attempt_at = now(), claimed_until = NULL,
                   updated_at = now()
            WHERE delivery_id = $1 AND app_id = $2 AND event_id = $3 AND status = 'failed'
              AND destination_type = 'webhook'
            RETURNING {COLUMNS}""",
        delivery_id,
        app_id,
        event_id,
    )
    return row


# At most this many deliveries queued again per transaction by ``redeliver_rule``.
REDELIVER_BATCH = 1000


async def redeliver_rule(
    pool: asyncpg.Pool, rule_id: int, since: datetime, batch: int = REDELIVER_BATCH
) -> int:
    """Every failed webhook delivery of rule ``rule_id`` that failed at or after ``since`` (its
    ``updated_at``) back in the dispatcher's queue, due now, ``batch`` per transaction; how many."""
    total = 0
    while True:
        done: str = await pool.execute(
            """UPDATE deliveries SET status = 'pending', next_attempt_at = now(), claimed_until = NULL,
                      updated_at = now()
               WHERE delivery_id IN (
                   SELECT delivery_id FROM deliveries
                   WHERE rule_id = $1 AND status = 'failed' AND destination_type = 'webhook'
                     AND updated_at >= $2
                   LIMIT $3 FOR UPDATE SKIP LOCKED)""",
            rule_id,
            since,
            batch,
        )
        count = int(done.split()[-1])
        total += count
        if count < batch:
            return total


# ------------------------------------------------------------------------------ replays


async def statuses(db: Db, delivery_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The status of each of these deliveries that exists."""
    rows = await db.fetch(
        "SELECT delivery_id, status FROM deliveries WHERE delivery_id = ANY($1)", delivery_ids
    )
    return {row["delivery_id"]: row["status"] for row in rows}


async def record_queue_sent(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Queue deliveries a replay sent (Kafka acknowledged them): rows of (delivery_id, app_id,
    event_id, rule_id), delivered now (once more, for one delivered before)."""
    await conn.execute(
        """INSERT INTO deliveries
               (delivery_id, app_id, event_id, rule_id, destination_type, status, attempts, delivered_at)
           SELECT delivery_id, app_id, event_id, rule_id, 'queue', 'delivered', 1, now()
           FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::bigint[])
               AS r(delivery_id, app_id, event_id, rule_id)
           ON CONFLICT (delivery_id) DO UPDATE SET status = 'delivered', last_error = NULL,
               attempts = deliveries.attempts + 1, updated_at = now(), delivered_at = now()""",
        *(list(column) for column in zip(*rows, strict=True)),
    )


async def requeue_webhooks(conn: asyncpg.Connection, rows: list[tuple[uuid.UUID, str]]) -> None:
    """Webhook deliveries that ended (delivered or failed) back in the dispatcher's queue, due
    now, with their message as routed again: rows of (delivery_id, message as JSON text)."""
    await conn.execute(
        """UPDATE deliveries d SET status = 'pending', message = r.message::jsonb, next_attempt_at = now(),
                  claimed_until = NULL, updated_at = now()
           FROM unnest($1::uuid[], $2::text[]) AS r(delivery_id, message)
           WHERE d.delivery_id = r.delivery_id AND d.status IN ('delivered', 'failed')
             AND d.destination_type = 'webhook'""",
        *(list(column) for column in zip(*rows, strict=True)),
    )


async def delete_of_events(db: Db, app_id: str, event_ids: list[uuid.UUID]) -> None:
    """Delete the deliveries of these events of the application (they are deleted too)."""
    await db.execute("DELETE FROM deliveries WHERE app_id = $1 AND event_id = ANY($2)", app_id, event_ids)


async def delete_all_of_app(db: Db, app_id: str) -> None:
    """Delete what is left of the application's deliveries (their events are gone)."""
    await db.execute("DELETE FROM deliveries WHERE app_id = $1", app_id)


# ------------------------------------------------------------------------------ endpoint health


async def webhook_outcomes(db: Db, app_id: str, since: datetime) -> dict[int, asyncpg.Record]:
    """For each of the application's webhook rules, its deliveries that ended since ``since``
    (``delivered``, ``failed``), those under way (``under_way``), and when the last one ended."""
    rows = await db.fetch(
        """SELECT rule_id,
                  count(*) FILTER (WHERE status = 'delivered' AND updated_at >= $2) AS delivered,
                  count(*) FILTER (WHERE status = 'failed' AND updated_at >= $2) AS failed,
                  count(*) FILTER (WHERE status IN ('pending', 'retrying')) AS under_way,
                  max(updated_at) FILTER (WHERE status IN ('delivered', 'failed')) AS last_ended_at
           FROM deliveries WHERE app_id = $1 AND destination_type = 'webhook'
           GROUP BY rule_id""",
        app_id,
        since,
    )
    return {row["rule_id"]: row for row in rows}


async def last_attempts(db: Db, rule_id: int, limit: int) -> list[asyncpg.Record]:
    """The rule's deliveries most recently attempted (``COLUMNS``), newest first."""
    rows: list[asyncpg.Record] = await db.fetch(
        f"""SELECT {COLUMNS} FROM deliveries WHERE rule_id = $1 AND attempts > 0
            ORDER BY updated_at DESC LIMIT $2""",
        rule_id,
        limit,
    )
    return rows
