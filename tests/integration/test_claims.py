"""Claims on the real PostgreSQL: the first version of an event wins, whoever claims it."""

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from schemas import EventEnvelope
from sinks.event_store import ROUTED, to_row, write_rows
from streams.claims import Claims, Verdict, Version, decide, version_of
from tests.integration.test_event_store import routed
from vdip.db import _init_connection
from vdip.settings import Settings


def version(app_id: str, event_id: uuid.UUID, total: float, event_type: str = "order") -> Version:
    event = EventEnvelope(
        event_id=event_id,
        app_id=app_id,
        event_type=event_type,
        payload={"total": total},
        received_at=datetime.now(UTC),
    )
    return version_of(event)


@pytest.fixture
async def conn(settings: Settings) -> asyncpg.Connection:
    connection = await asyncpg.connect(settings.database_url)
    await _init_connection(connection)
    yield connection
    await connection.close()


async def test_the_first_version_wins_in_a_batch_and_after_it(conn: asyncpg.Connection) -> None:
    app_id, x, y = f"claims-{uuid.uuid4().hex[:8]}", uuid.uuid4(), uuid.uuid4()
    v1, v2, y1 = version(app_id, x, 10), version(app_id, x, 100), version(app_id, y, 1)
    assert await decide(conn, [v1, y1, v1, v2]) == [
        Verdict("won", v1.content_hash),
        Verdict("won", y1.content_hash),
        Verdict("identical", v1.content_hash),
        Verdict("conflict", v1.content_hash),
    ]
    # Later, in another order: the claim persists.
    assert await decide(conn, [v2, v1]) == [
        Verdict("conflict", v1.content_hash),
        Verdict("identical", v1.content_hash),
    ]
    # The same id in another application is another event.
    other = version(f"other-{app_id}", x, 100)
    assert await decide(conn, [other]) == [Verdict("won", other.content_hash)]
    # The event type is part of the version.
    assert (await decide(conn, [version(app_id, x, 10, "refund")]))[0].outcome == "conflict"


async def test_a_claim_from_before_hashes_compares_with_the_stored_event(conn: asyncpg.Connection) -> None:
    app_id, x = f"claims-{uuid.uuid4().hex[:8]}", uuid.uuid4()
    stored = routed(app_id)
    # 6e16: jsonb writes it 60000000000000000, yet it is the same version
    stored.event.event_id, stored.event.event_type, stored.event.payload = x, "order", {"total": 6e16}
    async with conn.transaction():
        await write_rows(conn, [to_row(ROUTED.validate_json(stored.model_dump_json()))])
    await conn.execute("INSERT INTO event_claims (app_id, event_id) VALUES ($1, $2)", app_id, x)
    v1, v2 = version(app_id, x, 6e16), version(app_id, x, 100)
    assert await decide(conn, [v2]) == [Verdict("conflict", None)]
    assert await decide(conn, [v2, v1, v2]) == [
        Verdict("conflict", v1.content_hash),
        Verdict("identical", v1.content_hash),
        Verdict("conflict", v1.content_hash),
    ]
    assert await decide(conn, [v1]) == [Verdict("identical", v1.content_hash)]  # the claim has it now


async def test_a_concurrent_claimer_waits_then_sees_the_first_version(
    conn: asyncpg.Connection, settings: Settings
) -> None:
    """conn claims v1 in a transaction not yet committed; a second claimer of v2 waits for it and,
    once it commits, gets a conflict with v1: PostgreSQL decides once."""
    app_id, x = f"claims-{uuid.uuid4().hex[:8]}", uuid.uuid4()
    v1, v2 = version(app_id, x, 10), version(app_id, x, 100)
    transaction = conn.transaction()
    await transaction.start()
    assert await decide(conn, [v1]) == [Verdict("won", v1.content_hash)]
    claims = Claims(settings.database_url)
    try:
        second = asyncio.create_task(claims.decide([v2]))
        await asyncio.sleep(1)
        assert not second.done(), "the second claimer waits for the first one's transaction"
        await transaction.commit()
        assert await asyncio.wait_for(second, 10) == [Verdict("conflict", v1.content_hash)]
    finally:
        await claims.close()
