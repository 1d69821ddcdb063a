"""Dead letters: listed by stage and time, and sent back into ``events`` with an outcome per
record; what comes back is routed with today's rules and stored (a stored event whose routing
failed takes its new routing, counted again)."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaProducer

from schemas import EventEnvelope
from tests.conftest import AppKey, Pipeline, rule_applied, wait_until
from tests.integration.test_rules import create, queue_event_ids, send
from vdip.settings import Settings
from vdip.statistics import check as check_statistics

URL = "/api/dead-letters/app/{}"


async def listed(client: httpx.AsyncClient, app: AppKey, count: int, **params: str) -> list[dict[str, Any]]:
    """The application's dead letters, once there are ``count`` of them."""
    found: list[dict[str, Any]] = []

    async def there() -> bool:
        answer = await client.get(URL.format(app.app_id), params=params, headers=app.headers)
        assert answer.status_code == 200, answer.text
        found[:] = answer.json()["data"]
        return len(found) >= count

    await wait_until(there, 30, message=f"{count} dead letter(s) listed")
    return found


async def resend(client: httpx.AsyncClient, app: AppKey, body: dict[str, Any]) -> httpx.Response:
    return await client.post(URL.format(app.app_id) + "/resend", json=body, headers=app.headers)


async def stored(pool: asyncpg.Pool, event_id: str, status: str) -> asyncpg.Record:
    """The stored event, once it has ``status``."""
    query = "SELECT status, routing FROM data_events WHERE event_id = $1"

    async def has_it() -> bool:
        row = await pool.fetchrow(query, uuid.UUID(event_id))
        return row is not None and row["status"] == status

    await wait_until(has_it, 30, message=f"event {event_id} stored as {status}")
    row: asyncpg.Record = await pool.fetchrow(query, uuid.UUID(event_id))
    return row


async def test_dead_letters_are_listed_by_stage_and_time_and_what_holds_no_event_is_not_sent(
    client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings
) -> None:
    start = datetime.now(UTC)
    events = settings.topic("events")
    await producer.send_and_wait(events, b"{not json", key=app.app_id.encode())
    first = await send(client, app, 1)
    await stored(pool, first, "processed")
    other_version = EventEnvelope(
        event_id=uuid.UUID(first),
        app_id=app.app_id,
        event_type="order",
        payload={"total": 2},
        received_at=start,
    )
    await producer.send_and_wait(events, other_version.model_dump_json().encode(), key=app.app_id.encode())

    both = await listed(client, app, 2)
    assert [d["stage"] for d in both] == ["conflict", "validation"]  # newest first
    (invalid,) = await listed(client, app, 1, stage="validation")
    assert invalid["value"] == "{not json"
    assert [d["stage"] for d in await listed(client, app, 1, stage="conflict")] == ["conflict"]
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert await listed(client, app, 0, since=later) == []
    assert await listed(client, app, 0, until=start.isoformat()) == []
    assert len(await listed(client, app, 1, limit="1")) == 1
    wrong = await client.get(URL.format(app.app_id), params={"stage": "nope"}, headers=app.headers)
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["field"] == "query.stage"

    answer = await resend(client, app, {"since": start.isoformat()})
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert (data["resent"], data["not_resent"]) == (0, 2)
    outcomes = {r["stage"]: r for r in data["records"]}
    assert outcomes["validation"]["outcome"] == "invalid" and outcomes["validation"]["reason"]
    assert outcomes["conflict"]["outcome"] == "conflict"

    position = {"partition": invalid["partition"], "offset": invalid["offset"]}
    nowhere = {"partition": invalid["partition"], "offset": 10**12}
    answer = await resend(client, app, {"records": [position, nowhere]})
    assert [r["outcome"] for r in answer.json()["data"]["records"]] == ["invalid", "not_found"]  # as asked
    for body in (
        {},
        {"records": [position], "since": start.isoformat()},
        {"records": [position], "stage": "routing"},
    ):
        refused = await resend(client, app, body)
        assert refused.status_code == 422, (body, refused.text)


async def test_dead_letters_sent_back_are_routed_with_todays_rules_and_stored(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    app: AppKey,
    pool: asyncpg.Pool,
    producer: AIOKafkaProducer,
    settings: Settings,
) -> None:
    """An event dead-lettered at routing (its application's published rules unreadable) is stored
    as failed; once the rules are fixed, sent back, it is routed and stored as routed, counted
    once under its new status. A delivery dead-lettered by a sink goes back as its event."""
    start = datetime.now(UTC)
    key = app.app_id.encode()
    await producer.send_and_wait(settings.topic("routing-rules"), b'{"rules": 5}', key=key)
    failed = await send(client, app, 1)
    row = await stored(pool, failed, "failed")
    assert row["routing"]["error"]
    (letter,) = await listed(client, app, 1, stage="routing")

    rule = await create(client, app, condition={})  # publishes the whole, readable, rule set
    await rule_applied(pipeline, rule)
    lost = EventEnvelope(
        event_id=uuid.uuid4(), app_id=app.app_id, event_type="order", payload={"total": 3}, received_at=start
    )
    delivery = {"delivery_id": str(uuid.uuid4()), "event": orjson.loads(lost.model_dump_json())}
    written = await producer.send_and_wait(
        settings.topic("events.dlq"),
        orjson.dumps(delivery),
        key=key,
        headers=[("error.stage", b"table-sink")],
    )

    answer = await resend(client, app, {"since": start.isoformat(), "stage": "routing"})
    assert answer.status_code == 200, answer.text
    (outcome,) = answer.json()["data"]["records"]
    assert (outcome["outcome"], outcome["event_id"], outcome["offset"]) == (
        "resent",
        failed,
        letter["offset"],
    )
    answer = await resend(
        client, app, {"records": [{"partition": written.partition, "offset": written.offset}]}
    )
    (outcome,) = answer.json()["data"]["records"]
    assert (outcome["outcome"], outcome["stage"], outcome["event_id"]) == (
        "resent",
        "table-sink",
        str(lost.event_id),
    )

    for event_id in (failed, str(lost.event_id)):
        row = await stored(pool, event_id, "processed")
        assert (row["routing"]["error"], row["routing"]["matched_rules"]) == (None, [rule["rule_id"]])
    topic = rule["destination_config"]["topic"]
    assert set(await queue_event_ids(pipeline, topic, {failed, str(lost.event_id)})) == {
        failed,
        str(lost.event_id),
    }
    now = datetime.now(UTC)
    assert await check_statistics(pool, app.app_id, now - timedelta(hours=2), now + timedelta(hours=1)) == []


async def test_positions_on_partitions_that_do_not_exist_are_not_found(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    """No consumer reads anything here: it is stopped right after its start (aiokafka's close then
    raised CancelledError, a 500), a few times over."""
    records = [{"partition": 30568, "offset": 65}, {"partition": 2**31 - 2, "offset": 3254}]
    url = f"/api/dead-letters/app/{app.app_id}/resend"
    for _ in range(5):
        answer = await client.post(url, json={"records": records}, headers=app.headers)
        assert answer.status_code == 200, answer.text
        outcomes = answer.json()["data"]["records"]
        assert [(o["partition"], o["outcome"]) for o in outcomes] == [
            (30568, "not_found"),
            (2**31 - 2, "not_found"),
        ]
