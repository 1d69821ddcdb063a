"""The table sink: writes each delivery of a ``database_table`` rule as a row of that table.

Tables live in their own schema (``VDIP_TABLES_SCHEMA``, ``vdip_tables``) and are created on
first use (``vdip.store.tables``). A table belongs to one application (``destination_owners``):
each batch checks, with one statement per table, that its rows are its owner's, and refuses the
others (dead-lettered, their deliveries failed). Names were validated when the rule was saved
and are quoted as identifiers all the same; no SQL is ever built from event data, which travels as parameters.
Each batch is one transaction of one statement: the batch's columns travel as arrays, and one
``INSERT ... SELECT`` (``vdip.store.deliveries.table_rows_statement``) writes the rows and their
outcomes in ``deliveries`` (which the statistics triggers count). Rows are idempotent on
``(event_id, rule_id)``: a replayed delivery adds no row, and one that comes twice in a batch is
written once (its first version). A delivery that cannot be parsed, or whose row PostgreSQL
refuses, goes to ``events.dlq`` alone; a database that cannot be reached pauses the sink (the
batch is retried, no offset is committed).
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
from vdip.store import owners
from vdip.store.deliveries import table_row_failed, table_rows_statement
from vdip.store.tables import create_table

APP_ID = 2  # the application's column in a ``to_row`` row


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
        for table, found in by_table.items():
            rows = await self._owned(table, found)
            if not rows:
                continue
            await self._create(table)
            write = writer_of(table_rows_statement(self.schema, table))
            await insert_rows(self.pool, write, rows, self._refused)

    async def _owned(
        self, table: str, rows: list[tuple[Record, tuple[Any, ...]]]
    ) -> list[tuple[Record, tuple[Any, ...]]]:
        """The rows of the table's owner (a table nobody owns yet becomes the first row's
        application's); the others are refused: tables of different applications never mix."""
        owner = await owners.claim(self.pool, "database_table", table, rows[0][1][APP_ID])
        for record, row in rows:
            if row[APP_ID] != owner:
                await self._refused(record, f"table {table!r} belongs to another application")
        return [(record, row) for record, row in rows if row[APP_ID] == owner]

    async def _create(self, table: str) -> None:
        if table in self.created:
            return
        await create_table(self.pool, self.schema, table)
        self.created.add(table)

    async def _refused(self, record: Record, reason: str) -> None:
        await dead_letter(self.producer, self.dlq_topic, record, "table-sink", reason)
        try:
            delivery = DELIVERY.validate_json(record.value)
        except ValidationError:
            return  # no delivery to speak of
        await table_row_failed(
            self.pool,
            delivery["delivery_id"],
            app_id=delivery["event"]["app_id"],
            event_id=delivery["event"]["event_id"],
            rule_id=delivery["rule_id"],
            error=reason[:1000],
        )


def run(settings: Settings) -> None:
    """Run the table sink in the foreground until SIGTERM/SIGINT."""
    run_sink(
        settings,
        inputs=[(settings.topic("deliveries.table"), settings.table_sink_group_id)],
        metrics_port=settings.table_sink_metrics_port,
        make_write=lambda pool, producer: (
            TableWriter(pool, producer, settings.topic("events.dlq"), settings.tables_schema).write
        ),
    )
