"""The original API's contract: every request its README shows, sent as it shows it (with a key
added), works here or answers the difference docs/migrating.md documents and explains.

The original's applications 1 and 2 are the applications "1" and "2" here (``vdip import-seed``
keeps their ids as text).
"""

import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import AppKey, wait_until
from vdip.store.applications import create_application
from vdip.store.keys import create_key

ORDER = {
    "event_type": "order_created",
    "payload": {"order_id": "ORD-123", "customer_id": 456, "total": 99.99},
}
RULE = {  # the README's rule, as it shows it: an integer app_id
    "app_id": 1,
    "rule_name": "Forward high-value orders",
    "event_type_filter": "order_created",
    "condition": {"payload.total": {"$gt": 50}},
    "destination_type": "webhook",
    "destination_config": {"url": "https://example.com/webhook"},
    "priority": 10,
}


@pytest.fixture
async def seed_apps(pool: asyncpg.Pool, client: httpx.AsyncClient) -> tuple[AppKey, AppKey]:
    """The original's applications 1 and 2 (made once per test run's database), with a key each
    that the gateway knows (it caches applications for a few seconds)."""
    apps: list[AppKey] = []
    for app_id in ("1", "2"):
        await pool.execute("DELETE FROM routing_rules WHERE app_id = $1", app_id)
        created = await create_application(pool, app_id, f"seed {app_id}")
        if created is None:  # made by an earlier test of this run: a new key of every scope
            _, key = await create_key(pool, app_id, f"contract {uuid.uuid4().hex[:8]}")
            apps.append(AppKey(app_id, key))
        else:
            apps.append(AppKey(app_id, created[1]))
    for app in apps:

        async def known(app: AppKey = app) -> bool:
            answer = await client.get(f"/api/routing-rules/app/{app.app_id}", headers=app.headers)
            return answer.status_code == 200

        await wait_until(known, 30, message=f"the gateway knows application {app.app_id}'s key")
    return apps[0], apps[1]


def data(answer: httpx.Response, status: int) -> Any:
    assert answer.status_code == status, (answer.request.method, str(answer.request.url), answer.text)
    body = answer.json()
    assert body["success"] is True
    return body["data"]


def refused(answer: httpx.Response, status: int, *fields: str) -> None:
    assert answer.status_code == status, (answer.request.method, str(answer.request.url), answer.text)
    body = answer.json()
    assert body["success"] is False
    assert {e["field"] for e in body["errors"]} >= set(fields), body


async def test_ingest_events_and_statistics_as_the_readme_shows(
    client: httpx.AsyncClient, seed_apps: tuple[AppKey, AppKey]
) -> None:
    one, two = seed_apps

    # POST /api/ingest/{app_id}: works. Difference: 202 (accepted once Kafka has it; stored and
    # routed after) with a UUID event_id, instead of 201 with a serial id and a routing summary.
    first = data(await client.post("/api/ingest/1", json=ORDER, headers=one.headers), 202)
    assert first["status"] == "accepted"
    event_id = str(uuid.UUID(first["event_id"]))
    # The use cases' requests: another order, and a login of application 2.
    second = {"event_type": "order_created", "payload": {"order_id": "123", "total": 99.99}}
    data(await client.post("/api/ingest/1", json=second, headers=one.headers), 202)
    login = {"event_type": "user_login", "payload": {"user_id": 456, "device": "mobile"}}
    data(await client.post("/api/ingest/2", json=login, headers=two.headers), 202)
    # Difference: a key is required (the original had none on any endpoint).
    refused(await client.post("/api/ingest/1", json=ORDER), 401, "header.X-API-Key")

    # GET /api/events/{event_id}: works with the id ingest gave (once stored).
    async def stored() -> bool:
        return (await client.get(f"/api/events/{event_id}", headers=one.headers)).status_code == 200

    await wait_until(stored, 60, message="the event is stored")
    event = data(await client.get(f"/api/events/{event_id}", headers=one.headers), 200)
    assert event["app_id"] == "1" and event["payload"] == ORDER["payload"]
    # Difference: event ids are UUIDs; the original's integer is a 422 naming the path.
    refused(await client.get("/api/events/789", headers=one.headers), 422, "path.event_id")

    # GET /api/events/app/{app_id}: works, with the original's count, limit and offset.
    async def both_stored() -> bool:
        page = await client.get("/api/events/app/1", headers=one.headers)
        return page.status_code == 200 and page.json()["data"]["count"] >= 2

    await wait_until(both_stored, 60, message="both events are stored")
    page = data(await client.get("/api/events/app/1", headers=one.headers), 200)
    assert page["count"] == len(page["events"]) >= 2 and page["offset"] == 0
    newest, older = page["events"][0], page["events"][1]
    skipped = data(await client.get("/api/events/app/1?limit=1&offset=1", headers=one.headers), 200)
    assert [e["event_id"] for e in skipped["events"]] == [older["event_id"]] != [newest["event_id"]]
    assert skipped["limit"] == 1 and skipped["offset"] == 1
    typed = data(await client.get("/api/events/app/1?event_type=order_created", headers=one.headers), 200)
    assert {e["event_type"] for e in typed["events"]} == {"order_created"}
    # Difference: limit is at most 500 (the original cut 1000 down silently): a 422 naming it.
    refused(await client.get("/api/events/app/1?limit=1000", headers=one.headers), 422, "query.limit")

    # GET /api/statistics/1?time_period=daily&event_type=order_created: works, with count and
    # filters beside data (data is the list the original had in data.statistics).
    async def counted() -> bool:
        answer = await client.get(
            "/api/statistics/1?time_period=daily&event_type=order_created", headers=one.headers
        )
        return answer.status_code == 200 and sum(b["total_events"] for b in answer.json()["data"]) >= 2

    await wait_until(counted, 60, message="the orders are counted")
    answer = await client.get(
        "/api/statistics/1?time_period=daily&event_type=order_created", headers=one.headers
    )
    buckets = data(answer, 200)
    body = answer.json()
    assert body["count"] == len(buckets) >= 1
    assert body["filters"]["app_id"] == "1" and body["filters"]["event_type"] == "order_created"
    assert body["filters"]["time_period"] == "daily"
    assert {b["event_type"] for b in buckets} == {"order_created"}
    assert set(buckets[0]) >= {
        "event_type",
        "total_events",
        "processed_events",
        "failed_events",
        "pending_events",
        "time_bucket",
        "time_period",
    }

    # GET /api/statistics/dashboard/1?time_period=daily: works, with the original's app_id,
    # event_types (a list) and totals, beside the series the dashboard draws.
    board = data(await client.get("/api/statistics/dashboard/1?time_period=daily", headers=one.headers), 200)
    assert board["app_id"] == "1" and board["time_period"] == "daily"
    assert [t["event_type"] for t in board["event_types"]] == ["order_created"]
    assert board["totals"]["total_events"] == board["event_types"][0]["total_events"] >= 2

    # GET /api/statistics/dashboard/2?time_period=hourly (the use case): works.
    async def login_counted() -> bool:
        answer = await client.get("/api/statistics/dashboard/2?time_period=hourly", headers=two.headers)
        return answer.status_code == 200 and answer.json()["data"]["totals"]["total_events"] >= 1

    await wait_until(login_counted, 60, message="the login is counted")

    # POST /api/statistics/refresh/{app_id}: works (recomputes from the stored events), and so
    # does the original's form with event_type and time_period.
    refreshed = data(await client.post("/api/statistics/refresh/1", headers=one.headers), 200)
    assert refreshed["changed"] == []
    narrow = "/api/statistics/refresh/1?event_type=order_created&time_period=daily"
    assert data(await client.post(narrow, headers=one.headers), 200)["changed"] == []

    # Difference: a parameter no endpoint takes is a 422 naming it, never ignored.
    refused(
        await client.get("/api/statistics/1?timeperiod=daily", headers=one.headers), 422, "query.timeperiod"
    )


async def test_routing_rules_as_the_readme_shows(
    client: httpx.AsyncClient, seed_apps: tuple[AppKey, AppKey]
) -> None:
    one, _ = seed_apps

    # POST /api/routing-rules with the README's body (app_id an integer): works, 201 with rule_id.
    # Difference: a webhook rule's signing secret is in the answer, once.
    created = data(await client.post("/api/routing-rules", json=RULE, headers=one.headers), 201)
    rule_id = created["rule_id"]
    assert created["app_id"] == "1" and created["priority"] == 10 and created["is_active"] is True
    assert created["webhook_secret"].startswith("whsec_")
    # The use case's shortened rule lacks app_id, rule_name and destination_config: a 422 naming
    # them, as the original answered it.
    short = {"condition": {"payload.total": {"$gt": 50}}, "destination_type": "webhook"}
    refused(
        await client.post("/api/routing-rules", json=short, headers=one.headers),
        422,
        "body.app_id",
        "body.rule_name",
        "body.destination_config",
    )

    # GET /api/routing-rules/{rule_id}: works.
    rule = data(await client.get(f"/api/routing-rules/{rule_id}", headers=one.headers), 200)
    assert {k: rule[k] for k in RULE if k != "app_id"} == {k: v for k, v in RULE.items() if k != "app_id"}

    # GET /api/routing-rules/app/{app_id}, and ?event_type= as the original (rules an event of
    # that type goes through). Difference: data is the list the original had in data.rules.
    listed = data(await client.get("/api/routing-rules/app/1", headers=one.headers), 200)
    assert [r["rule_id"] for r in listed] == [rule_id]
    orders = data(
        await client.get("/api/routing-rules/app/1?event_type=order_created", headers=one.headers), 200
    )
    assert [r["rule_id"] for r in orders] == [rule_id]
    assert (
        data(await client.get("/api/routing-rules/app/1?event_type=user_login", headers=one.headers), 200)
        == []
    )

    # PUT /api/routing-rules/{rule_id} with some fields: those change, the others stay.
    changed = data(
        await client.put(f"/api/routing-rules/{rule_id}", json={"priority": 20}, headers=one.headers), 200
    )
    assert changed["priority"] == 20 and changed["rule_name"] == RULE["rule_name"]
    assert (
        changed["condition"] == RULE["condition"]
        and changed["destination_config"] == RULE["destination_config"]
    )
    renamed = data(
        await client.put(
            f"/api/routing-rules/{rule_id}", json={"rule_name": "renamed", "app_id": 1}, headers=one.headers
        ),
        200,
    )
    assert renamed["rule_name"] == "renamed" and renamed["priority"] == 20
    refused(
        await client.put(f"/api/routing-rules/{rule_id}", json={"rule_name": None}, headers=one.headers),
        422,
        "body.rule_name",
    )

    # PATCH /api/routing-rules/{rule_id}/toggle?is_active=false: sets it, however often it is sent.
    toggle = f"/api/routing-rules/{rule_id}/toggle"
    for _ in range(2):
        assert (
            data(await client.patch(f"{toggle}?is_active=false", headers=one.headers), 200)["is_active"]
            is False
        )
    assert data(await client.patch(f"{toggle}?is_active=true", headers=one.headers), 200)["is_active"] is True
    assert data(await client.patch(f"{toggle}?is_active=true", headers=one.headers), 200)["is_active"] is True
    # Without is_active it flips (this platform's own form).
    assert data(await client.patch(toggle, headers=one.headers), 200)["is_active"] is False

    # DELETE /api/routing-rules/{rule_id}: works; then the rule is unknown.
    assert (
        data(await client.delete(f"/api/routing-rules/{rule_id}", headers=one.headers), 200)["rule_id"]
        == rule_id
    )
    refused(await client.get(f"/api/routing-rules/{rule_id}", headers=one.headers), 404, "path.rule_id")


async def test_legacy_and_health_as_the_readme_shows(
    client: httpx.AsyncClient, seed_apps: tuple[AppKey, AppKey]
) -> None:
    one, _ = seed_apps

    # POST /api/messages/{app_id}?message_content=...: works. Difference: 202 with an event of type
    # "message" (payload {"message_content": ...}) instead of 201 with a message_id.
    sent = data(await client.post("/api/messages/1?message_content=hello", headers=one.headers), 202)
    event_id = sent["event_id"]

    async def stored() -> bool:
        return (await client.get(f"/api/events/{event_id}", headers=one.headers)).status_code == 200

    await wait_until(stored, 60, message="the message is stored")
    event = data(await client.get(f"/api/events/{event_id}", headers=one.headers), 200)
    assert event["event_type"] == "message" and event["payload"] == {"message_content": "hello"}
    # A JSON body is this platform's form; both at once is ambiguous: a 422 naming the parameter.
    data(await client.post("/api/messages/1", json={"text": "hi"}, headers=one.headers), 202)
    refused(
        await client.post("/api/messages/1?message_content=x", json={"text": "hi"}, headers=one.headers),
        422,
        "query.message_content",
    )
    refused(await client.post("/api/messages/1", headers=one.headers), 422, "query.message_content")

    # GET / and GET /health: work, with the uptime. Difference: inside the usual envelope's data.
    root = data(await client.get("/"), 200)
    assert root["status"] == "ok" and root["uptime"].count(":") == 2
    health = data(await client.get("/health"), 200)
    assert health["status"] == "ok" and health["uptime"].count(":") == 2 and health["uptime_s"] >= 0
