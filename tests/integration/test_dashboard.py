"""The dashboard in a real browser: Debian's chromium, driven by Playwright's Python API.

`bin/test` installs chromium (`vdip stack browser`); the screenshot is kept next to the processes'
logs of the run (``VDIP_TEST_LOG_DIR``, or pytest's temporary directory).
"""

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from playwright.async_api import Browser, Page, Route, expect

from tests.conftest import AppKey, Pipeline, rule_applied, wait_until
from tests.integration.test_rules import rule_body
from tests.integration.test_webhooks import Received, receiving, settled, webhook_rule


async def sign_in(page: Page, base_url: str, app: AppKey) -> None:
    await page.goto(f"{base_url}/dashboard/")
    await page.fill("#app-id", app.app_id)
    await page.fill("#key", app.key)
    await page.click("#sign-in button[type=submit]")
    await expect(page.locator("#board")).to_be_visible()


async def test_dashboard_shows_events_as_they_arrive(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    producer: AIOKafkaProducer,
    app: AppKey,
    browser: Browser,
    log_dir: Path,
) -> None:
    body = rule_body(app, condition={"payload.total": {"$gt": 5}})
    rule = await client.post("/api/routing-rules", json=body, headers=app.headers)
    await rule_applied(pipeline, rule.json()["data"])
    page = await browser.new_page(viewport={"width": 1200, "height": 1400})
    refused: list[str] = []  # what the Content-Security-Policy refused (a console error each)
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    wrong = await browser.new_page()
    await wrong.goto(f"{pipeline.base_url}/dashboard/")
    await wrong.fill("#app-id", app.app_id)
    await wrong.fill("#key", "vdip_not-the-key")
    await wrong.click("#sign-in button[type=submit]")
    await expect(wrong.locator("#sign-in-error")).to_contain_text("Cannot open")

    read_key = await client.post(
        f"/api/applications/{app.app_id}/keys",
        json={"name": "dashboard", "scopes": ["read"]},
        headers=app.headers,
    )
    await sign_in(
        page, pipeline.base_url, AppKey(app.app_id, read_key.json()["data"]["api_key"])
    )  # reads only
    sent = []
    for n, event_type in enumerate(["signup", "order", "order", "order", "refund"]):
        response = await client.post(
            f"/api/ingest/{app.app_id}",
            json={"event_type": event_type, "payload": {"total": n * 3}},
            headers=app.headers,
        )
        sent.append(response.json()["data"]["event_id"])
    await producer.send_and_wait(pipeline.settings.topic("events"), b"{not json", key=app.app_id.encode())

    await expect(page.locator("#quota")).to_have_text(
        "Ingest quota: 500000 events/s, 500000 at once (the default)"
    )
    events = page.locator("#events tbody tr")
    await expect(events).to_have_count(len(sent), timeout=15_000)
    for event_id in sent:
        await expect(page.locator("#events tbody")).to_contain_text(event_id)
    await expect(page.locator("#chart")).to_have_attribute("data-total", str(len(sent)), timeout=15_000)
    await expect(page.locator("#chart rect.processed")).not_to_have_count(0)
    ticks = page.locator("#chart text.tick.y")  # 0, half the highest bar, its top: whole numbers, each once
    await expect(ticks.first).to_have_text("0")
    values = [int(t) for t in await ticks.all_text_contents()]
    assert values == sorted(set(values)) and len(values) >= 2, values
    assert await page.locator("#chart text.tick.x").count() == 6
    await expect(page.locator("#chart")).to_contain_text("hourly buckets, local time")
    assert " processed of " in (await page.locator("#chart rect.processed title").last.text_content() or "")
    await page.select_option("#range", "30d")
    await expect(page.locator("#chart")).to_contain_text("daily buckets, local time")
    await expect(page.locator("#chart")).to_have_attribute("data-total", str(len(sent)))
    await page.select_option("#range", "24h")
    await expect(page.locator("#by-type tbody")).to_contain_text("order")
    await expect(page.locator("#rules tbody tr").first).to_contain_text("big orders")
    await expect(page.locator("#rules tbody tr td").nth(3)).to_have_text(
        "3", timeout=15_000
    )  # totals 6, 9, 12
    await expect(page.locator("#dead-letters tbody")).to_contain_text("validation", timeout=20_000)
    await page.locator("#dead-letters tbody tr", has_text="validation").locator("button").click()
    # A read key may look, not act: the page says why.
    await expect(page.locator("#dead-letters-message")).to_contain_text("does not have the 'manage' scope")

    span = {"start": "2026-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"}
    replay = await client.post(f"/api/applications/{app.app_id}/replay", json=span, headers=app.headers)
    assert replay.status_code == 202, replay.text
    jobs = page.locator("#jobs tbody tr")
    await expect(jobs).to_have_count(1, timeout=10_000)
    await expect(jobs.first).to_contain_text("replay")
    await expect(jobs.first).to_contain_text("done", timeout=20_000)
    await expect(jobs.first).to_contain_text("100% (5 of 5)")
    await expect(jobs.first.locator("progress")).to_have_attribute("value", "100")
    deletion = {"path": "payload.total", "values": [1000]}  # no event has it
    made = await client.post(f"/api/applications/{app.app_id}/deletions", json=deletion, headers=app.headers)
    assert made.status_code == 202, made.text
    await expect(jobs).to_have_count(2, timeout=10_000)
    await expect(jobs.first).to_contain_text("deletion of 1 value(s) at payload.total")
    await expect(jobs.first).to_contain_text("done", timeout=30_000)

    await page.locator("#events tbody tr", has_text=sent[-1]).click()
    await expect(page.locator("#detail")).to_be_visible()
    await expect(page.locator("#detail-payload")).to_contain_text('"total": 12')
    await expect(page.locator("#detail-deliveries tbody")).to_contain_text("queue")
    await expect(page.locator("#detail-summary")).to_contain_text("1 of 1 rule(s) evaluated matched")
    await expect(page.locator("#detail-matches tbody tr")).to_have_count(1)
    await expect(page.locator("#detail-routing")).not_to_be_visible()  # the JSON: one click away
    await page.click("#detail details summary")
    await expect(page.locator("#detail-routing")).to_contain_text('"matched_rules"')
    assert refused == []
    await page.screenshot(path=str(log_dir / "dashboard.png"), full_page=True)
    assert (log_dir / "dashboard.png").stat().st_size > 10_000

    response = await client.get(f"/api/dead-letters/app/{app.app_id}", headers=app.headers)
    (letter,) = response.json()["data"]
    assert letter["stage"] == "validation" and letter["value"] == "{not json"
    assert orjson.loads(await (await page.request.get(f"{pipeline.base_url}/health")).body())["success"]


async def test_the_dashboard_is_served_with_security_headers(
    pipeline: Pipeline, client: httpx.AsyncClient
) -> None:
    for path in ("/dashboard/", "/dashboard/dashboard.js", "/dashboard/dashboard.css", "/dashboard/missing"):
        answer = await client.get(path)
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert answer.headers["x-content-type-options"] == "nosniff", path
        assert answer.headers["referrer-policy"] == "no-referrer", path
        assert answer.headers["x-frame-options"] == "DENY", path
    assert "content-security-policy" not in (await client.get("/health")).headers


async def test_the_api_docs_render_with_no_network(pipeline: Pipeline, browser: Browser) -> None:
    """/docs and /redoc need nothing from elsewhere: every other address is cut off here, and the
    pages render all the same. Redoc asks for its makers' logo (an image, its "API docs by
    Redocly" link) from their site: only images may be asked for elsewhere."""
    page = await browser.new_page(viewport={"width": 1200, "height": 1400})
    elsewhere: list[str] = []

    async def only_the_gateway(route: Route) -> None:
        if route.request.url.startswith(pipeline.base_url):
            await route.continue_()
        else:
            if route.request.resource_type != "image":
                elsewhere.append(route.request.url)
            await route.abort()

    await page.route("**/*", only_the_gateway)
    await page.goto(f"{pipeline.base_url}/docs")
    operations = page.locator(".opblock")
    await expect(operations.first).to_be_visible(timeout=20_000)
    assert await operations.count() > 40
    await expect(page.locator("body")).to_contain_text("/api/ingest/{app_id}/batch")
    await page.goto(f"{pipeline.base_url}/redoc")
    await expect(page.locator("body")).to_contain_text(
        "Route the stored events of a time range again", timeout=20_000
    )
    assert elsewhere == []


async def test_the_admin_overview_shows_every_application_and_the_pipeline(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    app: AppKey,
    admin: dict[str, str],
    browser: Browser,
    log_dir: Path,
) -> None:
    events = [{"event_type": "seen", "payload": {"n": n}} for n in range(3)]
    sent = await client.post(f"/api/ingest/{app.app_id}/batch", json={"events": events}, headers=app.headers)
    assert sent.status_code == 202, sent.text

    async def counted() -> dict[str, Any] | None:
        data = (await client.get("/api/overview", headers=admin)).json()["data"]
        mine = [a for a in data["applications"] if a["app_id"] == app.app_id]
        return data if mine and mine[0]["events_per_minute"] == 0.6 else None  # 3 events in 5 minutes

    await wait_until(counted, 30, message="the application's events in the overview")
    data = await counted()
    assert data is not None
    assert {(lag["process"], lag["topic"]) for lag in data["pipeline"]["consumer_lag"]} == {
        ("worker", "events"),
        ("bulk-worker", "events.bulk"),
        ("sink", "events.routed"),
        ("sink", "events.routed.bulk"),
        ("table-sink", "deliveries.table"),
        ("webhooks", "deliveries.webhook"),
    }
    assert data["pipeline"]["events_per_s"] > 0 and data["pipeline"]["accept_to_stored_p99_ms"] > 0
    assert (await client.get("/api/overview", headers=app.headers)).status_code == 401

    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    await page.goto(f"{pipeline.base_url}/dashboard/")
    await page.fill("#key", admin["Authorization"].removeprefix("Bearer "))
    await page.click("#sign-in button[type=submit]")
    await expect(page.locator("#overview")).to_be_visible()
    row = page.locator("#apps tbody tr", has_text=app.app_id)
    await expect(row).to_contain_text("0.6")
    await expect(page.locator("#lags tbody tr")).to_have_count(6)
    await expect(page.locator("#health")).to_contain_text("events/s")
    await page.screenshot(path=str(log_dir / "overview.png"), full_page=True)
    await row.click()
    await expect(page.locator("#board")).to_be_visible()
    await expect(page.locator("#who")).to_have_text(app.app_id)
    await expect(page.locator("#events tbody tr")).to_have_count(3, timeout=15_000)
    await page.click("#all-apps")
    await expect(page.locator("#overview")).to_be_visible()
    await expect(page.locator("#board")).to_be_hidden()


async def test_a_rule_is_written_tested_edited_switched_off_and_deleted_in_the_page(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, browser: Browser, log_dir: Path
) -> None:
    sent = await client.post(
        f"/api/ingest/{app.app_id}",
        json={"event_type": "order", "payload": {"total": 80}},
        headers=app.headers,
    )
    assert sent.status_code == 202
    page = await browser.new_page(viewport={"width": 1200, "height": 1600})
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await sign_in(page, pipeline.base_url, app)
    await expect(page.locator("#events tbody tr")).to_have_count(1, timeout=15_000)
    await page.click("#rule-new")
    await page.fill("#rule-name", "big orders")
    await page.fill("#rule-condition", '{"payload.total": {"$bogus": 50}}')
    await page.fill("#rule-config", '{"topic": ')
    await page.click("#rule-save")
    await expect(page.locator('.field-error[data-for="destination_config"]')).to_contain_text("not JSON")
    topic = f"ui-orders-{uuid.uuid4().hex[:8]}"
    await page.fill("#rule-config", f'{{"topic": "{topic}"}}')
    await page.click("#rule-save")
    await expect(page.locator('.field-error[data-for="condition"]')).to_be_visible()
    await expect(page.locator("#rule-condition")).to_have_attribute("aria-invalid", "true")
    await page.fill("#rule-condition", '{"payload.total": {"$gt": 50}}')
    await page.click("#rule-save")
    await expect(page.locator("#rule-error")).to_contain_text("Saved rule")
    await expect(page.locator("#rule-form-title")).to_contain_text("Edit rule")
    row = page.locator("#rules tbody tr", has_text="big orders")
    await expect(row).to_contain_text("queue", timeout=10_000)

    await page.click("#rule-latest")
    await expect(page.locator("#rule-sample")).to_have_value(re.compile(r'"total": 80'))
    await page.click("#rule-test")
    await expect(page.locator("#rule-verdict")).to_contain_text("Matches the sample event.")
    await page.fill("#rule-sample", '{"event_type": "order", "payload": {"total": 7}}')
    await page.click("#rule-test")
    await expect(page.locator("#rule-verdict")).to_contain_text("Does not match the sample event:")
    await expect(page.locator("#rule-verdict")).to_contain_text("7")
    await page.screenshot(path=str(log_dir / "rule-editor.png"), full_page=True)

    rules = (await client.get(f"/api/routing-rules/app/{app.app_id}", headers=app.headers)).json()["data"]
    (made,) = [r for r in rules if r["rule_name"] == "big orders"]
    assert made["condition"] == {"payload.total": {"$gt": 50}} and made["destination_config"] == {
        "topic": topic
    }
    await row.locator("button", has_text="edit").click()
    await expect(page.locator("#rule-form")).to_be_visible()  # hidden until the rule is loaded
    await page.fill("#rule-priority", "7")
    await page.click("#rule-save")
    await expect(page.locator("#rule-error")).to_contain_text("Saved rule")
    got = (await client.get(f"/api/routing-rules/{made['rule_id']}", headers=app.headers)).json()["data"]
    assert got["priority"] == 7
    await row.locator("button", has_text="switch off").click()
    await expect(row.locator("td").nth(2)).to_have_text("no")
    await row.locator("button", has_text="delete").click()
    await expect(page.locator("#rules tbody tr", has_text="big orders")).to_have_count(0)
    assert (await client.get(f"/api/routing-rules/{made['rule_id']}", headers=app.headers)).status_code == 404


async def test_a_disabled_endpoint_is_shown_re_enabled_and_its_failed_deliveries_sent_again(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    producer: AIOKafkaProducer,
    app: AppKey,
    browser: Browser,
    log_dir: Path,
) -> None:
    gone = True

    async def reply(_: Received) -> tuple[int, dict[str, str]]:
        return (410, {}) if gone else (200, {})

    async with receiving(reply) as receiver:
        rule = await webhook_rule(pipeline, client, app, receiver.url("/gone"))
        sent = await client.post(
            f"/api/ingest/{app.app_id}", json={"event_type": "order"}, headers=app.headers
        )
        (outcome,) = await settled(client, app, sent.json()["data"]["event_id"])
        assert outcome["status"] == "failed"
        page = await browser.new_page(viewport={"width": 1200, "height": 1600})
        await sign_in(page, pipeline.base_url, app)
        card = page.locator(f'#endpoints .endpoint[data-rule-id="{rule["rule_id"]}"]')
        await expect(card.locator(".state")).to_contain_text("disabled", timeout=15_000)
        await expect(card.locator(".state")).to_contain_text("410")
        await expect(card).to_contain_text("0 % delivered over 24 h: 0 delivered, 1 failed")
        await expect(card.locator("tbody tr")).to_have_count(1)
        await card.scroll_into_view_if_needed()
        await page.screenshot(path=str(log_dir / "endpoint-health.png"), full_page=True)

        gone = False
        await card.locator("button", has_text="re-enable").click()
        await expect(page.locator("#endpoints-message")).to_contain_text("re-enabled")
        await expect(card.locator(".state")).to_have_text("healthy")
        await card.locator("button", has_text="rotate secret").click()
        await expect(page.locator("#endpoints-message")).to_contain_text("whsec_")
        await card.locator("button", has_text="redeliver failed").click()
        await expect(page.locator("#endpoints-message")).to_contain_text("1 failed deliveries")
        await expect(card).to_contain_text("100 % delivered over 24 h: 1 delivered, 0 failed", timeout=30_000)
    assert len(receiver.requests) == 2

    # A dead letter sent back from the page: it is not an event, and the page says so.
    await producer.send_and_wait(pipeline.settings.topic("events"), b"{broken", key=app.app_id.encode())
    letter = page.locator("#dead-letters tbody tr", has_text="validation")
    await expect(letter).to_have_count(1, timeout=20_000)
    await letter.locator("button", has_text="send back").click()
    await expect(page.locator("#dead-letters-message")).to_contain_text(": invalid")
