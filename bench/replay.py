"""Benchmark: live traffic's latency while a replay runs, end to end.

Needs the local stack (`vdip stack up`). Starts the whole pipeline as `bench.pipeline` does (a
database, topics and groups of its own; the replay runs in the event store's process, no more
than `VDIP_REPLAY_EVENTS_PER_S`, 500 by default) and two applications:

- *live* (a queue rule and a table rule) sends `--live-rate` single events per second;
- *history* (the same two rules) has `--history` events stored already (written straight into
  `data_events`, as a replay finds them).

In each round, for `--seconds`:

- **alone**: live sends, nothing else (the baseline);
- **replay**: the same, while a replay of all of history's events (`force`: every delivery sent
  again, two per event) runs at the default pace; it is cancelled when the phase ends;
- **replay, unthrottled** (the baseline: a replay without the throttle): the same with the
  replay's `events_per_s` at 1,000,000.

For each phase: live's accept -> stored latency (p50, p99, max), and in the replay phase the
replay's pace (events/s) and the deliveries it sent. Every accepted live event must be stored:
the script names any that is not and exits 1.

Run: .venv/bin/python -m bench.replay [--rounds 3] [--seconds 20]
"""

import argparse
import asyncio
import statistics
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import httpx

from bench.common import Processes, exit_code
from bench.fairness import latencies, quantile, send_quiet
from bench.pipeline import Run, check_alive, own_pipeline, wait_rules_applied, wait_stored

STORED = "SELECT event_id::text FROM data_events WHERE app_id = 'live' AND event_type = $1"


@dataclass
class Phase:
    name: str
    live: Run
    latencies: list[float] = field(default_factory=list)  # seconds
    replay_pace: float | None = None  # events/s
    replay_sent: int = 0


async def store_history(pool: asyncpg.Pool, count: int) -> None:
    """``count`` events of *history*, received over the last hour, written as the event store would."""
    for first in range(0, count, 500):  # a batch per transaction, as the event store writes them
        await pool.execute(
            """INSERT INTO data_events (event_id, app_id, event_type, payload, metadata, received_at,
                                    schema_version, status, routing)
           SELECT gen_random_uuid(), 'history', 'order', jsonb_build_object('n', n), '{}',
                  now() - make_interval(secs => 3600.0 * n / $1), 1, 'processed', '{}'
           FROM generate_series($2::int, least($1, $2 + 500) - 1) AS n""",
            count,
            first,
        )


async def bench(args: argparse.Namespace, processes: Processes) -> int:
    phases: list[Phase] = []
    lost: list[str] = []
    async with own_pipeline("replay", processes, args.logs, ingest_capacity_events_per_s=1_000_000) as own:
        settings, pool, base_url, admin = own.settings, own.pool, own.base_url, own.admin
        print(f"replays at {settings.replay_events_per_s:.0f} events/s at most", flush=True)
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=60) as http,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
            ) as posting,
        ):
            keys = {}
            for app_id in ("live", "history"):
                keys[app_id] = await own.create_application(http, app_id)
                for kind, config in (
                    ("queue", {"topic": f"{app_id}.q"}),
                    ("database_table", {"table": app_id}),
                ):
                    rule = {
                        "app_id": app_id,
                        "rule_name": kind,
                        "destination_type": kind,
                        "destination_config": config,
                    }
                    answer = await http.post("/api/routing-rules", json=rule, headers=admin)
                    assert answer.status_code == 201, answer.text
                    newest = datetime.fromisoformat(answer.json()["data"]["updated_at"]).timestamp()
                await wait_rules_applied(settings, app_id, newest, processes)
            await store_history(pool, args.history)
            warm = Run("warm-up", "warm", None)
            await send_quiet(posting, base_url, "live", keys["live"], warm, 10, 2)
            await wait_stored(pool, "live", warm, cap=120, stall=120, processes=processes)
            span = {
                "start": (datetime.now(UTC) - timedelta(hours=2)).isoformat(),
                "end": datetime.now(UTC).isoformat(),
                "force": True,
            }
            for round_ in range(1, args.rounds + 1):
                for phase_name in ("alone", "replay", "replay, unthrottled"):
                    tag = phase_name.replace(", ", "_")
                    live = Run(phase_name, f"live_r{round_}_{tag}", args.live_rate)
                    phase = Phase(phase_name, live)
                    job_url = None
                    if phase_name != "alone":
                        pace = {"events_per_s": 1_000_000} if phase_name.endswith("unthrottled") else {}
                        body = {**span, **pace}
                        made = await http.post("/api/applications/history/replay", json=body, headers=admin)
                        assert made.status_code == 202, made.text
                        job_url = f"/api/applications/history/replays/{made.json()['data']['job_id']}"
                    await send_quiet(
                        posting, base_url, "live", keys["live"], live, args.live_rate, args.seconds
                    )
                    if job_url is not None:
                        job = (await http.get(job_url, headers=admin)).json()["data"]
                        await http.post(f"{job_url}/cancel", headers=admin)
                        started = datetime.fromisoformat(job["started_at"])
                        elapsed = (datetime.fromisoformat(job["updated_at"]) - started).total_seconds()
                        phase.replay_pace = job["scanned"] / elapsed if elapsed > 0 else None
                        phase.replay_sent = job["sent"]
                    await wait_stored(pool, "live", live, args.drain_timeout, 60, processes)
                    stored = {r[0] for r in await pool.fetch(STORED, live.event_type)}
                    lost += [e for e in live.acked if e not in stored]
                    phase.latencies, _ = await latencies(pool, "live", live.event_type)
                    phases.append(phase)
                    print(f"round {round_}: {describe(phase)}", flush=True)
                    check_alive(processes)
    report(phases)
    return exit_code(lost)


def describe(phase: Phase) -> str:
    lat = [s * 1000 for s in phase.latencies]
    text = (
        f"{phase.name}: live p50 {quantile(lat, 0.5):.0f} ms, p99 {quantile(lat, 0.99):.0f} ms,"
        f" max {max(lat, default=0):.0f} ms ({len(lat)} events)"
    )
    if phase.replay_pace is not None:
        text += f"; the replay went through {phase.replay_pace:.0f} events/s, sent {phase.replay_sent}"
    return text


def report(phases: list[Phase]) -> None:
    print("\nmedians over the rounds:")
    print(f"  {'phase':20} {'live p50 ms':>11} {'live p99 ms':>11} {'replay events/s':>15}")
    for name in dict.fromkeys(p.name for p in phases):
        same = [p for p in phases if p.name == name]
        p50 = statistics.median(quantile(p.latencies, 0.5) for p in same) * 1000
        p99 = statistics.median(quantile(p.latencies, 0.99) for p in same) * 1000
        paces = [p.replay_pace for p in same if p.replay_pace is not None]
        pace = f"{statistics.median(paces):.0f}" if paces else "-"
        print(f"  {name:20} {p50:11.0f} {p99:11.0f} {pace:>15}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20, help="length of each phase")
    parser.add_argument("--live-rate", type=float, default=50, help="live's single events per second")
    parser.add_argument(
        "--history",
        type=int,
        default=200_000,
        help="history's stored events (enough for an unthrottled phase)",
    )
    parser.add_argument("--drain-timeout", type=float, default=120)
    parser.add_argument("--logs", type=Path, default=Path("/tmp/vdip-bench-logs"))
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    processes = Processes()
    try:
        code = asyncio.run(bench(args, processes))
    finally:
        processes.stop_all()
    sys.exit(code)


if __name__ == "__main__":
    main()
