"""Structured logs: every process writes JSON lines; one event is followed by its ids."""

import io
import logging
import subprocess
import sys
from typing import Any

import httpx
import orjson

from streams.app import create_app, lane_of, new_worker
from tests.conftest import ROOT, AppKey, Pipeline, Process, _free_port, wait_until
from tests.integration.test_webhooks import Received, receiving, settled, webhook_rule
from vdip.logs import logging_config
from vdip.settings import Settings


def json_lines(pipeline: Pipeline, name: str) -> list[dict[str, Any]]:
    """Every line the process wrote, each a JSON object (a line that is not fails the test)."""
    process = getattr(pipeline, name)
    parsed = []
    for number, line in enumerate(process.log_path.read_bytes().splitlines(), 1):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise AssertionError(f"{process.log_path}:{number} is not JSON: {line[:300]!r}") from None
        assert isinstance(record, dict), f"{process.log_path}:{number} is not a JSON object"
        parsed.append(record)
    return parsed


async def test_an_event_is_followed_from_its_request_to_its_webhook(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    async def fails_once(_: Received) -> tuple[int, dict[str, str]]:
        return (503, {}) if len(receiver.requests) == 1 else (204, {})

    async with receiving(fails_once) as receiver:  # a failed attempt is logged at INFO, a success at DEBUG
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

    await wait_until(lambda: bool(mentions("webhooks")), 10, message="the dispatcher logged the failure")
    (accepted,) = mentions("gateway")
    assert accepted["correlation_id"] == "trace-logs-1" and accepted["process"] == "gateway"
    assert accepted["level"] == "INFO" and "accepted event" in accepted["message"] and accepted["time"]
    assert all(line["correlation_id"] == "trace-logs-1" for line in mentions("webhooks"))
    for name in ("worker", "bulk_worker", "sink", "table_sink"):
        assert json_lines(pipeline, name), f"{name} wrote no JSON log line"


def test_the_worker_at_warning_builds_no_debug_records(settings: Settings) -> None:
    """faust's terminal spinner would set the root logger to DEBUG at WARNING and above, so that
    every library's debug line (aiokafka logs one per produced record) is built and then dropped."""
    worker = new_worker(create_app(settings, lane_of(settings)), logging_config("WARNING", False, "worker"))
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        worker.on_setup_root_logger(root, logging.WARNING)
        assert not logging.getLogger("aiokafka.producer.producer").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


async def test_a_worker_that_cannot_reach_kafka_writes_json_lines(pipeline: Pipeline) -> None:
    """Before faust takes over, the worker waits for Kafka; what it and aiokafka say meanwhile is
    JSON too (not Python's bare last-resort lines)."""
    settings = pipeline.settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{_free_port()}"})
    worker = Process(
        "worker", settings, pipeline.worker.log_path.parent, label=f"worker-no-kafka-{_free_port()}"
    )
    worker.start()
    try:

        def said_so() -> bool:
            return "Kafka unavailable" in worker.log_path.read_text()

        await wait_until(said_so, 30, message="the worker said it waits for Kafka")
    finally:
        worker.kill()
    lines = json_lines(Pipeline(settings, worker, worker, worker, worker, worker, worker), "worker")
    assert any(line["level"] == "WARNING" and "Kafka unavailable" in line["message"] for line in lines)


def test_warnings_and_uncaught_exceptions_are_json_lines() -> None:
    """A library's warning and an exception nothing caught, in a process logging JSON."""
    code = (
        "import warnings; from vdip.logs import configure; configure('INFO', False, 'probe');"
        " warnings.warn('careful', DeprecationWarning, stacklevel=1); raise RuntimeError('boom')"
    )
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 1
    lines = [orjson.loads(line) for line in result.stderr.splitlines()]  # each one JSON, or this fails
    assert [(line["level"], line["process"]) for line in lines] == [
        ("WARNING", "probe"),
        ("CRITICAL", "probe"),
    ]
    assert "careful" in lines[0]["message"] and "RuntimeError: boom" in lines[1]["exc_info"]


def test_the_worker_prints_no_bare_lines_of_its_own(settings: Settings) -> None:
    worker = new_worker(create_app(settings, lane_of(settings)), logging_config("INFO", False, "worker"))
    worker.stdout = worker.stderr = console = io.StringIO()  # where faust prints, bypassing logging
    worker.say("")  # what faust prints when it stops at once
    worker.carp("-INT- -INT- -INT- -INT- -INT- -INT-")  # and on SIGINT
    assert console.getvalue() == ""
