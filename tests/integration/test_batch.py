"""Batch ingest, the legacy message endpoint, and idempotent retries, end to end."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import orjson
from aiokafka.structs import ConsumerRecord

from gateway.producer import EventProducer
from schemas import EventEnvelope
from tests.conftest import AppKey, Pipeline, consume_all, read_to_end, record_values, wait_until
from vdip.settings import Settings


async def count_rows(pool: asyncpg.Pool, app_id: str) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM data_events WHERE app_id = $1", app_id)
    return count


async def test_all_valid_batch_is_202_in_order(
    client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    events = [{"event_type": "view", "payload": {"n": n}} for n in range(20)]
    response = await client.post(
        f"/api/ingest/{app.app_id}/batch", json={"events": events}, headers=app.headers
    )
    assert response.status_code == 202, response.text
    data = response.json()["data"]
    assert (data["accepted"], data["rejected"]) == (20, 0)
    assert [r["index"] for r in data["results"]] == list(range(20))
    ids = [uuid.UUID(r["event_id"]) for r in data["results"]]
    await wait_until(lambda: _has(pool, ids), 30, message="the batch stored")
    rows = await pool.fetch("SELECT event_id, payload FROM data_events WHERE app_id = $1", app.app_id)
    assert {r["event_id"]: r["payload"]["n"] for r in rows} == {i: n for n, i in enumerate(ids)}


async def _has(pool: asyncpg.Pool, ids: list[uuid.UUID]) -> bool:
    found: int = await pool.fetchval("SELECT count(*) FROM data_events WHERE event_id = ANY($1::uuid[])", ids)
    return found == len(ids)


def _id_of(event: object) -> object:
    """An envelope's event_id; anything else as it is (so that a failing test shows it)."""
    return uuid.UUID(event["event_id"]) if isinstance(event, dict) and "event_id" in event else event


async def in_kafka_and_stored(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> tuple[list[object], set[uuid.UUID]]:
    """The ids of ``app``'s events in the ``events`` topic and in ``data_events``, each read once a
    sentinel event sent now has reached it. The gateway writes an application's events to one
    partition in order, and the worker and the store keep that order: whatever the gateway wrote
    before the sentinel's 202 is in the topic, and stored, by then. The sentinel is left out."""
    sentinel = await client.post(
        f"/api/ingest/{app.app_id}", json={"event_type": "sentinel"}, headers=app.headers
    )
    assert sentinel.status_code == 202, sentinel.text
    sentinel_id = uuid.UUID(sentinel.json()["data"]["event_id"])
    await wait_until(lambda: _has(pool, [sentinel_id]), 30, message="the sentinel stored")
    in_kafka = []
    for record in await read_to_end(pipeline.settings, "events"):
        if record.key == app.app_id.encode():
            in_kafka += [_id_of(e) for e in record_values(record)]
    assert in_kafka[-1:] == [sentinel_id], in_kafka
    rows = await pool.fetch("SELECT event_id FROM data_events WHERE app_id = $1", app.app_id)
    return in_kafka[:-1], {r["event_id"] for r in rows} - {sentinel_id}


async def test_mixed_batch_is_207_with_each_items_errors(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    events = [
        {"event_type": "ok", "payload": {"n": 0}},
        {"payload": {}},  # no event_type
        {"event_type": "ok", "payload": {"n": 2}},
        {"event_type": "ok", "payload": "text"},
        {"event_type": "bad\ttype", "payload": {}},  # breaks the pattern
        "not an object",
    ]
    response = await client.post(
        f"/api/ingest/{app.app_id}/batch", json={"events": events}, headers=app.headers
    )
    assert response.status_code == 207, response.text
    answer = response.json()
    assert answer["success"] is False
    results = answer["data"]["results"]
    assert [r["status"] for r in results] == [
        "accepted",
        "rejected",
        "accepted",
        "rejected",
        "rejected",
        "rejected",
    ]
    assert results[1]["errors"][0]["field"] == "body.events.1.event_type"
    assert results[3]["errors"][0]["field"] == "body.events.3.payload"
    assert results[4]["errors"][0]["field"] == "body.events.4.event_type"
    assert results[5]["errors"][0]["field"] == "body.events.5"
    accepted = [uuid.UUID(r["event_id"]) for r in results if r["status"] == "accepted"]
    assert await in_kafka_and_stored(pipeline, client, app, pool) == (accepted, set(accepted))


async def test_batches_that_cannot_be_accepted(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    url = f"/api/ingest/{app.app_id}/batch"
    none_valid = await client.post(
        url, json={"events": [{"payload": {}}, {"event_type": ""}]}, headers=app.headers
    )
    assert none_valid.status_code == 422
    assert {e["field"] for e in none_valid.json()["errors"]} == {
        "body.events.0.event_type",
        "body.events.1.event_type",
    }
    empty = await client.post(url, json={"events": []}, headers=app.headers)
    assert empty.status_code == 422 and empty.json()["errors"][0]["field"] == "body.events"
    too_many = await client.post(url, json={"events": [{"event_type": "t"}] * 501}, headers=app.headers)
    assert too_many.status_code == 422 and "at most 500" in too_many.json()["message"]
    no_list = await client.post(url, json={"events": {"a": 1}}, headers=app.headers)
    assert no_list.status_code == 422 and no_list.json()["errors"][0]["field"] == "body.events"
    assert await in_kafka_and_stored(pipeline, client, app, pool) == ([], set())  # nothing reached Kafka


async def test_legacy_messages_endpoint(client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool) -> None:
    response = await client.post(f"/api/messages/{app.app_id}", json={"text": "hello"}, headers=app.headers)
    assert response.status_code == 202
    event_id = uuid.UUID(response.json()["data"]["event_id"])
    await wait_until(lambda: _has(pool, [event_id]), 30, message="message stored")
    row = await pool.fetchrow("SELECT event_type, payload FROM data_events WHERE event_id = $1", event_id)
    assert (row["event_type"], row["payload"]) == ("message", {"text": "hello"})
    bad = await client.post(f"/api/messages/{app.app_id}", json=[1], headers=app.headers)
    assert bad.status_code == 422


async def test_client_event_id_and_idempotency_key_make_retries_safe(
    client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    url = f"/api/ingest/{app.app_id}"
    mine = str(uuid.uuid4())
    first = await client.post(
        url, json={"event_id": mine, "event_type": "t", "payload": {"v": 1}}, headers=app.headers
    )
    retry = await client.post(
        url, json={"event_id": mine, "event_type": "t", "payload": {"v": 1}}, headers=app.headers
    )
    assert first.json()["data"]["event_id"] == retry.json()["data"]["event_id"] == mine

    keyed = {**app.headers, "Idempotency-Key": "order-77"}
    a = await client.post(url, json={"event_type": "t", "payload": {"v": 2}}, headers=keyed)
    b = await client.post(url, json={"event_type": "t", "payload": {"v": 2}}, headers=keyed)
    assert a.json()["data"]["event_id"] == b.json()["data"]["event_id"]
    ids = [uuid.UUID(mine), uuid.UUID(a.json()["data"]["event_id"])]
    await wait_until(lambda: _has(pool, ids), 30, message="both stored")
    await asyncio.sleep(1)  # the retries had every chance to arrive
    assert await count_rows(pool, app.app_id) == 2


async def test_same_batch_three_times_one_cut_off_is_stored_once(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    events = [{"event_type": "bulk", "payload": {"n": n}} for n in range(200)]
    keyed = {**app.headers, "Idempotency-Key": f"nightly-{uuid.uuid4()}"}
    url = f"/api/ingest/{app.app_id}/batch"
    first = await client.post(url, json={"events": events}, headers=keyed)
    assert first.status_code == 202

    # Second try: the client sends the whole request and hangs up without reading the answer.
    body = orjson.dumps({"events": events})
    head = (
        f"POST {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-API-Key: {app.key}\r\nIdempotency-Key: {keyed['Idempotency-Key']}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", pipeline.settings.gateway_port)
    writer.write(head + body)
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    third = await client.post(url, json={"events": events}, headers=keyed)
    assert third.status_code == 202
    assert [r["event_id"] for r in third.json()["data"]["results"]] == [
        r["event_id"] for r in first.json()["data"]["results"]
    ]
    ids = [uuid.UUID(r["event_id"]) for r in first.json()["data"]["results"]]
    await wait_until(lambda: _has(pool, ids), 30, message="the batch stored")
    await asyncio.sleep(1.5)  # the cut-off request was accepted by the server too; give it every chance
    rows = await pool.fetch("SELECT payload FROM data_events WHERE app_id = $1", app.app_id)
    assert sorted(r["payload"]["n"] for r in rows) == list(range(200))


async def test_occurred_at_is_kept_or_clamped_and_flagged(
    client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    now = datetime.now(UTC)
    events = [
        {"event_type": "t", "occurred_at": (now - timedelta(hours=2)).isoformat()},
        {"event_type": "t", "occurred_at": (now + timedelta(days=3)).isoformat()},
        {"event_type": "t", "occurred_at": (now - timedelta(days=90)).isoformat()},
        {"event_type": "t", "occurred_at": "2026-01-01T00:00:00"},  # no zone: rejected
    ]
    response = await client.post(
        f"/api/ingest/{app.app_id}/batch", json={"events": events}, headers=app.headers
    )
    results = response.json()["data"]["results"]
    assert results[3]["errors"][0]["field"] == "body.events.3.occurred_at"
    ids = [uuid.UUID(r["event_id"]) for r in results[:3]]
    await wait_until(lambda: _has(pool, ids), 30, message="stored")
    rows = {
        r["event_id"]: r
        for r in await pool.fetch(
            """SELECT event_id, occurred_at, occurred_at_clamped, received_at
               FROM data_events WHERE app_id = $1""",
            app.app_id,
        )
    }
    kept, future, past = (rows[i] for i in ids)
    assert abs(kept["occurred_at"] - (now - timedelta(hours=2))) < timedelta(milliseconds=1)
    assert not kept["occurred_at_clamped"]
    assert future["occurred_at_clamped"] and future["occurred_at"] == future["received_at"] + timedelta(
        minutes=1
    )
    assert past["occurred_at_clamped"] and past["occurred_at"] == past["received_at"] - timedelta(days=30)


async def test_single_events_sent_together_share_a_record(settings: Settings) -> None:
    """What concurrent single-event requests do: the producer's sends of one turn of the event loop."""
    apps = [f"app-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    envelopes = [
        EventEnvelope(
            event_id=uuid.uuid4(),
            app_id=apps[n % 2],
            event_type="together",
            payload={"n": n},
            received_at=datetime.now(UTC),
        )
        for n in range(21)
    ]
    producer = EventProducer(settings)
    await producer.start()
    try:
        await asyncio.gather(*(producer.send(e) for e in envelopes))
        await producer.send(envelopes[0])  # alone: a record that is the envelope itself
    finally:
        await producer.stop()

    def of_ours(records: list[ConsumerRecord[bytes, bytes]]) -> list[ConsumerRecord[bytes, bytes]]:
        return [r for r in records if r.key is not None and r.key.decode() in apps]

    records = of_ours(await consume_all(settings, "events", until=lambda rs: len(of_ours(rs)) == 3))
    by_app: dict[str, list[object]] = {app_id: [] for app_id in apps}
    for record in records:  # in order within an application (its partition)
        assert record.key is not None and record.value is not None
        by_app[record.key.decode()].append(orjson.loads(record.value))
    (together, alone), (others,) = by_app[apps[0]], by_app[apps[1]]
    assert isinstance(together, list) and isinstance(others, list) and isinstance(alone, dict)
    assert [e["payload"]["n"] for e in together] == list(range(0, 21, 2))  # one record, in order
    assert [e["payload"]["n"] for e in others] == list(range(1, 21, 2))
    assert alone["event_id"] == str(envelopes[0].event_id)  # an event sent alone is its envelope


async def test_large_batches_take_the_bulk_lane_and_are_stored_and_counted(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    """A batch of more than ``bulk_batch_events`` goes to ``events.bulk`` (and routed, to
    ``events.routed.bulk``); smaller ones and single events to ``events`` (``events.routed``); the
    worker routes both lanes, the event store stores both, every event stored and counted once."""
    size = pipeline.settings.bulk_batch_events
    sent: dict[str, list[uuid.UUID]] = {"events": [], "events.bulk": []}
    for lane, count in (("events.bulk", size + 1), ("events", size), ("events.bulk", 3 * size)):
        events = [{"event_type": "lane", "payload": {"n": n}} for n in range(count)]
        answer = await client.post(
            f"/api/ingest/{app.app_id}/batch", json={"events": events}, headers=app.headers
        )
        assert answer.status_code == 202, answer.text
        sent[lane] += [uuid.UUID(r["event_id"]) for r in answer.json()["data"]["results"]]
    single = await client.post(f"/api/ingest/{app.app_id}", json={"event_type": "lane"}, headers=app.headers)
    sent["events"].append(uuid.UUID(single.json()["data"]["event_id"]))
    everything = sent["events"] + sent["events.bulk"]
    await wait_until(lambda: _has(pool, everything), 60, message="both lanes stored")
    for lane, ids in sent.items():
        routed_lane = lane.replace("events", "events.routed")
        for topic, of in ((lane, _id_of), (routed_lane, lambda routed: _id_of(routed["event"]))):
            in_topic = []
            for record in await read_to_end(pipeline.settings, topic):
                if record.key == app.app_id.encode():
                    in_topic += [of(e) for e in record_values(record)]
            assert in_topic == ids, topic
    assert await count_rows(pool, app.app_id) == len(everything)
    await wait_until(
        lambda: _counted(pool, app.app_id, len(everything)), 30, message=f"statistics count {len(everything)}"
    )


async def _counted(pool: asyncpg.Pool, app_id: str, expected: int) -> bool:
    counted: int | None = await pool.fetchval(
        "SELECT sum(total_events) FROM event_statistics WHERE app_id = $1 AND time_period = 'daily'", app_id
    )
    return counted == expected
