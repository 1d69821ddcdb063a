"""gateway/static/vdip.js in real Chromium: a page's events arrive once, in batches, including
when the page is closed mid-batch (sendBeacon) and when the gateway answers 429 (Retry-After)."""

import asyncio
import uuid
from pathlib import Path

import asyncpg
import httpx
from playwright.async_api import Browser, Page

from tests.conftest import AppKey, Pipeline, Process, _free_port, start_gateway, wait_until
from tests.integration.conftest import WebSite
from tests.integration.test_client import stored_ids
from tests.integration.test_cors import allow, ingest_key
from vdip.store.applications import set_quota

TRACK = """([options, count]) => {
    window.vdip = VDIP.init(options);
    const ids = [];
    for (let n = 0; n < count; n++) ids.push(vdip.track("click", {n}));
    return ids;
}"""


async def open_page(browser: Browser, web_site: WebSite, gateway: str) -> Page:
    page = await browser.new_page()
    await page.goto(web_site(f'<script src="{gateway}/static/vdip.js"></script><h1>shop</h1>'))
    return page


async def stored_once(pool: asyncpg.Pool, app_id: str, ids: list[str], timeout: float = 60) -> None:
    expected = sorted(uuid.UUID(i) for i in ids)

    async def arrived() -> bool:
        return len(await stored_ids(pool, app_id)) >= len(expected)

    await wait_until(arrived, timeout, message=f"{len(expected)} events stored")
    await asyncio.sleep(1)
    assert sorted(await stored_ids(pool, app_id)) == expected  # each once, nothing else


async def test_the_snippet_is_small_and_served(pipeline: Pipeline, client: httpx.AsyncClient) -> None:
    script = await client.get("/static/vdip.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert len(script.content) < 8_000


async def test_a_pages_events_arrive_once_in_batches(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    app: AppKey,
    browser: Browser,
    web_site: WebSite,
) -> None:
    page = await open_page(browser, web_site, pipeline.base_url)
    await allow(client, app, page.url)
    options = {"url": f"{pipeline.base_url}/api/ingest/{app.app_id}", "key": await ingest_key(client, app)}
    ids = await page.evaluate(TRACK, [{**options, "batchSize": 5, "flushIntervalMs": 200}, 12])
    assert len(set(ids)) == 12 and all(uuid.UUID(i).version == 7 for i in ids)
    await wait_until(lambda: page.evaluate("vdip.pending() === 0"), 30, message="the page sent everything")
    await stored_once(pool, app.app_id, ids)


async def test_a_page_closed_mid_batch_sends_the_rest_by_beacon_once(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    app: AppKey,
    browser: Browser,
    web_site: WebSite,
) -> None:
    page = await open_page(browser, web_site, pipeline.base_url)
    await allow(client, app, page.url)
    options = {"url": f"{pipeline.base_url}/api/ingest/{app.app_id}", "key": await ingest_key(client, app)}
    # 3 batches of 10, one in flight at a time: when the page closes, some are still unsent (a
    # fast gateway may have acknowledged the first already).
    ids = await page.evaluate(TRACK, [{**options, "batchSize": 10, "flushIntervalMs": 60_000}, 30])
    assert await page.evaluate("vdip.pending()") >= 10
    await page.close(run_before_unload=True)
    await stored_once(pool, app.app_id, ids)


async def test_the_snippet_waits_for_retry_after_and_resends_the_same_ids(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    app: AppKey,
    browser: Browser,
    web_site: WebSite,
    log_dir: Path,
) -> None:
    own = pipeline.settings.model_copy(update={"gateway_port": _free_port()})
    await set_quota(pool, app.app_id, 20, 20)  # 20 events a second, 20 at once
    gateway = Process("gateway", own, log_dir, label="snippet-429-gateway")
    base_url = await start_gateway(gateway)
    try:
        page = await open_page(browser, web_site, base_url)
        await allow(client, app, page.url)
        options = {"url": f"{base_url}/api/ingest/{app.app_id}", "key": await ingest_key(client, app)}
        ids = await page.evaluate(TRACK, [{**options, "batchSize": 20, "flushIntervalMs": 50}, 100])
        await wait_until(
            lambda: page.evaluate("vdip.pending() === 0"), 60, message="the page sent everything"
        )
        await stored_once(pool, app.app_id, ids)
        assert '/batch HTTP/1.1\\" 429' in gateway.log_path.read_text()
    finally:
        gateway.stop()
