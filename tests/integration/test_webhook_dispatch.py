"""The webhook dispatcher at the endpoint's pace: per-destination limits, two dispatchers."""

import asyncio
import subprocess
import time
from pathlib import Path

import asyncpg
import httpx

from tests.conftest import AppKey, Pipeline, Process, _free_port, wait_until
from tests.integration.test_rules import send
from tests.integration.test_scale_out import members
from tests.integration.test_webhooks import Received, receiving, webhook_rule


async def delivered(pool: asyncpg.Pool, rule_id: int) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE rule_id = $1 AND status = 'delivered'", rule_id
    )
    return count


async def test_max_in_flight_and_max_per_second_are_kept(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool
) -> None:
    """A rule's max_in_flight (6, above the default 4) is reached and never exceeded; a rule's
    max_per_second (5) spaces its requests out."""
    open_now, most = 0, 0

    async def slow(_: Received) -> tuple[int, dict[str, str]]:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        await asyncio.sleep(0.3)
        open_now -= 1
        return 204, {}

    async def fast(_: Received) -> tuple[int, dict[str, str]]:
        return 204, {}

    async with receiving(slow) as wide, receiving(fast) as paced:
        rule = await webhook_rule(pipeline, client, app, wide.url("/wide"), {"max_in_flight": 6})
        paced_rule = await webhook_rule(pipeline, client, app, paced.url("/paced"), {"max_per_second": 5})
        assert rule["destination_config"]["max_in_flight"] == 6
        for total in range(30):
            await send(client, app, total)

        async def all_delivered() -> bool:
            return (
                await delivered(pool, rule["rule_id"]) == await delivered(pool, paced_rule["rule_id"]) == 30
            )

        await wait_until(all_delivered, 60, message="30 deliveries to each endpoint")
    assert most == 6, most
    times = sorted(r.at for r in paced.requests)
    assert len(times) == 30
    # At most one second's worth (5) at once, then 5 a second: 25 more take about 5 s.
    assert times[-1] - times[0] >= 4.0, times[-1] - times[0]


async def test_two_dispatchers_share_deliveries_and_lose_none_when_one_is_killed(
    pipeline: Pipeline, client: httpx.AsyncClient, app: AppKey, pool: asyncpg.Pool, log_dir: Path
) -> None:
    """A second dispatcher joins the intake's group (lease 8 s). Both send; it is killed with
    requests open; every delivery still reaches the receiver and is delivered, none is ever
    sent twice at the same time, and only those open at the kill are sent again."""
    open_ids: set[str] = set()
    overlapping: list[str] = []

    async def reply(request: Received) -> tuple[int, dict[str, str]]:
        webhook_id = request.headers["webhook-id"]
        if webhook_id in open_ids:
            overlapping.append(webhook_id)
        open_ids.add(webhook_id)
        try:
            await asyncio.sleep(0.1)
        finally:
            open_ids.discard(webhook_id)
        return 204, {}

    twin_settings = pipeline.settings.model_copy(update={"webhooks_metrics_port": _free_port()})
    twin = Process(
        "webhooks",
        twin_settings,
        log_dir,
        # At DEBUG, it logs each delivery it made.
        {"VDIP_WEBHOOK_TIMEOUT_S": "3", "VDIP_WEBHOOK_LEASE_S": "8", "VDIP_LOG_LEVEL": "DEBUG"},
        label="twin-webhooks-dispatch",
    )
    twin_log = log_dir / "twin-webhooks-dispatch.log"
    before = twin_log.read_text().count("delivered after attempt") if twin_log.exists() else 0
    twin.start()
    try:
        settings = pipeline.settings

        async def two_members() -> bool:
            return await members(settings.kafka_bootstrap, settings.webhook_group_id) == 2

        await wait_until(two_members, 60, message="two dispatchers in the intake's group")
        async with receiving(reply) as receiver:
            rule = await webhook_rule(pipeline, client, app, receiver.url("/twins"), {"max_in_flight": 8})
            sent = 300
            for start in range(0, sent, 100):  # all at once: more than one dispatcher sends at a time
                events = [{"event_type": "twins", "payload": {"n": n}} for n in range(start, start + 100)]
                answer = await client.post(
                    f"/api/ingest/{app.app_id}/batch", json={"events": events}, headers=app.headers
                )
                assert answer.status_code == 202, answer.text

            def twin_delivered() -> int:
                return twin_log.read_text().count("delivered after attempt") - before

            async def twin_is_sending() -> bool:
                return twin_delivered() >= 20

            await wait_until(twin_is_sending, 60, message="the second dispatcher delivering")
            twin.kill()
            killed_at = time.monotonic()

            async def all_delivered() -> bool:
                return await delivered(pool, rule["rule_id"]) == sent

            await wait_until(all_delivered, 90, message="every delivery delivered after the kill")
        ids = [r.headers["webhook-id"] for r in receiver.requests]
        recorded = {
            str(row["delivery_id"])
            for row in await pool.fetch(
                "SELECT delivery_id FROM deliveries WHERE rule_id = $1", rule["rule_id"]
            )
        }
        assert len(recorded) == sent and set(ids) == recorded, "every delivery reached the receiver"
        assert overlapping == [], "a delivery was sent twice at the same time"
        again = {i for i in ids if ids.count(i) > 1}
        assert len(again) <= 8, "only what the killed dispatcher had open (8 at most) is sent again"
        for webhook_id in again:
            first, second = [r.at for r in receiver.requests if r.headers["webhook-id"] == webhook_id][:2]
            assert second - first >= 7 and second >= killed_at, "sent again only once its lease ran out"
    finally:
        twin.kill()


async def test_the_process_exits_when_its_intake_ends(pipeline: Pipeline, log_dir: Path) -> None:
    """An intake that cannot reach Kafka ends at once while the dispatch loop could go on: the
    process does not stay half alive (sending, recording nothing new) but exits with the error."""
    unreachable = pipeline.settings.model_copy(
        update={"kafka_bootstrap": f"127.0.0.1:{_free_port()}", "webhooks_metrics_port": 0}
    )
    lone = Process("webhooks", unreachable, log_dir, label="webhooks-without-kafka")
    lone.start()
    try:
        assert lone.proc is not None
        try:
            code = await asyncio.to_thread(lone.proc.wait, 60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running 60 s later:\n{lone.log_tail()}") from None
        assert code != 0, lone.log_tail()
        assert "the webhook intake ended on its own" in lone.log_path.read_text(), lone.log_tail()
    finally:
        lone.kill()
