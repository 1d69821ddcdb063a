"""Claims on the real PostgreSQL: the first version of an event wins, whoever claims it."""

import asyncio
import uuid

import asyncpg
import pytest

from schemas.events import content_hash
from sinks.event_store import to_row, write_rows
from streams.claims import Claims, Verdict, Version, decide
from tests.test_event_store import routed
from vdip.db import _init_connection
from vdip.settings import Settings


def version(app_id: str, event_id: uuid.UUID, total: int, event_type: str = "order") -> Version:
    return Version(app_id, event_id, content_hash(event_type, {"total": total}))


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


async def test_key_order_does_not_make_another_version() -> None:
    assert content_hash("t", {"a": 1, "b": {"c": 2, "d": 3}}) == content_hash(
        "t", {"b": {"d": 3, "c": 2}, "a": 1}
    )
    assert content_hash("t", {"a": 1}) != content_hash("u", {"a": 1})


async def test_a_claim_from_before_hashes_compares_with_the_stored_event(conn: asyncpg.Connection) -> None:
    app_id, x = f"claims-{uuid.uuid4().hex[:8]}", uuid.uuid4()
    stored = routed(app_id)
    stored.event.event_id, stored.event.event_type, stored.event.payload = x, "order", {"total": 10}
    async with conn.transaction():
        await write_rows(conn, [to_row(stored)])
    await conn.execute("INSERT INTO event_claims (app_id, event_id) VALUES ($1, $2)", app_id, x)
    v1, v2 = version(app_id, x, 10), version(app_id, x, 100)
    assert await decide(conn, [v2, v1]) == [
        Verdict("conflict", v1.content_hash),
        Verdict("identical", v1.content_hash),
    ]


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
