"""README promises that no other test holds the system to, each against the running pipeline."""

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import standardwebhooks
from aiokafka.admin import AIOKafkaAdminClient

from tests.conftest import AppKey, Pipeline, Process, Services, another_gateway, needs_local_stack, wait_until
from tests.integration.test_rules import rule_body, send
from tests.integration.test_webhooks import Received, deliveries, ok, receiving, settled, webhook_rule
from vdip.settings import Settings
from vdip.statistics import STEP, Period, bucket_start


async def test_queue_topics_are_created_with_3_partitions(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, settings: Settings
) -> None:
    name = f"three-{uuid.uuid4().hex[:8]}"
    body = rule_body(app, destination_type="queue", destination_config={"topic": name}, condition={})
    assert (await client.post("/api/routing-rules", json=body, headers=app.headers)).status_code == 201
    event_id = await send(client, app, 1)
    await settled(client, app, event_id)  # delivered: the topic exists
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([settings.topic(name)])
    finally:
        await admin.close()
    assert len(described["partitions"]) == 3


async def test_redeliver_answers_409_for_queue_table_and_pending_deliveries(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey
) -> None:
    release = asyncio.Event()

    async def hang(_: Received) -> tuple[int, dict[str, str]]:
        await release.wait()  # the webhook delivery stays pending while its attempt is open
        return 200, {}

    async with receiving(hang) as receiver:
        table = f"t_{uuid.uuid4().hex[:8]}"
        for kind, config in (("database_table", {"table": table}), ("queue", {"topic": f"q-{table}"})):
            body = rule_body(app, destination_type=kind, destination_config=config, condition={})
            assert (
                await client.post("/api/routing-rules", json=body, headers=app.headers)
            ).status_code == 201
        await webhook_rule(pipeline, client, app, receiver.url("/hook"))
        event_id = await send(client, app, 1)

        async def three_recorded() -> bool:
            found = await deliveries(client, app, event_id)
            kinds = {d["destination_type"]: d["status"] for d in found}
            return (
                kinds.get("queue") == "delivered"
                and kinds.get("database_table") == "delivered"
                and (kinds.get("webhook") == "pending" and len(receiver.to("/hook")) == 1)
            )

        await wait_until(three_recorded, 30, message="queue and table delivered, the webhook in flight")
        for delivery in await deliveries(client, app, event_id):
            answer = await client.post(
                f"/api/events/{event_id}/deliveries/{delivery['delivery_id']}/redeliver", headers=app.headers
            )
            assert answer.status_code == 409, (delivery, answer.text)
            (detail,) = answer.json()["errors"]
            assert detail["field"] == "path.delivery_id"
        release.set()
        await settled(client, app, event_id, count=3)


async def test_statistics_default_ranges(client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool) -> None:
    """Without start_date/end_date: the last 24 hours (hourly), 30 days (daily), 12 weeks (weekly),
    in whole buckets."""
    now = datetime.now(UTC)
    spans: dict[Period, timedelta] = {
        "hourly": timedelta(hours=24),
        "daily": timedelta(days=30),
        "weekly": timedelta(weeks=12),
    }
    inside, outside = {}, {}
    for period, span in spans.items():
        inside[period] = bucket_start(now - span, period)  # holds the range's start: partly in range
        outside[period] = inside[period] - STEP[period]  # wholly before it
        for bucket, event_type in ((inside[period], "in"), (outside[period], "out")):
            await pool.execute(
                """INSERT INTO event_statistics (app_id, event_type, time_period, time_bucket, total_events,
                       processed_events, failed_events, pending_events, updated_at)
                   VALUES ($1, $2, $3, $4, 1, 1, 0, 0, now())""",
                app.app_id,
                event_type,
                period,
                bucket,
            )
    for period in spans:
        answer = await client.get(
            f"/api/statistics/{app.app_id}", params={"time_period": period}, headers=app.headers
        )
        assert answer.status_code == 200, answer.text
        found = {(b["event_type"], datetime.fromisoformat(b["time_bucket"])) for b in answer.json()["data"]}
        assert found == {("in", inside[period])}, period
        dashboard = await client.get(
            f"/api/statistics/dashboard/{app.app_id}", params={"time_period": period}, headers=app.headers
        )
        assert dashboard.status_code == 200, dashboard.text
        data = dashboard.json()["data"]
        assert datetime.fromisoformat(data["start"]) == inside[period], period
        assert data["totals"]["total_events"] == 1


async def test_an_application_changed_through_another_gateway_applies_within_the_cache_ttl(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    app: AppKey,
    admin: dict[str, str],
    settings: Settings,
    log_dir: Path,
) -> None:
    ttl = settings.app_cache_ttl_s
    body = {"event_type": "t", "payload": {}}
    url = f"/api/ingest/{app.app_id}"

    async def answers(status: int, headers: dict[str, str]) -> None:
        changed = time.monotonic()

        async def answered() -> bool:
            return (await client.post(url, json=body, headers=headers)).status_code == status

        await wait_until(answered, ttl + 3, interval=0.1, message=f"{status} here")
        assert time.monotonic() - changed <= ttl + 1.5

    async with (
        another_gateway(settings, log_dir, "gateway-elsewhere") as elsewhere,
        httpx.AsyncClient(base_url=elsewhere, timeout=30) as there,
    ):
        assert (await client.post(url, json=body, headers=app.headers)).status_code == 202  # cached here
        rotated = await there.post(f"/api/applications/{app.app_id}/rotate-key", headers=app.headers)
        assert rotated.status_code == 200, rotated.text
        await answers(202, {"X-API-Key": rotated.json()["data"]["api_key"]})  # the new key, here too
        disabled = await there.post(f"/api/applications/{app.app_id}/disable", headers=admin)
        assert disabled.status_code == 200, disabled.text
        await answers(403, app.headers)  # disabled here too


async def test_metrics_port_0_serves_no_metrics_and_the_process_works(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, settings: Settings, log_dir: Path
) -> None:
    """A second event store with VDIP_SINK_METRICS_PORT=0, in a consumer group of its own: it
    stores what it consumes and listens on no port."""
    group = f"{settings.sink_group_id}-quiet-{uuid.uuid4().hex[:6]}"
    env = {"VDIP_SINK_METRICS_PORT": "0", "VDIP_SINK_GROUP_ID": group}
    quiet = Process("sink", settings, log_dir, env, label="quiet-sink")
    quiet.start()
    try:
        assert quiet.proc is not None
        consumed_by_it = await _group_consumed(settings, group, await send(client, app, 1))
        assert consumed_by_it, quiet.log_tail()
        assert quiet.alive()
        assert _listening_ports(quiet.proc.pid) == set(), "no port opened"
    finally:
        quiet.stop()


async def _group_consumed(settings: Settings, group: str, event_id: str) -> bool:
    """Whether ``group`` committed offsets on events.routed (it wrote a batch), within 60 s."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:

        async def committed() -> bool:
            offsets: dict[Any, Any] = await admin.list_consumer_group_offsets(group)
            return any(o.offset > 0 for o in offsets.values())

        await wait_until(committed, 60, message=f"{group} committed after {event_id}")
        return True
    finally:
        await admin.close()


def _listening_ports(pid: int) -> set[int]:
    """The TCP ports ``pid`` listens on (from /proc: its sockets, matched with /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        if str(target).startswith("socket:["):
            inodes.add(str(target)[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def test_the_previous_signature_ends_after_the_grace_period(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, settings: Settings, log_dir: Path
) -> None:
    """A gateway whose VDIP_WEBHOOK_SECRET_GRACE_S is 4 s rotates the secret: deliveries carry both
    signatures, then, once 4 s have passed, the new one only."""
    grace = 4.0
    short_grace = {"VDIP_WEBHOOK_SECRET_GRACE_S": str(grace)}
    async with another_gateway(settings, log_dir, "gateway-short-grace", short_grace) as elsewhere:
        async with receiving(ok) as receiver:
            rule = await webhook_rule(pipeline, client, app, receiver.url("/grace"))
            async with httpx.AsyncClient(base_url=elsewhere, timeout=30) as there:
                rotated = await there.post(
                    f"/api/routing-rules/{rule['rule_id']}/rotate-secret", headers=app.headers
                )
            assert rotated.status_code == 200, rotated.text
            rotated_at = time.monotonic()
            new_secret = rotated.json()["data"]["webhook_secret"]
            during = await send(client, app, 1)
            await settled(client, app, during)
            assert time.monotonic() - rotated_at < grace, "delivered within the grace period"
            await asyncio.sleep(max(0.0, grace + 0.5 - (time.monotonic() - rotated_at)))
            after = await send(client, app, 2)
            await settled(client, app, after)
        first, second = receiver.requests
        assert len(first.headers["webhook-signature"].split(" ")) == 2
        for secret in (rule["webhook_secret"], new_secret):
            standardwebhooks.Webhook(secret).verify(first.body, first.headers)
        assert len(second.headers["webhook-signature"].split(" ")) == 1
        standardwebhooks.Webhook(new_secret).verify(second.body, second.headers)
        with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
            standardwebhooks.Webhook(rule["webhook_secret"]).verify(second.body, second.headers)


async def test_a_killed_dispatchers_delivery_is_sent_again_once_its_lease_ran_out(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, settings: Settings, log_dir: Path
) -> None:
    """A dispatcher (lease 8 s) is killed while its attempt is open; the restarted dispatcher
    sends the same delivery again once the lease ran out, not before, and it is delivered once."""
    lease = 8.0
    first_attempt = asyncio.Event()

    async def reply(request: Received) -> tuple[int, dict[str, str]]:
        if not first_attempt.is_set():
            first_attempt.set()
            await asyncio.sleep(60)  # the attempt the kill interrupts
        return 200, {}

    pipeline.webhooks.stop()
    short = Process(
        "webhooks",
        settings,
        log_dir,
        {"VDIP_WEBHOOK_TIMEOUT_S": "3", "VDIP_WEBHOOK_LEASE_S": str(lease)},
        label="webhooks-short-lease",
    )
    short.start()
    try:
        async with receiving(reply) as receiver:
            await webhook_rule(pipeline, client, app, receiver.url("/lease"))
            event_id = await send(client, app, 1)
            await asyncio.wait_for(first_attempt.wait(), 60)
            short.kill()
            killed_at = time.monotonic()
            pipeline.webhooks.start()
            (outcome,) = await settled(client, app, event_id)
        assert outcome["status"] == "delivered"
        first, second = receiver.requests
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == outcome["delivery_id"]
        assert second.at - first.at >= lease - 1, "not sent again while the lease held"
        assert second.at - killed_at <= lease + 10, "sent again soon after the lease ran out"
    finally:
        short.kill()
        if not pipeline.webhooks.alive():
            pipeline.webhooks.start()


def test_tests_that_need_the_local_stack_fail_in_ci_rather_than_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    on_containers = Services("kafka:9092", "postgresql://x@db/x", local_stack=False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="in CI they must run"):
        needs_local_stack(on_containers, "broker")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        needs_local_stack(on_containers, "broker")
    needs_local_stack(Services("k:9092", "postgresql://x@db/x", local_stack=True), "broker")  # runs
