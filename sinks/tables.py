"""The table sink: writes each delivery of a ``database_table`` rule as a row of that table.

Tables live in their own schema (``VDIP_TABLES_SCHEMA``, ``vdip_tables``) and are created on
first use with the columns below. Names were validated when the rule was saved and are quoted as
identifiers here all the same; no SQL is ever built from event data, which travels as parameters.
Each batch is one transaction of one statement: the batch's columns travel as arrays, and one
``INSERT ... SELECT`` writes the rows and their outcomes in ``deliveries`` (which the statistics
triggers count). Rows are idempotent on ``(event_id, rule_id)``: a replayed delivery adds no row,
and one that comes twice in a batch is written once (its first version). A delivery that cannot
be parsed, or whose row PostgreSQL refuses, goes to ``events.dlq`` alone; a database that cannot
be reached pauses the sink (the batch is retried, no offset is committed).
"""

from typing import Any
from uuid import UUID

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from pydantic import AwareDatetime, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from schemas.events import JsonObject
from schemas.rules import TABLE_NAME
from sinks.batching import Record, Records, WriteRows, dead_letter, insert_rows, run_sink
from vdip.settings import Settings


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_statements(schema: str, table: str) -> list[str]:
    qualified = f"{quote_ident(schema)}.{quote_ident(table)}"
    return [
        f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}",
        f"""CREATE TABLE IF NOT EXISTS {qualified} (
                event_id     uuid NOT NULL,
                rule_id      bigint NOT NULL,
                app_id       text NOT NULL,
                event_type   text NOT NULL,
                payload      jsonb NOT NULL,
                metadata     jsonb NOT NULL,
                received_at  timestamptz NOT NULL,
                written_at   timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (event_id, rule_id))""",
    ]


class TableEvent(TypedDict):
    event_id: UUID
    app_id: str
    event_type: str
    payload: JsonObject
    metadata: JsonObject
    received_at: AwareDatetime


class TableDelivery(TypedDict):
    """The fields of a ``Delivery`` that the sink writes, validated without building its models
    (a quarter of the cost; other fields are ignored). The JSON objects are checked as the
    envelope's payload is (they serialise back, their numbers and strings are storable); a value
    PostgreSQL refuses all the same is dead-lettered alone."""

    delivery_id: UUID
    rule_id: int
    destination_type: str
    destination_config: dict[str, Any]
    event: TableEvent


DELIVERY = TypeAdapter(TableDelivery)


def insert_statement(schema: str, table: str) -> str:
    """The rows (each once: a record may come twice in a batch; the first wins) and their
    deliveries recorded as delivered, in one statement. Its parameters are the columns of
    ``to_row`` rows, as arrays; JSON travels as text and becomes jsonb here."""
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


FAILED = """INSERT INTO deliveries
                (delivery_id, app_id, event_id, rule_id, destination_type, status, attempts, last_error)
            VALUES ($1, $2, $3, $4, 'database_table', 'failed', 1, $5)
            ON CONFLICT (delivery_id) DO UPDATE SET status = 'failed', last_error = $5,
                attempts = deliveries.attempts + 1, updated_at = now()"""


def to_row(delivery: TableDelivery) -> tuple[Any, ...]:
    event = delivery["event"]
    return (
        event["event_id"],
        delivery["rule_id"],
        event["app_id"],
        event["event_type"],
        orjson.dumps(event["payload"]).decode(),
        orjson.dumps(event["metadata"]).decode(),
        event["received_at"],
        delivery["delivery_id"],
    )


def writer_of(statement: str) -> WriteRows:
    """Writes ``to_row`` rows with ``statement`` (inside the caller's transaction)."""

    async def write_rows(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
        await conn.execute(statement, *zip(*rows, strict=True))

    return write_rows


class TableWriter:
    def __init__(self, pool: asyncpg.Pool, producer: AIOKafkaProducer, dlq_topic: str, schema: str) -> None:
        self.pool = pool
        self.producer = producer
        self.dlq_topic = dlq_topic
        self.schema = schema
        self.created: set[str] = set()

    async def write(self, records: Records) -> None:
        by_table: dict[str, list[tuple[Record, tuple[Any, ...]]]] = {}
        for record in records:
            try:
                delivery = DELIVERY.validate_json(record.value)
            except ValidationError as exc:
                await self._refused(record, str(exc))
                continue
            table = delivery["destination_config"].get("table")
            if delivery["destination_type"] != "database_table" or not isinstance(table, str):
                await self._refused(record, "not a database_table delivery")
            elif not TABLE_NAME.fullmatch(table):
                await self._refused(record, f"invalid table name {table!r}")
            else:
                by_table.setdefault(table, []).append((record, to_row(delivery)))
        for table, rows in by_table.items():
            await self._create(table)
            await insert_rows(self.pool, writer_of(insert_statement(self.schema, table)), rows, self._refused)

    async def _create(self, table: str) -> None:
        if table in self.created:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            # Serialise creation across sinks: concurrent CREATE ... IF NOT EXISTS can still collide.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 11))", table)
            for statement in create_statements(self.schema, table):
                await conn.execute(statement)
        self.created.add(table)

    async def _refused(self, record: Record, reason: str) -> None:
        await dead_letter(self.producer, self.dlq_topic, record, "table-sink", reason)
        try:
            delivery = DELIVERY.validate_json(record.value)
        except ValidationError:
            return  # no delivery to speak of
        await self.pool.execute(
            FAILED,
            delivery["delivery_id"],
            delivery["event"]["app_id"],
            delivery["event"]["event_id"],
            delivery["rule_id"],
            reason[:1000],
        )


def run(settings: Settings) -> None:
    """Run the table sink in the foreground until SIGTERM/SIGINT."""
    run_sink(
        settings,
        topic=settings.topic("deliveries.table"),
        group_id=settings.table_sink_group_id,
        metrics_port=settings.table_sink_metrics_port,
        make_write=lambda pool, producer: (
            TableWriter(pool, producer, settings.topic("events.dlq"), settings.tables_schema).write
        ),
    )
