"""Benchmark: one application's flood and another application's latency, end to end.

Needs the local stack (`vdip stack up`). Starts the whole pipeline as `bench.pipeline` does (one
gateway, one worker, the sinks; a database, topics and groups of its own) with the default
quotas (`--capacity`, `--share`), and two applications: *quiet* (one queue rule) and *flood*
(the pipeline benchmark's ten rules). In each round:

- **alone**: quiet sends `--quiet-rate` single events per second for `--seconds`, nobody else;
- **flood**: the same, while flood's `--inflight` senders post batches of 100 back to back (a
  closed loop that ignores Retry-After: the gateway's full accept rate) under its default quota;
- **flood, no quota** (the baseline: the pipeline without quotas): the same with flood's quota
  lifted far above what the gateway accepts.

For each phase: quiet's accept → stored latency (p50, p99, max; stored_at - received_at of its
events), what flood got accepted per second and how many of its requests were answered 429, and
how long after the flood ended its last accepted event was stored (its backlog). Every accepted
event of either application must be stored: the script names any that is not and exits 1.

Run: .venv/bin/python -m bench.fairness [--rounds 2] [--seconds 20]
"""

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx

from bench.common import Processes, exit_code
from bench.pipeline import (
    Run,
    Sender,
    check_alive,
    create_rules,
    own_pipeline,
    wait_rules_applied,
    wait_stored,
)
from vdip.settings import Settings

QUIET_TOPIC = "bench.quiet"
STORED = "SELECT event_id::text FROM data_events WHERE app_id = $1 AND event_type = $2"
UNLIMITED = {"events_per_s": 10_000_000, "burst": 10_000_000}


@dataclass
class Phase:
    """One phase of a round: quiet's events, and what flood sent."""

    name: str
    quiet: Run
    flood: Run | None
    latencies: list[float] = field(default_factory=list)  # quiet's, seconds
    routing: list[float] = field(default_factory=list)  # of which accept -> routed
    flood_backlog_s: float | None = None  # last stored - end of the flood


async def send_quiet(
    http: aiohttp.ClientSession, base_url: str, app_id: str, key: str, run: Run, rate: float, seconds: float
) -> None:
    """Single events at ``rate`` per second, each on its own schedule (open loop)."""
    url, headers = f"{base_url}/api/ingest/{app_id}", {"X-API-Key": key}
    tasks = []

    async def one(n: int) -> None:
        body = {"event_type": run.event_type, "payload": {"n": n}}
        async with http.post(url, json=body, headers=headers) as response:
            run.statuses[str(response.status)] += 1
            if response.status == 202:
                run.acked.append((await response.json())["data"]["event_id"])

    started = time.monotonic()
    for n in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    run.send_seconds = time.monotonic() - started


async def latencies(pool: asyncpg.Pool, app_id: str, event_type: str) -> tuple[list[float], list[float]]:
    """Accept -> stored, and accept -> routed, of each stored event (seconds, sorted)."""
    rows = await pool.fetch(
        "SELECT extract(epoch FROM stored_at - received_at)::float8,"
        " extract(epoch FROM (routing->>'routed_at')::timestamptz - received_at)::float8"
        " FROM data_events WHERE app_id = $1 AND event_type = $2",
        app_id,
        event_type,
    )
    return sorted(r[0] for r in rows), sorted(r[1] for r in rows)


def quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


async def bench(args: argparse.Namespace, processes: Processes) -> int:
    phases: list[Phase] = []
    lost: list[str] = []
    async with own_pipeline(
        "fairness",
        processes,
        args.logs,
        ingest_capacity_events_per_s=args.capacity,
        app_quota_share=args.share,
    ) as own:
        settings, pool, base_url, admin = own.settings, own.pool, own.base_url, own.admin
        print(f"quota {settings.default_quota_events_per_s}/s per application by default", flush=True)
        connector = aiohttp.TCPConnector(limit=0)
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=60) as http,
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as posting,
        ):
            keys = {}
            for app_id in ("quiet", "flood"):
                keys[app_id] = await own.create_application(http, app_id)
            _, newest = await create_rules(http, admin, "flood")
            rule = {
                "app_id": "quiet",
                "rule_name": "all",
                "destination_type": "queue",
                "destination_config": {"topic": QUIET_TOPIC},
            }
            made = (await http.post("/api/routing-rules", json=rule, headers=admin)).json()["data"]
            await wait_rules_applied(
                settings, "quiet", datetime.fromisoformat(made["updated_at"]).timestamp(), processes
            )
            await wait_rules_applied(settings, "flood", newest, processes)
            flood_sender = Sender(posting, base_url, "flood", keys["flood"])
            warm = Run("warm-up", "warm", None)
            await send_quiet(posting, base_url, "quiet", keys["quiet"], warm, 10, 2)
            await wait_stored(pool, "quiet", warm, cap=120, stall=120, processes=processes)
            for round_ in range(1, args.rounds + 1):
                for phase_name in ("alone", "flood", "flood, no quota"):
                    tag = f"r{round_}_{phase_name.replace(', ', '_').replace(' ', '_')}"
                    quiet = Run(phase_name, f"quiet_{tag}", args.quiet_rate)
                    flood = Run(phase_name, f"flood_{tag}", None) if phase_name != "alone" else None
                    phase = Phase(phase_name, quiet, flood)
                    quota = UNLIMITED if phase_name == "flood, no quota" else {}
                    answer = await http.put("/api/applications/flood/quota", json=quota, headers=admin)
                    assert answer.status_code == 200, answer.text
                    work = [
                        send_quiet(
                            posting, base_url, "quiet", keys["quiet"], quiet, args.quiet_rate, args.seconds
                        )
                    ]
                    if flood is not None:
                        work.append(flood_sender.saturate(flood, args.seconds, args.inflight))
                    await asyncio.gather(*work)
                    flood_ended = time.time()
                    for run, app_id in ((quiet, "quiet"), (flood, "flood")):
                        if run is None:
                            continue
                        await wait_stored(pool, app_id, run, args.drain_timeout, 60, processes)
                        rows = await pool.fetch(STORED, app_id, run.event_type)
                        stored = {r[0] for r in rows}
                        lost += [f"{app_id}:{e}" for e in run.acked if e not in stored]
                    phase.latencies, phase.routing = await latencies(pool, "quiet", quiet.event_type)
                    if flood is not None and flood.acked:
                        last = await pool.fetchval(
                            "SELECT extract(epoch FROM max(stored_at)) FROM data_events"
                            " WHERE app_id = 'flood' AND event_type = $1",
                            flood.event_type,
                        )
                        phase.flood_backlog_s = max(0.0, float(last) - flood_ended)
                    phases.append(phase)
                    print(f"round {round_}: {describe(phase)}", flush=True)
                    check_alive(processes)
    report(phases)
    return exit_code(lost)


def describe(phase: Phase) -> str:
    lat = [s * 1000 for s in phase.latencies]
    text = (
        f"{phase.name}: quiet p50 {quantile(lat, 0.5):.0f} ms, p99 {quantile(lat, 0.99):.0f} ms,"
        f" max {max(lat, default=0):.0f} ms ({len(lat)} events; routed: p50"
        f" {quantile(phase.routing, 0.5) * 1000:.0f} ms, p99 {quantile(phase.routing, 0.99) * 1000:.0f} ms)"
    )
    if phase.flood is not None:
        flood = phase.flood
        statuses: Counter[str] = flood.statuses
        requests = sum(statuses.values())
        text += (
            f"; flood accepted {flood.accept_rate:.0f}/s,"
            f" {statuses['429']} of {requests} requests answered 429,"
            f" its backlog stored {phase.flood_backlog_s:.1f} s after the flood ended"
        )
    return text


def report(phases: list[Phase]) -> None:
    print("\nmedians over the rounds:")
    print(
        f"  {'phase':16} {'quiet p50 ms':>12} {'quiet p99 ms':>12}"
        f" {'flood accepted/s':>16} {'429s':>7} {'backlog s':>9}"
    )
    for name in dict.fromkeys(p.name for p in phases):
        same = [p for p in phases if p.name == name]
        p50 = statistics.median(quantile(p.latencies, 0.5) for p in same) * 1000
        p99 = statistics.median(quantile(p.latencies, 0.99) for p in same) * 1000
        floods: list[Any] = [p.flood for p in same if p.flood is not None]
        accepted = f"{statistics.median(f.accept_rate for f in floods):.0f}" if floods else "-"
        refused = f"{statistics.median(f.statuses['429'] for f in floods):.0f}" if floods else "-"
        backlogs = [p.flood_backlog_s for p in same if p.flood_backlog_s is not None]
        backlog = f"{statistics.median(backlogs):.1f}" if backlogs else "-"
        print(f"  {name:16} {p50:12.0f} {p99:12.0f} {accepted:>16} {refused:>7} {backlog:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20, help="length of each phase")
    parser.add_argument("--quiet-rate", type=float, default=10, help="quiet's single events per second")
    parser.add_argument("--inflight", type=int, default=4, help="flood's senders (batches of 100 each)")
    parser.add_argument("--capacity", type=int, default=Settings().ingest_capacity_events_per_s)
    parser.add_argument("--share", type=float, default=Settings().app_quota_share)
    parser.add_argument("--drain-timeout", type=float, default=300, help="longest wait for a phase's events")
    parser.add_argument("--logs", type=Path, default=Path("/tmp"), help="where the processes' output goes")
    args = parser.parse_args()
    processes = Processes()
    try:
        code = asyncio.run(bench(args, processes))
    finally:
        processes.stop_all()
    sys.exit(code)


if __name__ == "__main__":
    main()
