"""The README's runnable examples run, against the real stack: examples/ and the blocks marked
``<!-- example: NAME -->`` (curl, Python, browser, Kafka, consume)."""

import asyncio
import os
import re
import sys
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser

from tests.conftest import ROOT, AppKey, Pipeline, wait_until
from tests.integration.conftest import WebSite
from tests.integration.test_cors import allow, ingest_key

EXAMPLE_ENV = {**os.environ, "PYTHONPATH": str(ROOT / "clients" / "python")}  # vdip_client, even uninstalled


async def test_queue_consumer_example_prints_the_routed_events(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    queue = f"example-{uuid.uuid4().hex[:8]}"
    rule: dict[str, Any] = {
        "app_id": app.app_id,
        "rule_name": "to the example",
        "condition": {"plan": "pro"},
        "destination_type": "queue",
        "destination_config": {"topic": queue},
    }
    assert (await client.post("/api/routing-rules", json=rule, headers=app.headers)).status_code == 201
    await asyncio.sleep(2)
    for plan in ("free", "pro"):
        await client.post(
            f"/api/ingest/{app.app_id}",
            json={"event_type": "signup", "payload": {"plan": plan}},
            headers=app.headers,
        )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "queue_consumer.py"),
        pipeline.settings.topic(queue),
        "--bootstrap",
        pipeline.settings.kafka_bootstrap,
        "--group",
        f"example-{uuid.uuid4().hex[:6]}",
        "--limit",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=EXAMPLE_ENV,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, output.decode()
    assert b"signup" in output and b"'plan': 'pro'" in output and b"free" not in output


def readme_example(name: str, replacements: list[tuple[str, str]]) -> str:
    """The README's code block marked ``<!-- example: name -->``, with the test stack's values."""
    found = re.search(rf"<!-- example: {name} -->\n```\w+\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert found, f"no example {name} in README.md"
    code = found[1]
    for old, new in replacements:
        assert old in code, f"{old!r} is not in the example {name}"
        code = code.replace(old, new)
    return code


async def stored_count(pool: asyncpg.Pool, app_id: str, count: int) -> None:
    async def arrived() -> bool:
        found = await pool.fetchval("SELECT count(*) FROM data_events WHERE app_id = $1", app_id)
        return bool(found == count)

    await wait_until(arrived, 60, message=f"{count} events of {app_id} stored")


async def run(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=EXAMPLE_ENV
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, output.decode()
    return output.decode()


@pytest.mark.parametrize("name", ["curl", "python"])
async def test_the_readmes_send_examples_send_events(
    name: str, pipeline: Pipeline, client: httpx.AsyncClient, pool: asyncpg.Pool, app: AppKey
) -> None:
    code = readme_example(name, http_replacements(pipeline, app, await ingest_key(client, app)))
    await run(*(["bash", "-euc", code] if name == "curl" else [sys.executable, "-c", code]))
    await stored_count(pool, app.app_id, 2)


async def test_the_readmes_browser_example_sends_events(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    app: AppKey,
    browser: Browser,
    web_site: WebSite,
) -> None:
    html = readme_example("browser", http_replacements(pipeline, app, await ingest_key(client, app)))
    origin = web_site(html)
    await allow(client, app, origin)
    page = await browser.new_page()
    await page.goto(origin)
    await stored_count(pool, app.app_id, 2)


async def test_the_readmes_kafka_example_sends_an_event(
    pipeline: Pipeline, pool: asyncpg.Pool, app: AppKey
) -> None:
    settings = pipeline.settings
    code = readme_example(
        "kafka",
        [
            ("127.0.0.1:9092", settings.kafka_bootstrap),
            ('"events"', f'"{settings.topic("events")}"'),
            ('"app_id": "demo"', f'"app_id": "{app.app_id}"'),
            ('key=b"demo"', f'key=b"{app.app_id}"'),
        ],
    )
    await run(sys.executable, "-c", code)
    await stored_count(pool, app.app_id, 1)


async def test_the_readmes_consume_example_prints_a_delivery(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    queue = f"readme-{uuid.uuid4().hex[:8]}"
    rule: dict[str, Any] = {
        "app_id": app.app_id,
        "rule_name": "to the readme",
        "condition": {"plan": "pro"},
        "destination_type": "queue",
        "destination_config": {"topic": queue},
    }
    assert (await client.post("/api/routing-rules", json=rule, headers=app.headers)).status_code == 201
    await asyncio.sleep(2)
    event = {"event_type": "signup", "payload": {"plan": "pro"}}
    assert (
        await client.post(f"/api/ingest/{app.app_id}", json=event, headers=app.headers)
    ).status_code == 202
    settings = pipeline.settings
    code = readme_example(
        "consume",
        [
            ("127.0.0.1:9092", settings.kafka_bootstrap),
            ('"big-orders"', f'"{settings.topic(queue)}"'),
            ('"my-service"', f'"readme-{uuid.uuid4().hex[:6]}"'),
            ("dedupe=MemoryDedupe())", "dedupe=MemoryDedupe(), limit=1)"),  # else it runs on
        ],
    )
    output = await run(sys.executable, "-c", code)
    assert "signup {'plan': 'pro'}" in output


def http_replacements(pipeline: Pipeline, app: AppKey, key: str) -> list[tuple[str, str]]:
    return [
        ("/api/ingest/demo", f"/api/ingest/{app.app_id}"),
        ("http://127.0.0.1:8000", pipeline.base_url),
        ("YOUR_INGEST_KEY", key),
    ]
