"""CORS on ingest: a page on an application's allowed origin sends events from real Chromium;
a page on another origin is refused, and only the ingest routes answer cross-origin."""

import asyncio
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import asyncpg
import httpx
from playwright.async_api import Browser

from tests.conftest import ROOT, AppKey, Pipeline, wait_until
from tests.integration.conftest import WebSite

SEND = """async ([url, key, events]) => {
    try {
        const response = await fetch(url, {
            method: "POST",
            headers: {"Content-Type": "application/json", "X-API-Key": key, "Idempotency-Key": "page-1"},
            body: JSON.stringify({events}),
        });
        return {status: response.status, body: await response.json(),
                retryAfter: response.headers.get("Retry-After")};
    } catch (error) {
        return {error: String(error)};
    }
}"""


async def ingest_key(client: httpx.AsyncClient, app: AppKey) -> str:
    made = await client.post(
        f"/api/applications/{app.app_id}/keys",
        json={"name": "browser", "scopes": ["ingest"]},
        headers=app.headers,
    )
    assert made.status_code == 201, made.text
    key: str = made.json()["data"]["api_key"]
    return key


async def allow(client: httpx.AsyncClient, app: AppKey, *origins: str) -> dict[str, Any]:
    response = await client.put(
        f"/api/applications/{app.app_id}/allowed-origins",
        json={"allowed_origins": list(origins)},
        headers=app.headers,
    )
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def test_a_page_on_an_allowed_origin_sends_events_and_another_is_refused(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    app: AppKey,
    browser: Browser,
    web_site: WebSite,
) -> None:
    shop, elsewhere = web_site("<h1>shop</h1>"), web_site("<h1>elsewhere</h1>")
    assert (await allow(client, app, shop.upper() + "/"))["allowed_origins"] == [shop]  # normalized
    key = await ingest_key(client, app)
    url = f"{pipeline.base_url}/api/ingest/{app.app_id}/batch"
    sent: list[dict[str, Any]] = [
        {"event_id": str(uuid.uuid4()), "event_type": "page_view", "payload": {"n": n}} for n in range(3)
    ]

    page = await browser.new_page()
    await page.goto(shop)
    answer = await page.evaluate(SEND, [url, key, sent])
    assert answer.get("status") == 202, answer
    assert answer["body"]["data"]["accepted"] == 3

    other = await browser.new_page()
    await other.goto(elsewhere)
    refused_ids = [str(uuid.uuid4())]
    refused = await other.evaluate(SEND, [url, key, [{"event_id": refused_ids[0], "event_type": "x"}]])
    assert "error" in refused and "Failed to fetch" in refused["error"], refused

    ids = [uuid.UUID(e["event_id"]) for e in sent]

    async def stored() -> bool:
        found = await pool.fetchval("SELECT count(*) FROM data_events WHERE event_id = ANY($1::uuid[])", ids)
        return bool(found == len(ids))

    await wait_until(stored, 30, message="the page's events stored")
    assert await pool.fetchval("SELECT count(*) FROM data_events WHERE app_id = $1", app.app_id) == 3

    # A rate-limited or refused answer is readable by the allowed page (its headers too).
    wrong = await page.evaluate(SEND, [url, "vdip_not-a-key", sent])
    assert wrong.get("status") == 401, wrong


async def test_preflight_follows_the_fetch_standard(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    shop = "https://shop.example.com"
    await allow(client, app, shop, "http://localhost:3000")
    asks = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key",
    }
    for path in (
        f"/api/ingest/{app.app_id}",
        f"/api/ingest/{app.app_id}/batch",
        f"/api/ingest/{app.app_id}/beacon",
        f"/api/messages/{app.app_id}",
    ):
        ok = await client.options(path, headers={"Origin": shop, **asks})
        assert ok.status_code == 204, ok.text
        assert ok.headers["access-control-allow-origin"] == shop
        assert ok.headers["vary"] == "Origin"
        assert ok.headers["access-control-allow-methods"] == "POST"
        allowed = {h.strip().lower() for h in ok.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "x-api-key", "idempotency-key", "content-type"} <= allowed
        assert int(ok.headers["access-control-max-age"]) > 0

    for origin, app_id in (
        ("https://evil.example.com", app.app_id),
        (shop, "no-such-app"),
        ("null", app.app_id),
    ):
        no = await client.options(f"/api/ingest/{app_id}", headers={"Origin": origin, **asks})
        assert no.status_code == 403, no.text
        assert "access-control-allow-origin" not in no.headers
        assert no.json()["errors"][0]["field"] == "header.Origin"

    event = {"event_type": "click", "payload": {}}
    sent = await client.post(f"/api/ingest/{app.app_id}", json=event, headers={"Origin": shop, **app.headers})
    assert sent.status_code == 202
    assert sent.headers["access-control-allow-origin"] == shop and "Origin" in sent.headers["vary"]
    assert "Retry-After" in sent.headers["access-control-expose-headers"]
    other = await client.post(
        f"/api/ingest/{app.app_id}", json=event, headers={"Origin": "https://evil.example.com", **app.headers}
    )
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
    beacon = {"key": app.key, "events": [event]}  # a "simple" request: browsers send it without a preflight
    simple = await client.post(
        f"/api/ingest/{app.app_id}/beacon",
        content=json.dumps(beacon),
        headers={"Origin": "https://evil.example.com", "Content-Type": "text/plain"},
    )
    assert simple.status_code == 403
    from_shop = await client.post(
        f"/api/ingest/{app.app_id}/beacon",
        content=json.dumps(beacon),
        headers={"Origin": shop, "Content-Type": "text/plain"},
    )
    assert from_shop.status_code == 202 and from_shop.json()["data"]["accepted"] == 1
    plain = await client.post(f"/api/ingest/{app.app_id}", json=event, headers=app.headers)  # no Origin
    assert plain.status_code == 202 and "access-control-allow-origin" not in plain.headers

    # Only ingest answers cross-origin: management and reads do not.
    for path in (f"/api/applications/{app.app_id}", f"/api/events/app/{app.app_id}"):
        answer = await client.options(path, headers={"Origin": shop, **asks})
        assert "access-control-allow-origin" not in answer.headers, path
        read = await client.get(path, headers={"Origin": shop, **app.headers})
        assert read.status_code == 200 and "access-control-allow-origin" not in read.headers

    await allow(client, app)
    gone = await client.options(f"/api/ingest/{app.app_id}", headers={"Origin": shop, **asks})
    assert gone.status_code == 403  # applies at once through this gateway


async def test_allowed_origins_are_validated_and_need_the_manage_scope(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    path = f"/api/applications/{app.app_id}/allowed-origins"
    for wrong in (
        "shop.example.com",
        "https://shop.example.com/path",
        "ftp://x.example",
        "*",
        "https://a:99999",
    ):
        answer = await client.put(path, json={"allowed_origins": [wrong]}, headers=app.headers)
        assert answer.status_code == 422, wrong
    key = await ingest_key(client, app)
    answer = await client.put(path, json={"allowed_origins": []}, headers={"X-API-Key": key})
    assert answer.status_code == 403
    fine = await client.put(
        path, json={"allowed_origins": ["HTTPS://Shop.example.com:443"]}, headers=app.headers
    )
    assert fine.json()["data"]["allowed_origins"] == ["https://shop.example.com"]
    audit = await client.get(f"/api/audit/app/{app.app_id}", headers=app.headers)
    assert audit.status_code == 200 and "application.allowed_origins" in audit.text


async def test_vdip_app_origins_sets_and_lists_them(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    env = {**os.environ, **pipeline.settings.as_environment()}

    def vdip(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "vdip.cli", "app", "origins", app.app_id, *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)

    done = await asyncio.to_thread(vdip, "https://b.example.com", "HTTP://A.example.com:8080/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["http://a.example.com:8080", "https://b.example.com"]
    assert (await asyncio.to_thread(vdip)).stdout.split() == done.stdout.split()
    wrong = await asyncio.to_thread(vdip, "a.example.com")
    assert wrong.returncode == 1 and "not an origin" in wrong.stderr
    assert (await asyncio.to_thread(vdip, "--clear")).stdout == ""
    found = await client.get(f"/api/applications/{app.app_id}", headers=app.headers)
    assert found.json()["data"]["allowed_origins"] == []
