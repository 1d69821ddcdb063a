"""Structured logs: every process writes JSON lines; one event is followed by its ids."""

import logging
from typing import Any

import httpx
import orjson

from streams.app import create_app, new_worker
from tests.conftest import AppKey, Pipeline, wait_until
from tests.test_webhooks import ok, receiving, settled, webhook_rule
from vdip.logs import logging_config
from vdip.settings import Settings


def json_lines(pipeline: Pipeline, name: str) -> list[dict[str, Any]]:
    process = getattr(pipeline, name)
    lines = [line for line in process.log_path.read_bytes().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        if not line.startswith(b"{"):  # a stray non-log line (e.g. faust's banner) is allowed, nothing else
            continue
        parsed.append(orjson.loads(line))
    assert len(parsed) >= 0.9 * len(lines), f"{name}: {len(lines) - len(parsed)} lines are not JSON"
    return parsed


async def test_an_event_is_followed_from_its_request_to_its_webhook(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    async with receiving(ok) as receiver:
        await webhook_rule(pipeline, client, app, receiver.url("/logs"))
        response = await client.post(
            f"/api/ingest/{app.app_id}",
            json={"event_type": "order", "payload": {}},
            headers={**app.headers, "X-Correlation-ID": "trace-logs-1"},
        )
        event_id = response.json()["data"]["event_id"]
        await settled(client, app, event_id)

    def mentions(name: str) -> list[dict[str, Any]]:
        return [line for line in json_lines(pipeline, name) if line.get("event_id") == event_id]

    await wait_until(lambda: bool(mentions("webhooks")), 10, message="the dispatcher logged the delivery")
    (accepted,) = mentions("gateway")
    assert accepted["correlation_id"] == "trace-logs-1" and accepted["process"] == "gateway"
    assert accepted["level"] == "INFO" and "accepted event" in accepted["message"] and accepted["time"]
    assert all(line["correlation_id"] == "trace-logs-1" for line in mentions("webhooks"))
    for name in ("worker", "sink", "table_sink"):
        assert json_lines(pipeline, name), f"{name} wrote no JSON log line"


def test_the_worker_at_warning_builds_no_debug_records(settings: Settings) -> None:
    """faust's terminal spinner would set the root logger to DEBUG at WARNING and above, so that
    every library's debug line (aiokafka logs one per produced record) is built and then dropped."""
    worker = new_worker(create_app(settings), logging_config("WARNING", False, "worker"))
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        worker.on_setup_root_logger(root, logging.WARNING)
        assert not logging.getLogger("aiokafka.producer.producer").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
