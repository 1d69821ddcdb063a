"""The dashboard in a real browser: Debian's chromium, driven by Playwright's Python API.

`bin/test` installs chromium (`vdip stack browser`); the screenshot is kept next to the processes'
logs of the run (``VDIP_TEST_LOG_DIR``, or pytest's temporary directory).
"""

from pathlib import Path

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from playwright.async_api import Browser, Page, expect

from tests.conftest import AppKey, Pipeline, rule_applied
from tests.integration.test_rules import rule_body


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
    await expect(page.locator("#by-type tbody")).to_contain_text("order")
    await expect(page.locator("#rules tbody tr").first).to_contain_text("big orders")
    await expect(page.locator("#rules tbody tr td").nth(3)).to_have_text(
        "3", timeout=15_000
    )  # totals 6, 9, 12
    await expect(page.locator("#dead-letters tbody")).to_contain_text("validation", timeout=20_000)

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
    await page.screenshot(path=str(log_dir / "dashboard.png"), full_page=True)
    assert (log_dir / "dashboard.png").stat().st_size > 10_000

    response = await client.get(f"/api/dead-letters/app/{app.app_id}", headers=app.headers)
    (letter,) = response.json()["data"]
    assert letter["stage"] == "validation" and letter["value"] == "{not json"
    assert orjson.loads(await (await page.request.get(f"{pipeline.base_url}/health")).body())["success"]
