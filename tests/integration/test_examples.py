"""The README's runnable examples run, against the real stack."""

import asyncio
import os
import sys
import uuid
from typing import Any

import httpx

from tests.conftest import ROOT, AppKey, Pipeline

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
