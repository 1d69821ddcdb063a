"""The gateway over real HTTP, with the real pipeline behind it."""

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from gateway.conflicts import Candidate, ConflictCheck
from schemas.events import content_hash
from tests.conftest import AppKey, Pipeline, another_gateway, wait_until


async def ingest(client: httpx.AsyncClient, app: AppKey, body: object, **headers: str) -> httpx.Response:
    return await client.post(f"/api/ingest/{app.app_id}", json=body, headers={**app.headers, **headers})


async def test_ingest_answers_202_with_the_envelope(client: httpx.AsyncClient, app: AppKey) -> None:
    response = await ingest(client, app, {"event_type": "signup", "payload": {"plan": "pro"}})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["success"] is True and body["message"]
    assert body["data"]["status"] == "accepted"
    assert uuid.UUID(body["data"]["event_id"]).version == 7


async def test_the_fast_and_the_standard_way_answer_alike(client: httpx.AsyncClient, app: AppKey) -> None:
    """application/json takes the route's fast way; another JSON type, FastAPI's standard way."""
    answers = [
        await client.post(
            f"/api/ingest/{app.app_id}",
            content=b'{"event_type": "signup", "payload": {"plan": "pro"}}',
            headers={**app.headers, "Content-Type": content_type, "X-Correlation-ID": "same"},
        )
        for content_type in ("application/json", "application/vnd.vdip+json")
    ]
    fast, standard = answers
    assert fast.status_code == standard.status_code == 202
    assert fast.headers.keys() == standard.headers.keys()
    assert {k: v for k, v in fast.headers.items() if k not in ("date", "content-length")} == {
        k: v for k, v in standard.headers.items() if k not in ("date", "content-length")
    }
    assert fast.json()["data"].keys() == standard.json()["data"].keys()
    assert {**fast.json(), "data": None} == {**standard.json(), "data": None}


async def test_ingested_event_is_stored_with_its_enrichment(client: httpx.AsyncClient, app: AppKey) -> None:
    sent_at = datetime.now(UTC)
    response = await ingest(
        client,
        app,
        {"event_type": "order", "payload": {"total": 9.5, "tags": ["a"]}},
        **{"X-Correlation-ID": "corr-123", "User-Agent": "tests/1.0"},
    )
    event_id = response.json()["data"]["event_id"]

    async def stored() -> bool:
        return (await client.get(f"/api/events/{event_id}", headers=app.headers)).status_code == 200

    await wait_until(stored, 20, message="event stored")
    event = (await client.get(f"/api/events/{event_id}", headers=app.headers)).json()["data"]
    assert event["app_id"] == app.app_id
    assert event["event_type"] == "order"
    assert event["payload"] == {"total": 9.5, "tags": ["a"]}
    assert event["metadata"] == {
        "source": "http",
        "ip_address": "127.0.0.1",
        "user_agent": "tests/1.0",
        "correlation_id": "corr-123",
    }
    assert event["status"] == "processed"
    assert event["routing"]["matched_rules"] == []
    received = datetime.fromisoformat(event["received_at"])
    assert abs(received - sent_at) < timedelta(seconds=30)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"payload": {}}, "body.event_type"),
        ({"event_type": "", "payload": {}}, "body.event_type"),
        ({"event_type": "x" * 101}, "body.event_type"),
        ({"event_type": "t", "payload": [1]}, "body.payload"),
        ({"event_type": "t", "payload": {}, "surprise": 1}, "body.surprise"),
        ([1, 2], "body"),
    ],
)
async def test_invalid_bodies_get_422_naming_the_field(
    client: httpx.AsyncClient, app: AppKey, body: object, field: str
) -> None:
    response = await ingest(client, app, body)
    assert response.status_code == 422
    answer = response.json()
    assert answer["success"] is False
    assert field in [e["field"] for e in answer["errors"]], answer


@pytest.mark.parametrize(
    ("raw", "says"),
    [(b"{oops", "JSON decode error"), (b'{"event_type": "t", "payload": {"x": NaN}}', "NaN")],
)
async def test_bodies_that_are_not_json_get_422(
    client: httpx.AsyncClient, app: AppKey, raw: bytes, says: str
) -> None:
    response = await client.post(
        f"/api/ingest/{app.app_id}",
        content=raw,
        headers={**app.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"].startswith("body")
    assert says in response.text


async def test_keys_are_checked(client: httpx.AsyncClient, app: AppKey, admin: dict[str, str]) -> None:
    body = {"event_type": "t", "payload": {}}
    url = f"/api/ingest/{app.app_id}"
    missing = await client.post(url, json=body)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert (await client.post(url, json=body, headers={"X-API-Key": "vdip_wrong"})).status_code == 401
    assert (await client.post(url, json=body, headers=admin)).status_code == 401  # admin does not ingest
    bearer = await client.post(url, json=body, headers={"Authorization": f"Bearer {app.key}"})
    assert bearer.status_code == 202
    unknown = await client.post("/api/ingest/no-such-app", json=body, headers=app.headers)
    assert unknown.status_code == 404
    assert unknown.json()["errors"][0]["field"] == "path.app_id"
    assert (await client.post(f"/api/applications/{app.app_id}/disable", headers=admin)).status_code == 200
    disabled = await client.post(url, json=body, headers=app.headers)
    assert disabled.status_code == 403
    assert disabled.json()["errors"][0]["reason"] == "application disabled"
    assert (await client.get(f"/api/events/app/{app.app_id}", headers=app.headers)).status_code == 200
    assert (await client.post(f"/api/applications/{app.app_id}/enable", headers=admin)).status_code == 200
    assert (await client.post(url, json=body, headers=app.headers)).status_code == 202
    # Another application's key does not open this one's events.
    other = await client.post("/api/applications", json={"name": "other"}, headers=admin)
    other_key = {"X-API-Key": other.json()["data"]["api_key"]}
    assert (await client.get(f"/api/events/app/{app.app_id}", headers=other_key)).status_code == 401


async def test_bad_app_id_in_path_is_a_422(client: httpx.AsyncClient, app: AppKey) -> None:
    response = await client.post("/api/ingest/bad%20id", json={"event_type": "t"}, headers=app.headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "path.app_id"


async def test_unknown_event_is_a_clear_404(client: httpx.AsyncClient, app: AppKey) -> None:
    response = await client.get(f"/api/events/{uuid.uuid4()}", headers=app.headers)
    assert response.status_code == 404
    assert "was not found" in response.json()["message"]
    assert (await client.get("/api/events/not-a-uuid", headers=app.headers)).status_code == 422


async def test_list_is_newest_first_filtered_and_paginated(client: httpx.AsyncClient, app: AppKey) -> None:
    ids = []
    for i in range(7):
        response = await ingest(
            client, app, {"event_type": "even" if i % 2 == 0 else "odd", "payload": {"i": i}}
        )
        ids.append(response.json()["data"]["event_id"])

    async def all_stored() -> bool:
        page = (await client.get(f"/api/events/app/{app.app_id}", headers=app.headers)).json()
        return len(page["data"]["events"]) == 7

    await wait_until(all_stored, 20, message="7 events stored")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(f"/api/events/app/{app.app_id}", params=params, headers=app.headers)).json()[
            "data"
        ]
        seen.extend(e["event_id"] for e in page["events"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # UUIDv7 and received_at both grow with time
    odd = (
        await client.get(f"/api/events/app/{app.app_id}", params={"event_type": "odd"}, headers=app.headers)
    ).json()["data"]["events"]
    assert [e["payload"]["i"] for e in odd] == [5, 3, 1]
    bad = await client.get(f"/api/events/app/{app.app_id}", params={"cursor": "!!"}, headers=app.headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.cursor"
    naive = await client.get(
        f"/api/events/app/{app.app_id}", params={"start_date": "2026-01-01T00:00:00"}, headers=app.headers
    )
    assert naive.status_code == 422 and naive.json()["errors"][0]["field"] == "query.start_date"


async def test_service_info_liveness_readiness_and_openapi(client: httpx.AsyncClient) -> None:
    root = (await client.get("/")).json()
    assert root["success"] is True and root["data"]["docs"] == "/docs"
    assert (await client.get("/health")).json()["data"]["status"] == "ok"
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["data"]["kafka"]["ok"] and ready.json()["data"]["postgres"]["ok"]
    spec = (await client.get("/openapi.json")).json()
    ingest_op = spec["paths"]["/api/ingest/{app_id}"]["post"]
    assert {"202", "401", "403", "404", "422", "503"} <= set(ingest_op["responses"])
    assert "/api/events/{event_id}" in spec["paths"] and "/api/events/app/{app_id}" in spec["paths"]


async def test_json_nested_beyond_the_parsers_limit_is_a_400(client: httpx.AsyncClient, app: AppKey) -> None:
    depth = 100_000  # 200 KB: under the body limit, far over Python's recursion limit
    raw = b'{"event_type": "t", "payload": {"x": ' + b"[" * depth + b"]" * depth + b"}}"
    response = await client.post(
        f"/api/ingest/{app.app_id}", content=raw, headers={**app.headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "message": "There was an error parsing the body",
        "errors": [{"field": "body", "reason": "could not be parsed as JSON"}],
    }


async def test_a_record_the_kafka_client_refuses_is_a_503_never_a_500(
    pipeline: Pipeline, app: AppKey
) -> None:
    """aiokafka's own errors from ``send()`` (its KafkaTimeoutError is no TimeoutError; here, a record
    over its max_request_size, which a gateway that allows 2 MB events makes) answer 503 as promised,
    and a batch keeps what Kafka did acknowledge."""
    big = {"VDIP_MAX_EVENT_BYTES": "2000000", "VDIP_MAX_BODY_BYTES": "4000000"}
    huge = {"event_type": "huge", "payload": {"blob": "x" * 1_200_000}}
    logs = pipeline.gateway.log_path.parent
    async with (
        another_gateway(pipeline.settings, logs, "gateway-big-events", big) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30) as client,
    ):
        single = await client.post(f"/api/ingest/{app.app_id}", json=huge, headers=app.headers)
        batch = await client.post(
            f"/api/ingest/{app.app_id}/batch",
            json={"events": [{"event_type": "small"}, huge]},
            headers=app.headers,
        )
    assert single.status_code == 503, single.text
    assert single.headers["Retry-After"] == "5"
    (error,) = single.json()["errors"]
    assert error["field"] == "kafka" and "MessageSizeTooLargeError" in error["reason"]
    assert batch.status_code == 207, batch.text
    small, refused = batch.json()["data"]["results"]
    assert small["status"] == "accepted" and refused["status"] == "rejected"
    assert refused["errors"][0]["field"] == "kafka"


async def test_a_known_differing_retry_is_409_an_identical_one_202(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    """Once the router claimed an event's first version, a retry with another payload (by
    event_id or by Idempotency-Key) is a 409; the same version, keys in any order, is a 202; in
    a batch, the conflicting event alone is rejected (207), or the batch is a 409."""
    x = str(uuid.uuid4())
    first: dict[str, object] = {
        "event_id": x,
        "event_type": "order",
        "payload": {"total": 10, "currency": "EUR"},
    }
    assert (await ingest(client, app, first)).status_code == 202
    keyed = {"Idempotency-Key": f"order-{uuid.uuid4().hex[:8]}"}
    by_key = await ingest(client, app, {"event_type": "order", "payload": {"total": 1}}, **keyed)
    assert by_key.status_code == 202
    ids = [uuid.UUID(x), uuid.UUID(by_key.json()["data"]["event_id"])]

    async def claimed() -> bool:
        found = await pool.fetchval(
            "SELECT count(*) FROM event_claims WHERE app_id = $1 AND event_id = ANY($2::uuid[])",
            app.app_id,
            ids,
        )
        return bool(found == 2)

    await wait_until(claimed, 30, message="both events claimed by the router")
    rejected = await rejected_for_conflict(pipeline)

    retry = await ingest(client, app, {**first, "payload": {"total": 100, "currency": "EUR"}})
    assert retry.status_code == 409, retry.text
    assert retry.json()["errors"][0]["field"] == "body.event_id"
    again = await ingest(client, app, {**first, "payload": {"currency": "EUR", "total": 10}})
    assert again.status_code == 202 and again.json()["data"]["event_id"] == x
    assert (await ingest(client, app, {**first, "event_type": "refund"})).status_code == 409
    keyed_retry = await ingest(client, app, {"event_type": "order", "payload": {"total": 2}}, **keyed)
    assert keyed_retry.status_code == 409
    assert keyed_retry.json()["errors"][0]["field"] == "header.Idempotency-Key"
    assert await rejected_for_conflict(pipeline) == rejected + 3

    url = f"/api/ingest/{app.app_id}/batch"
    other = {"event_type": "order", "payload": {"total": 5}}
    mixed = await client.post(url, json={"events": [retry_body(first), other]}, headers=app.headers)
    assert mixed.status_code == 207, mixed.text
    results = mixed.json()["data"]["results"]
    assert [r["status"] for r in results] == ["rejected", "accepted"]
    assert results[0]["errors"][0]["field"] == "body.events.0.event_id"
    alone = await client.post(url, json={"events": [retry_body(first)]}, headers=app.headers)
    assert alone.status_code == 409, alone.text
    assert (await client.post(url, json={"events": [first]}, headers=app.headers)).status_code == 202


def retry_body(first: dict[str, object]) -> dict[str, object]:
    return {**first, "payload": {"total": 100}}


async def rejected_for_conflict(pipeline: Pipeline) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{pipeline.base_url}/metrics")).text
    series = 'vdip_ingest_requests_total{outcome="rejected",reason="conflict"} '
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series))


async def test_the_conflict_check_fails_open_and_then_pauses(pool: asyncpg.Pool, app: AppKey) -> None:
    """While PostgreSQL does not answer within the timeout (event_claims locked here), the check
    finds no conflict, and skips PostgreSQL altogether for the pause that follows."""
    x = uuid.uuid4()
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO event_claims (app_id, event_id, content_hash) VALUES ($1, $2, $3)",
            app.app_id,
            x,
            content_hash("order", {"total": 10}),
        )
    check = ConflictCheck(pool, timeout_s=0.05, pause_s=2.0)
    candidate = Candidate(x, "order", {"total": 100})
    assert await check.conflicting(app.app_id, [candidate]) == {x}
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE event_claims IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        assert await check.conflicting(app.app_id, [candidate]) == set()
        assert time.monotonic() - started < 0.5
    assert await check.conflicting(app.app_id, [candidate]) == set()  # paused: not asked
    await asyncio.sleep(2.0)
    assert await check.conflicting(app.app_id, [candidate]) == {x}
