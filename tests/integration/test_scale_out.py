"""Scale-out: two of each process share the work; when one of each dies, the others take over.

A second gateway, worker, bulk worker, event store sink, table sink and webhook dispatcher join the test
pipeline's (same consumer groups, their own ports). Under the fault suite's load, sent to both
gateways round-robin, every consumer group has two members; then one of each process is killed
with SIGKILL. The survivors must carry on: for each partition (one application per partition),
the first event accepted after the kill is stored, and its table and webhook deliveries done,
within 15 s; and afterwards every destination of every event is what a single-process run gives
(``tests.test_faults.check``: routing is deterministic, so the expected sets are the same).
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from tests.conftest import Pipeline, Process, _free_port, start_gateway, wait_until
from tests.integration.test_faults import check, load_setup, under_load
from vdip.settings import Settings

TAKEOVER_S = 15


async def members(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    return len(response.to_object()["groups"][0]["members"])


@asynccontextmanager
async def twins(pipeline: Pipeline, log_dir: Path) -> AsyncIterator[list[Process]]:
    """A second process of each kind, in the same groups, started and stopped at the end."""
    own = pipeline.settings.model_copy(
        update={
            "gateway_port": _free_port(),
            "worker_metrics_port": _free_port(),
            "bulk_worker_metrics_port": _free_port(),
            "sink_metrics_port": _free_port(),
            "table_sink_metrics_port": _free_port(),
            "webhooks_metrics_port": _free_port(),
            "worker_datadir": log_dir / "twin-worker",
        }
    )
    batch = {"VDIP_SINK_BATCH_SIZE": "100"}
    found = [
        Process("worker", own, log_dir, label="twin-worker"),
        Process("bulk-worker", own, log_dir, label="twin-bulk-worker"),
        Process("sink", own, log_dir, batch, label="twin-sink"),
        Process("table-sink", own, log_dir, batch, label="twin-table-sink"),
        Process("webhooks", own, log_dir, label="twin-webhooks"),
        Process("gateway", own, log_dir, label="twin-gateway"),
    ]
    try:
        for process in found[:-1]:
            process.start()
        await start_gateway(found[-1])
        yield found
    finally:
        for process in found:
            process.stop()


def groups(settings: Settings) -> list[str]:
    return [
        settings.worker_id,
        settings.bulk_worker_id,
        settings.sink_group_id,
        settings.table_sink_group_id,
        settings.webhook_group_id,
    ]


async def test_two_of_each_process_share_the_work_and_the_survivors_take_over(
    pipeline: Pipeline, pool: asyncpg.Pool, log_dir: Path
) -> None:
    settings = pipeline.settings
    async with twins(pipeline, log_dir) as second, load_setup(pipeline, pool) as setup:

        async def two_of_each() -> bool:
            return all([await members(settings.kafka_bootstrap, g) == 2 for g in groups(settings)])

        await wait_until(two_of_each, 60, interval=1, message="two members in every consumer group")
        killed_at = datetime.now(UTC)

        async def faults() -> None:
            nonlocal killed_at
            await asyncio.sleep(3)  # both of each at work
            for process in second:
                process.kill()
            killed_at = datetime.now(UTC)
            await asyncio.sleep(TAKEOVER_S + 2)

        gateways = [pipeline.base_url, f"http://127.0.0.1:{second[-1].settings.gateway_port}"]
        load = await under_load(setup, faults, gateways)
        await check(setup, load, "two of each, one of each killed")
        assert all([await members(settings.kafka_bootstrap, g) == 1 for g in groups(settings)])

    # Every partition went on within TAKEOVER_S of the kill: per application (one per partition),
    # the first event received after it was stored, and its table and webhook deliveries done.
    rows = await pool.fetch(
        """SELECT e.app_id, min(e.stored_at) AS stored,
                  min(d.delivered_at) FILTER (WHERE d.destination_type = 'database_table') AS tabled,
                  min(d.delivered_at) FILTER (WHERE d.destination_type = 'webhook') AS hooked
           FROM data_events e LEFT JOIN deliveries d USING (app_id, event_id)
           WHERE e.app_id = ANY($1) AND e.received_at > $2 GROUP BY e.app_id""",
        setup.app_ids,
        killed_at,
    )
    assert len(rows) == 3
    limit = killed_at + timedelta(seconds=TAKEOVER_S)
    late = {r["app_id"]: r for r in rows if max(r["stored"], r["tabled"], r["hooked"]) > limit}
    taken_over = max(max(r["stored"], r["tabled"], r["hooked"]) for r in rows) - killed_at
    seconds = taken_over.total_seconds()
    for r in rows:
        delays = [f"{(r[k] - killed_at).total_seconds():.1f}" for k in ("stored", "tabled", "hooked")]
        print(f"{r['app_id']}: stored, tabled, hooked after {' / '.join(delays)} s")
    print(f"survivors took over: every partition stored and delivered again {seconds:.1f} s after the kill")
    assert not late, f"not taken over within {TAKEOVER_S} s: {late}"
