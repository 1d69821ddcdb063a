"""Routing rules end to end: the API, hot reload into the running router, and fan-out to queues."""

import asyncio
import signal
import uuid
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.conftest import (
    AppKey,
    Pipeline,
    PrivateKafka,
    Process,
    _free_port,
    consume_all,
    gateway_on,
    start_gateway,
    wait_until,
)
from vdip.settings import Settings


def rule_body(app: AppKey, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "app_id": app.app_id,
        "rule_name": "big orders",
        "condition": {"payload.total": {"$gt": 50}},
        "destination_type": "queue",
        "destination_config": {"topic": f"orders-{uuid.uuid4().hex[:8]}"},
    }
    body.update(fields)
    return body


async def create(client: httpx.AsyncClient, app: AppKey, **fields: Any) -> dict[str, Any]:
    response = await client.post("/api/routing-rules", json=rule_body(app, **fields), headers=app.headers)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def send(client: httpx.AsyncClient, app: AppKey, total: float, event_type: str = "order") -> str:
    response = await client.post(
        f"/api/ingest/{app.app_id}",
        json={"event_type": event_type, "payload": {"total": total}},
        headers=app.headers,
    )
    assert response.status_code == 202
    event_id: str = response.json()["data"]["event_id"]
    return event_id


async def queue_event_ids(pipeline: Pipeline, topic: str, expect: set[str], timeout: float = 30) -> list[str]:
    """Event ids delivered to a queue topic, read until ``expect`` are all there (or time runs out)."""

    def ids(records: list[Any]) -> list[str]:
        return [orjson.loads(r.value)["event"]["event_id"] for r in records]

    records = await consume_all(
        pipeline.settings, topic, until=lambda rs: expect <= set(ids(rs)), timeout=timeout
    )
    return ids(records)


async def test_crud_and_validation(client: httpx.AsyncClient, app: AppKey, admin: dict[str, str]) -> None:
    created = await create(client, app, destination_config={"queue_name": "legacy-name"})
    assert created["destination_config"] == {"topic": "legacy-name"}
    rule_id = created["rule_id"]
    got = await client.get(f"/api/routing-rules/{rule_id}", headers=app.headers)
    assert got.status_code == 200 and got.json()["data"]["rule_name"] == "big orders"
    assert (await client.get(f"/api/routing-rules/{rule_id}", headers=admin)).status_code == 200

    replaced = await client.put(
        f"/api/routing-rules/{rule_id}",
        json=rule_body(app, rule_name="renamed", priority=5),
        headers=app.headers,
    )
    assert replaced.status_code == 200 and replaced.json()["data"]["priority"] == 5
    toggled = await client.patch(f"/api/routing-rules/{rule_id}/toggle", headers=app.headers)
    assert toggled.json()["data"]["is_active"] is False
    active = (await client.get(f"/api/routing-rules/app/{app.app_id}", headers=app.headers)).json()["data"]
    assert active == []
    everything = await client.get(
        f"/api/routing-rules/app/{app.app_id}", params={"include_inactive": "true"}, headers=app.headers
    )
    assert [r["rule_id"] for r in everything.json()["data"]] == [rule_id]
    deleted = await client.delete(f"/api/routing-rules/{rule_id}", headers=app.headers)
    assert deleted.status_code == 200

    for method, url in [
        ("GET", f"/api/routing-rules/{rule_id}"),
        ("PUT", f"/api/routing-rules/{rule_id}"),
        ("PATCH", f"/api/routing-rules/{rule_id}/toggle"),
        ("DELETE", f"/api/routing-rules/{rule_id}"),
    ]:
        response = await client.request(method, url, json=rule_body(app), headers=app.headers)
        assert response.status_code == 404, (method, response.text)
        assert response.json()["errors"][0]["field"] == "path.rule_id"


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"condition": {"total": {"$regex": "x"}}}, "body.condition.total.$regex", "unknown operator"),
        ({"condition": {"total": {"$gt": [1]}}}, "body.condition.total.$gt", "a number or a string"),
        ({"condition": {"$or": []}}, "body.condition.$or", "non-empty array"),
        ({"condition": {"a..b": 1}}, "body.condition.a..b", "empty segment"),
        ({"destination_config": {"topic": "bad topic"}}, "body.destination_config.topic", "Kafka topic name"),
        (
            {"destination_config": {"topic": "__consumer_offsets"}},
            "body.destination_config.topic",
            "internal",
        ),
        ({"destination_config": {"topic": "events"}}, "body.destination_config.topic", "platform's own"),
        (
            {"destination_config": {"topic": "t", "extra": 1}},
            "body.destination_config.extra",
            "unknown setting",
        ),
        (
            {"destination_type": "webhook", "destination_config": {"url": "ftp://x"}},
            "body.destination_config.url",
            "http",
        ),
        (
            {"destination_type": "webhook", "destination_config": {"url": "https://x", "max_in_flight": 65}},
            "body.destination_config.max_in_flight",
            "from 1 to 64",
        ),
        (
            {"destination_type": "webhook", "destination_config": {"url": "https://x", "max_in_flight": "4"}},
            "body.destination_config.max_in_flight",
            "an integer",
        ),
        (
            {"destination_type": "webhook", "destination_config": {"url": "https://x", "max_per_second": 0}},
            "body.destination_config.max_per_second",
            "above 0",
        ),
        (
            {
                "destination_type": "webhook",
                "destination_config": {"url": "https://x", "max_per_second": True},
            },
            "body.destination_config.max_per_second",
            "a number",
        ),
        (
            {"destination_type": "database_table", "destination_config": {"table": "Robert'); DROP"}},
            "body.destination_config.table",
            "table name",
        ),
        ({"destination_type": "email"}, "body.destination_type", "Input should be"),
        ({"rule_name": ""}, "body.rule_name", "at least 1"),
    ],
)
async def test_invalid_rules_are_422_naming_the_part(
    client: httpx.AsyncClient, app: AppKey, fields: dict[str, Any], field: str, reason: str
) -> None:
    response = await client.post("/api/routing-rules", json=rule_body(app, **fields), headers=app.headers)
    assert response.status_code == 422, response.text
    assert any(e["field"] == field and reason in e["reason"] for e in response.json()["errors"]), (
        response.json()
    )
    valid = await create(client, app)  # PUT validates the same way
    again = await client.put(
        f"/api/routing-rules/{valid['rule_id']}", json=rule_body(app, **fields), headers=app.headers
    )
    assert again.status_code == 422


async def test_values_json_cannot_carry_are_422_naming_the_field(
    client: httpx.AsyncClient, app: AppKey
) -> None:
    huge = 2**70  # beyond 64 bits: orjson, PostgreSQL's consumers and most JSON readers refuse it
    cases: list[tuple[dict[str, Any], str]] = [
        ({"condition": {"payload.total": {"$gt": huge}}}, "body.condition"),
        ({"destination_config": {"topic": "t", "extra": huge}}, "body.destination_config"),
    ]
    for fields, field in cases:
        response = await client.post("/api/routing-rules", json=rule_body(app, **fields), headers=app.headers)
        assert response.status_code == 422, response.text
        assert [e["field"] for e in response.json()["errors"]] == [field]
    tried = await client.post(
        "/api/routing-rules/test",
        json={"app_id": app.app_id, "event": {"event_type": "o"}, "rule": {"condition": {"n": huge}}},
        headers=app.headers,
    )
    assert tried.status_code == 422, tried.text
    assert [e["field"] for e in tried.json()["errors"]] == ["body.rule.condition"]


async def test_bodies_that_are_not_text_are_a_documented_400(client: httpx.AsyncClient, app: AppKey) -> None:
    spec = (await client.get("/openapi.json")).json()
    with_body = [
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    ]
    assert len(with_body) >= 7
    for method, path in with_body:
        assert "400" in spec["paths"][path][method.lower()]["responses"], (method, path)
    rule = await create(client, app)
    for method, path in [
        ("POST", "/api/routing-rules"),
        ("PUT", f"/api/routing-rules/{rule['rule_id']}"),
        ("POST", "/api/routing-rules/test"),
        ("POST", "/api/applications"),
    ]:
        response = await client.request(
            method,
            path,
            content=b'{"a": "\xff"}',
            headers={**app.headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 400, (method, path, response.text)
        assert response.json()["errors"] == [{"field": "body", "reason": "could not be parsed as JSON"}]


async def test_rules_of_another_application_are_closed(
    client: httpx.AsyncClient, app: AppKey, admin: dict[str, str]
) -> None:
    rule = await create(client, app)
    other = await client.post("/api/applications", json={"name": "other"}, headers=admin)
    other_key = {"X-API-Key": other.json()["data"]["api_key"]}
    # Another application's rule is unknown to a key, as if it did not exist (ids are sequential).
    theirs = await client.get(f"/api/routing-rules/{rule['rule_id']}", headers=other_key)
    assert theirs.status_code == 404 and app.app_id not in theirs.text
    assert (
        await client.post("/api/routing-rules", json=rule_body(app), headers=other_key)
    ).status_code == 401
    moved = await client.put(
        f"/api/routing-rules/{rule['rule_id']}",
        json=rule_body(app, app_id=other.json()["data"]["app_id"]),
        headers=admin,
    )
    assert moved.status_code == 422 and moved.json()["errors"][0]["field"] == "body.app_id"


async def test_dry_run(client: httpx.AsyncClient, app: AppKey) -> None:
    await create(client, app, rule_name="big", condition={"total": {"$gt": 50}})
    await create(client, app, rule_name="refunds", event_type_filter="refund")
    event = {"event_type": "order", "payload": {"total": 20}}
    every = await client.post(
        "/api/routing-rules/test", json={"app_id": app.app_id, "event": event}, headers=app.headers
    )
    verdicts = {v["rule_name"]: v for v in every.json()["data"]}
    assert verdicts["big"]["matched"] is False
    assert verdicts["big"]["reasons"] == ['payload.total {"$gt":50} is false (value: 20)']
    assert verdicts["refunds"]["applies"] is False
    inline = await client.post(
        "/api/routing-rules/test",
        json={"app_id": app.app_id, "event": event, "rule": {"condition": {"total": {"$lt": 50}}}},
        headers=app.headers,
    )
    assert inline.json()["data"] == [
        {"rule_id": None, "rule_name": "inline", "applies": True, "matched": True, "reasons": []}
    ]
    invalid = await client.post(
        "/api/routing-rules/test",
        json={"app_id": app.app_id, "event": event, "rule": {"condition": {"x": {"$bad": 1}}}},
        headers=app.headers,
    )
    assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "body.rule.condition.x.$bad"


async def test_a_rule_routes_exactly_the_matching_events_and_changes_apply_live(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    rule = await create(client, app)
    topic = rule["destination_config"]["topic"]
    await asyncio.sleep(2)  # a rule applies to events ingested two seconds after it was written
    small, big, bigger = (
        await send(client, app, 10),
        await send(client, app, 60),
        await send(client, app, 100),
    )
    delivered = await queue_event_ids(pipeline, topic, {big, bigger})
    assert set(delivered) == {big, bigger}

    async def stored(event_id: str) -> Any:
        row = await pool.fetchrow(
            "SELECT status, routing FROM data_events WHERE event_id = $1", uuid.UUID(event_id)
        )
        return row

    await wait_until(lambda: stored(small), 30, message="stored")
    await wait_until(lambda: stored(bigger), 30, message="stored")
    small_row, big_row = await stored(small), await stored(bigger)
    assert small_row["routing"]["matched_rules"] == [] and small_row["routing"]["rules_evaluated"] == 1
    assert big_row["routing"]["matched_rules"] == [rule["rule_id"]] and big_row["status"] == "processed"
    shown = (await client.get(f"/api/events/{bigger}", headers=app.headers)).json()["data"]
    assert shown["routing"]["matched_rules"] == [rule["rule_id"]]

    # Change the condition: from now on, small orders instead.
    changed = await client.put(
        f"/api/routing-rules/{rule['rule_id']}",
        json=rule_body(app, condition={"total": {"$lt": 50}}, destination_config={"topic": topic}),
        headers=app.headers,
    )
    assert changed.status_code == 200
    await asyncio.sleep(2)
    after_big, after_small = await send(client, app, 70), await send(client, app, 5)
    delivered = await queue_event_ids(pipeline, topic, {big, bigger, after_small})
    assert set(delivered) == {big, bigger, after_small}

    # Toggle it off, then delete it: nothing more arrives.
    await client.patch(f"/api/routing-rules/{rule['rule_id']}/toggle", headers=app.headers)
    await asyncio.sleep(2)
    while_off = await send(client, app, 1)
    await client.delete(f"/api/routing-rules/{rule['rule_id']}", headers=app.headers)
    await asyncio.sleep(2)
    after_delete = await send(client, app, 2)
    await wait_until(lambda: stored(after_delete), 30, message="stored")
    await wait_until(lambda: stored(while_off), 30, message="stored")
    delivered = await queue_event_ids(pipeline, topic, {big, bigger, after_small}, timeout=3)
    assert set(delivered) == {big, bigger, after_small}
    assert after_big not in delivered


async def test_router_killed_mid_stream_loses_nothing(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    rule = await create(client, app, condition={})  # every event
    topic = rule["destination_config"]["topic"]
    probe = await send(client, app, 0)
    await queue_event_ids(pipeline, topic, {probe})  # the rule is live before the stream starts
    sent: set[str] = {probe}
    body = {"events": [{"event_type": "order", "payload": {"total": n}} for n in range(100)]}
    for batch in range(10):
        response = await client.post(f"/api/ingest/{app.app_id}/batch", json=body, headers=app.headers)
        sent.update(r["event_id"] for r in response.json()["data"]["results"])
        if batch == 4:
            assert pipeline.worker.proc is not None
            pipeline.worker.proc.send_signal(signal.SIGKILL)
            pipeline.worker.proc.wait()
            pipeline.worker.start()
    delivered = await queue_event_ids(pipeline, topic, sent, timeout=120)
    assert set(delivered) == sent  # every event, possibly some twice (same delivery_id)

    async def all_stored() -> bool:
        count: int = await pool.fetchval("SELECT count(*) FROM data_events WHERE app_id = $1", app.app_id)
        return count == len(sent)

    await wait_until(all_stored, 60, message="all stored once")


async def test_an_event_whose_routing_fails_is_dead_lettered_and_routing_goes_on(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    # Kafka refuses a topic whose name collides with another's once '.' and '_' are equated:
    # creating the queue topic on first use fails, so routing that event raises.
    suffix = uuid.uuid4().hex[:8]
    admin = AIOKafkaAdminClient(bootstrap_servers=pipeline.settings.kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(pipeline.settings.topic(f"clash_{suffix}"), 1, 1)])
    await admin.close()
    await create(
        client, app, condition={"total": {"$gt": 50}}, destination_config={"topic": f"clash.{suffix}"}
    )
    await asyncio.sleep(2)
    doomed = await send(client, app, 99)
    fine = await send(client, app, 1)

    async def stored() -> bool:
        return bool(await pool.fetchval("SELECT 1 FROM data_events WHERE event_id = $1", uuid.UUID(fine)))

    await wait_until(stored, 60, message="the next event is routed and stored")

    def mine(records: list[Any]) -> list[Any]:
        return [r for r in records if doomed.encode() in r.value]

    dead = mine(
        await consume_all(pipeline.settings, "events.dlq", until=lambda rs: bool(mine(rs)), timeout=60)
    )
    assert dead, "the event whose routing failed is in the dead-letter topic"
    headers = dict(dead[0].headers)
    assert headers["error.stage"] == b"routing" and headers["error"]
    row = await pool.fetchrow(
        "SELECT status, routing FROM data_events WHERE event_id = $1", uuid.UUID(doomed)
    )
    assert row["status"] == "failed" and "collides" in row["routing"]["error"]  # stored, as failed


async def test_dry_run_and_saving_share_the_configured_limits(pipeline: Pipeline, app: AppKey) -> None:
    gateway = Process(
        "gateway",
        pipeline.settings,
        pipeline.gateway.log_path.parent,
        {"VDIP_MAX_CONDITION_CLAUSES": "2", "VDIP_GATEWAY_PORT": str(_free_port())},
        label="gateway-2-clauses",
    )
    base = await start_gateway(gateway)
    condition = {"a": 1, "b": 2, "c": 3}
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            saved = await client.post(
                "/api/routing-rules", json=rule_body(app, condition=condition), headers=app.headers
            )
            tried = await client.post(
                "/api/routing-rules/test",
                json={"app_id": app.app_id, "event": {"event_type": "o"}, "rule": {"condition": condition}},
                headers=app.headers,
            )
    finally:
        gateway.stop()
    assert saved.status_code == tried.status_code == 422
    assert (
        saved.json()["errors"][0]["reason"]
        == tried.json()["errors"][0]["reason"]
        == ("has 3 clauses; the limit is 2")
    )
    assert tried.json()["errors"][0]["field"] == "body.rule.condition"


async def test_after_a_timed_out_publish_the_topic_ends_with_the_stored_rules(
    private_kafka: PrivateKafka, pipeline: Pipeline, pool: asyncpg.Pool, app: AppKey
) -> None:
    """Writes whose publish timed out were rolled back, but their records reach Kafka later: the
    gateway publishes the stored rule set after them, so the router ends with what PostgreSQL has."""
    log_dir = pipeline.gateway.log_path.parent
    async with (
        gateway_on(private_kafka, pipeline.settings, log_dir, "gateway-rules-timeout") as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30) as client,
    ):
        kept = await create(client, app)
        private_kafka.pause()
        try:
            lost = await client.post(
                "/api/routing-rules", json=rule_body(app, rule_name="never saved"), headers=app.headers
            )
            toggled = await client.patch(f"/api/routing-rules/{kept['rule_id']}/toggle", headers=app.headers)
        finally:
            private_kafka.resume()
        assert lost.status_code == toggled.status_code == 503, (lost.text, toggled.text)
        stored = await pool.fetch(
            "SELECT rule_id, is_active FROM routing_rules WHERE app_id = $1", app.app_id
        )
        assert [(r["rule_id"], r["is_active"]) for r in stored] == [(kept["rule_id"], True)]

        def rule_sets(records: list[Any]) -> list[list[tuple[int, bool]]]:
            values = [orjson.loads(r.value) for r in records if r.key == app.app_id.encode()]
            return [[(rule["rule_id"], rule["is_active"]) for rule in value["rules"]] for value in values]

        def settled(records: list[Any]) -> bool:  # the two late records landed, and the truth after them
            found = rule_sets(records)
            return len(found) >= 3 and found[-1] == [(kept["rule_id"], True)]

        records = await consume_all(
            Settings(kafka_bootstrap=private_kafka.bootstrap, topic_prefix=pipeline.settings.topic_prefix),
            "routing-rules",
            until=settled,
            timeout=45,
        )
    found = rule_sets(records)
    assert len(found) >= 3, found  # the create, then the two writes that were rolled back
    assert found[-1] == [(kept["rule_id"], True)], found
