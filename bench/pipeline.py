"""Benchmark: the whole pipeline, end to end, from the HTTP request to the row in PostgreSQL.

Needs the local stack (`vdip stack up`). Starts, as `bin/up` co-locates them on one machine, one
gateway, the worker and the bulk worker, the event store sink, the table sink and the webhook dispatcher
(`python -m vdip.cli <name>`), all with a topic prefix, consumer groups, metrics ports and a
database of their own (created, migrated, and dropped at the end with the run's topics). It makes
an application and 10 active routing rules over HTTP: one queue rule matching half of the events
(payload.parity == "even"), nine that never match. Then, in each round:

- for each offered rate: POST /api/ingest/{app_id}/batch (BATCH events per request), paced open
  loop: batches leave on a fixed schedule, at most INFLIGHT requests in flight (a batch waits for
  a free slot only when that many are pending; the run says when the rate could not be offered);
- saturation: INFLIGHT senders post batches back to back for the duration: the gateway's accept
  rate (events answered 202 per second).

After each run it waits until every acknowledged event is stored (capped: the router may fall
behind), then reads the run's rows in `data_events`: latency is stored_at - received_at (p50, p99,
max), the stored rate is rows / (last stored_at - first received_at), the store lag is the last
stored_at - the last 202. An event acknowledged but not stored once nothing more was stored for
--stall seconds is lost: the script names such events and exits 1. If the wait was capped
(--drain-timeout) while events were still being stored, it says so and exits 2.

Run: .venv/bin/python -m bench.pipeline [--rates 200,1000] [--duration 20] [--saturation 30] [--rounds N]
"""

import argparse
import asyncio
import itertools
import secrets
import shutil
import signal
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import asyncpg
import httpx
import orjson
from pydantic import SecretStr

from bench.common import (
    Processes,
    apply_own_topics,
    delete_topics,
    drop_database,
    free_port,
    machine_busy_seconds,
    process_env,
    services_cpu_seconds,
    wait_ready,
)
from vdip.db import create_pool, migrate_url, with_database
from vdip.settings import Settings

BATCH = 100
QUEUE_TOPIC = "bench.half"  # the queue rule's destination (under the run's prefix)
ITEMS = [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]
PROCESSES = ("gateway", "worker", "bulk-worker", "sink", "table-sink", "webhooks")
SERVICES = ("postgres", "kafka")  # every process of the local stack's, not only this run's work


# ------------------------------------------------------------------------------------ the runs


@dataclass
class Run:
    """One measurement: what was sent and answered, then what was stored."""

    label: str  # "200/s", "saturation"
    event_type: str  # unique to this run: its rows are found by (app_id, event_type)
    offered: float | None  # events/s; None: as fast as the gateway accepts
    sent: int = 0  # events in the requests that got an answer or failed
    acked: list[str] = field(default_factory=list)  # event ids answered "accepted" (202/207)
    rejected: int = 0  # events not accepted (other statuses, rejected items, transport errors)
    statuses: Counter[str] = field(default_factory=Counter)
    send_seconds: float = 0.0  # paced: the schedule's length; saturation: first request to last answer
    offered_actual: float | None = None  # events/s the schedule really sent (paced runs)
    schedule_lag: float = 0.0  # worst delay of a batch behind its schedule (s)
    last_accept: float = 0.0  # wall clock (epoch s) of the last 202/207
    backlog: int = 0  # acknowledged, not stored yet, when the last answer arrived
    wait_seconds: float = 0.0  # how long we waited for the store after sending
    drained: bool = False
    stalled: bool = False  # the last wait ended because nothing more was being stored
    stats: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    cpu: dict[str, tuple[float, dict[str, float]]] = field(default_factory=dict)  # phase -> (s, CPU s)

    @property
    def accept_rate(self) -> float:
        return len(self.acked) / self.send_seconds if self.send_seconds else 0.0


class Sender:
    """Posts batches of a run to the gateway and records the answers. With aiohttp: httpx spent
    about 4 ms of CPU a request here, CPU the gateway and the pipeline share (aiohttp: 0.3)."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, app_id: str, key: str) -> None:
        self.http, self.url = http, f"{base_url}/api/ingest/{app_id}/batch"
        self.headers = {"X-API-Key": key, "Content-Type": "application/json"}
        self.seq = itertools.count()

    def body(self, run: Run) -> bytes:
        events = []
        for _ in range(BATCH):
            n = next(self.seq)
            payload = {"seq": n, "parity": "odd" if n % 2 else "even", "total": 99.5, "items": ITEMS}
            events.append({"event_type": run.event_type, "payload": payload})
        return orjson.dumps({"events": events})

    async def post(self, run: Run) -> None:
        body = self.body(run)
        try:
            async with self.http.post(self.url, data=body, headers=self.headers) as response:
                status, content = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            run.sent += BATCH
            run.rejected += BATCH
            run.statuses[type(exc).__name__] += 1
            return
        run.sent += BATCH
        run.statuses[str(status)] += 1
        if status not in (202, 207):
            run.rejected += BATCH
            return
        data = orjson.loads(content)["data"]
        run.acked.extend(r["event_id"] for r in data["results"] if r["status"] == "accepted")
        run.rejected += data["rejected"]
        run.last_accept = time.time()

    async def paced(self, run: Run, rate: float, duration: float, inflight: int) -> None:
        """Open loop: batch k leaves at start + k * BATCH / rate, unless INFLIGHT are pending."""
        interval = BATCH / rate
        slots = asyncio.Semaphore(inflight)
        tasks: list[asyncio.Task[None]] = []

        async def one() -> None:
            try:
                await self.post(run)
            finally:
                slots.release()

        start = time.monotonic()
        batches = max(1, round(duration * rate / BATCH))
        for k in range(batches):
            due = start + k * interval
            if (delay := due - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            run.schedule_lag = max(run.schedule_lag, time.monotonic() - due)
            tasks.append(asyncio.create_task(one()))
        run.send_seconds = time.monotonic() - start + interval  # as long as the schedule, or behind it
        run.offered_actual = batches * BATCH / run.send_seconds
        await asyncio.gather(*tasks)

    async def saturate(self, run: Run, duration: float, inflight: int) -> None:
        """Closed loop: INFLIGHT senders, each posting its next batch when the previous is answered."""
        start = time.monotonic()
        stop = start + duration

        async def sender() -> None:
            while time.monotonic() < stop:
                await self.post(run)

        await asyncio.gather(*(sender() for _ in range(inflight)))
        run.send_seconds = time.monotonic() - start


class CpuMeter:
    """CPU seconds each process used between two readings: the pipeline's processes, this script
    ("bench"), PostgreSQL's processes and the Kafka brokers (all of them, whoever uses them), and
    everything else on the machine ("other")."""

    def __init__(self, processes: Processes) -> None:
        self.processes = processes
        self.mark = self.read()

    def read(self) -> tuple[float, dict[str, float], float | None]:
        return (
            time.monotonic(),
            {**self.processes.cpu_seconds(), "bench": time.process_time(), **services_cpu_seconds()},
            machine_busy_seconds(),
        )

    def lap(self) -> tuple[float, dict[str, float]]:
        """Seconds since the previous reading, and the CPU seconds of each process in them."""
        (t0, used0, busy0), (t1, used1, busy1) = self.mark, self.read()
        self.mark = (t1, used1, busy1)
        used = {k: v - used0[k] for k, v in used1.items() if k in used0}
        if busy0 is not None and busy1 is not None:
            used["other"] = max(0.0, busy1 - busy0 - sum(used.values()))
        return t1 - t0, used


def cpu_per_event(run: Run) -> dict[str, float]:
    """Milliseconds of CPU per acknowledged event, sending and draining together, per process."""
    if not run.acked:
        return {}
    total: Counter[str] = Counter()
    for _, used in run.cpu.values():
        total.update(used)
    return {k: 1000 * v / len(run.acked) for k, v in total.items() if k in PROCESSES + SERVICES}


# --------------------------------------------------------------------------- what was stored

STATS = """
SELECT count(*) AS stored,
       min(received_at) AS first_received,
       max(stored_at) AS last_stored,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - received_at)::float8)
           AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - received_at)::float8)
           AS p99,
       max(extract(epoch FROM stored_at - received_at)::float8) AS worst,
       count(*) FILTER (WHERE (payload->>'parity' = 'even')
                              IS DISTINCT FROM (jsonb_array_length(routing->'matched_rules') > 0))
           AS misrouted
FROM data_events WHERE app_id = $1 AND event_type = $2
"""


async def stored_count(pool: asyncpg.Pool, app_id: str, event_type: str) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM data_events WHERE app_id = $1 AND event_type = $2", app_id, event_type
    )
    return count


async def wait_stored(
    pool: asyncpg.Pool, app_id: str, run: Run, cap: float, stall: float, processes: Processes
) -> None:
    """Until every acknowledged event of ``run`` is stored, at most ``cap`` seconds, or until
    nothing new was stored for ``stall`` seconds."""
    started = time.monotonic()
    last_progress, last = started, -1
    while True:
        count = await stored_count(pool, app_id, run.event_type)
        if count >= len(run.acked):
            run.drained, run.stalled = True, False
            break
        now = time.monotonic()
        if count > last:
            last_progress, last = now, count
        if now - last_progress > stall:
            run.stalled = True
            break
        if now - started > cap:
            run.stalled = False  # still storing: a backlog, not (yet) a loss
            break
        check_alive(processes)
        await asyncio.sleep(1)
    run.wait_seconds += time.monotonic() - started


async def measure_stored(pool: asyncpg.Pool, app_id: str, run: Run) -> None:
    """The run's latency figures, and which acknowledged events are not stored (``missing``)."""
    row = await pool.fetchrow(STATS, app_id, run.event_type)
    run.stats = dict(row)
    rows = await pool.fetch(
        "SELECT event_id::text FROM data_events WHERE app_id = $1 AND event_type = $2", app_id, run.event_type
    )
    stored = {r[0] for r in rows}
    run.missing = [e for e in run.acked if e not in stored]
    run.stats["unacknowledged"] = len(stored - set(run.acked))  # stored although not answered 202


def check_alive(processes: Processes) -> None:
    dead = processes.dead()
    if dead:
        tails = "\n".join(f"--- {name}:\n{processes.log_tail(name)}" for name in dead)
        raise RuntimeError(f"process(es) exited during the benchmark: {', '.join(dead)}\n{tails}")


# ------------------------------------------------------------------------------------- set-up


async def create_rules(http: httpx.AsyncClient, admin: dict[str, str], app_id: str) -> tuple[int, float]:
    """One queue rule for the even half of the events, nine never matching (as in bench.router).
    Returns the queue rule's id and the newest updated_at (epoch s)."""
    bodies: list[dict[str, Any]] = [
        {
            "app_id": app_id,
            "rule_name": "even half",
            "condition": {"payload.parity": "even"},
            "destination_type": "queue",
            "destination_config": {"topic": QUEUE_TOPIC},
        }
    ]
    bodies += [
        {
            "app_id": app_id,
            "rule_name": f"never {k}",
            "condition": {
                "$or": [{"payload.total": {"$gt": 10_000 + k}}, {"payload.items.sku": f"never-{k}"}]
            },
            "destination_type": "queue",
            "destination_config": {"topic": f"bench.never-{k}"},
        }
        for k in range(9)
    ]
    created = []
    for body in bodies:
        response = await http.post("/api/routing-rules", json=body, headers=admin)
        if response.status_code != 201:
            raise RuntimeError(f"creating rule {body['rule_name']!r}: {response.status_code} {response.text}")
        created.append(response.json()["data"])
    newest = max(datetime.fromisoformat(r["updated_at"]).timestamp() for r in created)
    return int(created[0]["rule_id"]), newest


async def wait_rules_applied(
    settings: Settings, app_id: str, wanted: float, processes: Processes, timeout: float = 90
) -> None:
    """Until the worker's ``vdip_rules_version_seconds{app_id}`` reaches the newest rule's updated_at."""
    url = f"http://127.0.0.1:{settings.worker_metrics_port}/metrics"
    series = f'vdip_rules_version_seconds{{app_id="{app_id}"}}'
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            check_alive(processes)
            try:
                text = (await http.get(url)).text
            except httpx.HTTPError:
                text = ""  # the worker serves its metrics once it joined the broker
            values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series)]
            if values and values[0] >= wanted - 1e-3:
                return
            await asyncio.sleep(0.5)
    raise RuntimeError(f"the worker did not apply the rules within {timeout} s")


# --------------------------------------------------------------------------------------- main


def own_settings(base: Settings, name: str, database: str, **overrides: Any) -> Settings:
    """``base`` with a database, topic prefix, consumer groups, worker directory, ports and admin
    token of the run's own."""
    return base.model_copy(
        update={
            "database_url": with_database(base.database_url, database),
            "topic_prefix": f"{name}.",
            "worker_id": f"{name}.worker",
            "worker_datadir": Path(f"/tmp/{name}/worker"),
            "sink_group_id": f"{name}.event-store",
            "table_sink_group_id": f"{name}.table-sink",
            "webhook_group_id": f"{name}.webhooks",
            "gateway_port": free_port(),
            "worker_metrics_port": free_port(),
            "bulk_worker_metrics_port": free_port(),
            "sink_metrics_port": free_port(),
            "table_sink_metrics_port": free_port(),
            "webhooks_metrics_port": free_port(),
            "admin_token": SecretStr(secrets.token_urlsafe(24)),
            **overrides,
        }
    )


@dataclass
class OwnPipeline:
    """A run's own pipeline, running: its name, settings, a pool on its database, its gateway."""

    name: str  # bench-<kind>-<run id>: its topics' prefix, and the name of its processes' logs
    settings: Settings
    pool: asyncpg.Pool
    base_url: str
    admin: dict[str, str]  # headers with its admin token

    async def create_application(self, http: httpx.AsyncClient, app_id: str) -> str:
        """Make the application ``app_id`` (named the same) with the admin token; its API key."""
        response = await http.post(
            "/api/applications", json={"app_id": app_id, "name": app_id}, headers=self.admin
        )
        if response.status_code != 201:
            raise RuntimeError(f"creating application {app_id}: {response.status_code} {response.text}")
        key: str = response.json()["data"]["api_key"]
        return key


@asynccontextmanager
async def own_pipeline(
    kind: str,
    processes: Processes,
    logs: Path,
    *,
    log_level: str = "WARNING",
    keep: bool = False,
    **overrides: Any,
) -> AsyncIterator[OwnPipeline]:
    """The whole pipeline (``PROCESSES``) of a run of its own (``own_settings`` with ``overrides``):
    its database made and migrated, its topics applied, its processes started (their logs in
    ``logs``, at ``log_level``) and the gateway ready; at the end, its processes stopped, its worker
    directory gone, and its database and topics too unless ``keep``."""
    run_id = uuid.uuid4().hex[:8]
    name, database, base = f"bench-{kind}-{run_id}", f"vdip_bench_{run_id}", Settings()
    settings = own_settings(base, name, database, **overrides)
    print(
        f"run {run_id}: topics {settings.topic_prefix}*, database {database}, logs in {logs}/{name}-*.log",
        flush=True,
    )
    conn = await asyncpg.connect(base.database_url)
    await conn.execute(f'CREATE DATABASE "{database}"')
    await conn.close()
    pool = None
    try:
        await migrate_url(settings.database_url)
        await apply_own_topics(settings)
        pool = await create_pool(settings.database_url)
        settings.worker_datadir.parent.mkdir(parents=True, exist_ok=True)
        env = process_env(settings, VDIP_LOG_LEVEL=log_level)
        for process in PROCESSES:
            processes.vdip(process, env, logs / f"{name}-{process}.log")
        base_url = f"http://127.0.0.1:{settings.gateway_port}"
        await wait_ready(base_url, processes.started["gateway"], timeout=90)
        assert settings.admin_token is not None
        admin = {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}
        yield OwnPipeline(name, settings, pool, base_url, admin)
    finally:
        processes.stop_all()
        shutil.rmtree(settings.worker_datadir.parent, ignore_errors=True)
        if pool is not None:
            await pool.close()
        if keep:
            print(f"kept database {database} and topics {settings.topic_prefix}*", flush=True)
        else:
            await drop_database(base.database_url, database)
            deleted = await delete_topics(settings.kafka_bootstrap, settings.topic_prefix)
            print(f"dropped database {database}, deleted {len(deleted)} topics", flush=True)


async def bench(args: argparse.Namespace, processes: Processes) -> int:
    runs: list[Run] = []
    # The default quotas would cap the saturation run.
    async with own_pipeline(
        "pipeline",
        processes,
        Path("/tmp"),
        log_level=args.log_level,
        keep=args.keep,
        ingest_capacity_events_per_s=10_000_000,
    ) as own:
        settings, pool, base_url, admin = own.settings, own.pool, own.base_url, own.admin
        connector = aiohttp.TCPConnector(limit=args.inflight)
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=60) as http,
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as posting,
        ):
            app_id = own.name
            key = await own.create_application(http, app_id)
            queue_rule, newest = await create_rules(http, admin, app_id)
            await wait_rules_applied(settings, app_id, newest, processes)
            sender = Sender(posting, base_url, app_id, key)
            warmup = Run("warm-up", "warmup", None)
            await sender.post(warmup)
            await wait_stored(pool, app_id, warmup, cap=120, stall=120, processes=processes)
            if not warmup.drained:
                raise RuntimeError("the warm-up batch was not stored within 120 s")
            print(f"pipeline up; queue rule {queue_rule} + 9 never matching rules applied", flush=True)
            for round_ in range(1, args.rounds + 1):
                plan: list[float | None] = [*args.rates, *([None] if args.saturation > 0 else [])]
                for rate in plan:
                    label = f"{rate:g}/s" if rate is not None else "saturation"
                    kind = f"rate{rate:g}" if rate is not None else "saturation"
                    run = Run(label, f"bench_r{round_}_{kind}", rate)
                    meter = CpuMeter(processes)
                    if rate is None:
                        await sender.saturate(run, args.saturation, args.inflight)
                    else:
                        await sender.paced(run, rate, args.duration, args.inflight)
                    run.cpu["sending"] = meter.lap()
                    run.backlog = max(0, len(run.acked) - await stored_count(pool, app_id, run.event_type))
                    await wait_stored(pool, app_id, run, args.drain_timeout, args.stall, processes)
                    run.cpu["draining"] = meter.lap()
                    await measure_stored(pool, app_id, run)
                    runs.append(run)
                    print(f"round {round_} {line(run)}", flush=True)
            late = [r for r in runs if r.missing]
            for run in late:  # one more chance: the backlog of a capped wait may have drained since
                await wait_stored(pool, app_id, run, args.drain_timeout, args.stall, processes)
                await measure_stored(pool, app_id, run)
    return report(runs, args)


# ------------------------------------------------------------------------------------ output


def line(run: Run) -> str:
    s = run.stats
    parts = [f"{run.label:>10}:"]
    if run.offered is not None and run.offered_actual is not None:
        parts.append(f"offered {run.offered_actual:6.0f}/s (max lag {run.schedule_lag:.2f} s),")
    parts.append(f"accepted {run.accept_rate:6.0f}/s, acked {len(run.acked)}, stored {s.get('stored', 0)},")
    parts.append(f"backlog {run.backlog}, waited {run.wait_seconds:.0f} s,")
    if s.get("stored"):
        parts.append(
            f"stored {stored_rate(run):6.0f}/s, latency p50 {s['p50']:.2f} s p99 {s['p99']:.2f} s"
            f" max {s['worst']:.2f} s,"
        )
    parts.append(f"answers {dict(run.statuses)}")
    for phase, (wall, used) in run.cpu.items():
        if wall >= 1:
            cores = ", ".join(f"{k} {v / wall:.2f}" for k, v in used.items())
            parts.append(f"\n    cores used while {phase} ({wall:.0f} s): {cores}")
    per_event = ", ".join(f"{k} {v:.2f}" for k, v in cpu_per_event(run).items())
    parts.append(f"\n    CPU ms per acknowledged event: {per_event}")
    return " ".join(parts)


def stored_rate(run: Run) -> float:
    s = run.stats
    if not s.get("stored"):
        return 0.0
    window = (s["last_stored"] - s["first_received"]).total_seconds()
    return float(s["stored"]) / window if window > 0 else 0.0


def other_cores(run: Run) -> float:
    """Cores used on the machine by anything but this benchmark's processes, over the run."""
    wall = sum(w for w, _ in run.cpu.values())
    return sum(u.get("other", 0.0) for _, u in run.cpu.values()) / wall if wall else 0.0


def store_lag(run: Run) -> float:
    """Seconds from the last 202 to the last row stored."""
    s = run.stats
    if not s.get("stored") or not run.last_accept:
        return 0.0
    return float(s["last_stored"].timestamp() - run.last_accept)


def report(runs: list[Run], args: argparse.Namespace) -> int:
    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    labels = list(dict.fromkeys(r.label for r in runs))
    print(
        f"\n{'medians over ' + str(args.rounds) + ' rounds' if args.rounds > 1 else 'one round'}:"
        f" batches of {BATCH}, {args.inflight} requests in flight at most,"
        f" {args.duration:g} s per offered rate, {args.saturation:g} s of saturation\n"
    )
    print(
        "| run | offered events/s | accepted (202) events/s | acknowledged | not accepted | stored |"
        " missing | stored events/s | backlog at last 202 | store lag after last 202 (s) |"
        " latency p50 (s) | p99 (s) | max (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    short = False
    for label in labels:
        mine = [r for r in runs if r.label == label]
        stored = [r for r in mine if r.stats.get("stored")]
        if mine[0].offered is None:
            offered = "as fast as accepted"
        else:
            actual = median([r.offered_actual or 0.0 for r in mine])
            behind = actual < 0.95 * (mine[0].offered or 0)
            short |= behind
            offered = f"{actual:,.0f}{' (short!)' if behind else ''}"
        print(
            f"| {label} | {offered} | {median([r.accept_rate for r in mine]):,.0f}"
            f" | {median([len(r.acked) for r in mine]):,.0f}"
            f" | {median([r.rejected for r in mine]):,.0f}"
            f" | {median([r.stats.get('stored', 0) for r in mine]):,.0f}"
            f" | {sum(len(r.missing) for r in mine):,}"
            f" | {median([stored_rate(r) for r in stored]):,.0f}"
            f" | {median([r.backlog for r in mine]):,.0f}"
            f" | {median([store_lag(r) for r in stored]):.1f}"
            f" | {median([r.stats['p50'] for r in stored]):.2f}"
            f" | {median([r.stats['p99'] for r in stored]):.2f}"
            f" | {median([r.stats['worst'] for r in stored]):.2f} |"
        )
    if short:
        print(
            f"\n(short!): batches fell behind their schedule (max lag above): {args.inflight} requests"
            " were pending (the gateway answered slower than the schedule) or this script was starved"
        )
    print(
        "\nCPU per acknowledged event (ms; sending and draining; 'other' on the machine:"
        f" {median([other_cores(r) for r in runs]):.2f} cores, median of the runs):\n"
    )
    print("| run | " + " | ".join(PROCESSES) + " | all six | " + " | ".join(SERVICES) + " | in all |")
    print("|---|" + "---:|" * (len(PROCESSES) + len(SERVICES) + 2))
    for label in labels:
        costs = [cpu_per_event(r) for r in runs if r.label == label]
        cells = [median([c.get(name, float("nan")) for c in costs]) for name in PROCESSES]
        stack = [median([c.get(name, float("nan")) for c in costs]) for name in SERVICES]
        print(
            f"| {label} | "
            + " | ".join(f"{v:.2f}" for v in cells)
            + f" | {sum(cells):.2f} | "
            + " | ".join(f"{v:.2f}" for v in stack)
            + f" | {sum(cells) + sum(stack):.2f} |"
        )
    failed = 0
    for run in runs:
        if run.missing and run.stalled:
            failed = 1
            print(
                f"\n!!! LOST EVENTS: {len(run.missing)} of {len(run.acked)} events of run {run.event_type}"
                f" were acknowledged (202) but are not in data_events, and nothing more was stored for"
                f" {args.stall:g} s (waited {run.wait_seconds:.0f} s in all). First ids:"
                f" {', '.join(run.missing[:10])}",
                file=sys.stderr,
            )
        elif run.missing:
            failed = failed or 2
            print(
                f"\n!!! NOT VERIFIED: {len(run.missing)} of {len(run.acked)} acknowledged events of run"
                f" {run.event_type} were still not stored when the wait was capped"
                f" ({run.wait_seconds:.0f} s in all) although they were still being stored: a backlog"
                " the pipeline did not drain in time (raise --drain-timeout), not proven lost",
                file=sys.stderr,
            )
        if run.stats.get("misrouted"):
            failed = 1
            print(
                f"\n!!! MISROUTED: {run.stats['misrouted']} stored events of run {run.event_type} have"
                " a routing summary that contradicts their parity",
                file=sys.stderr,
            )
    return failed


def parse_rates(text: str) -> list[float]:
    rates = [float(part) for part in text.split(",") if part.strip()]
    if any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError("rates are positive numbers of events per second")
    return rates


def terminated(signum: int, _: Any) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rates", type=parse_rates, default=[200.0, 1000.0], help="events/s, comma separated"
    )
    parser.add_argument("--duration", type=float, default=20, help="seconds per offered rate")
    parser.add_argument("--saturation", type=float, default=30, help="seconds of saturation (0: none)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--inflight", type=int, default=4, help="requests in flight at most")
    parser.add_argument(
        "--drain-timeout", type=float, default=300, help="the longest wait for a run's events to be stored"
    )
    parser.add_argument(
        "--stall", type=float, default=60, help="stop waiting when nothing was stored for this long"
    )
    parser.add_argument("--log-level", default="INFO", help="of the pipeline's processes")
    parser.add_argument("--keep", action="store_true", help="keep the run's database and topics")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    processes = Processes()
    try:
        code = asyncio.run(bench(args, processes))
    except KeyboardInterrupt as exc:
        print(f"interrupted ({str(exc) or 'Ctrl-C'}); the run's processes are stopped", file=sys.stderr)
        code = 130
    finally:
        processes.stop_all()
    sys.exit(code)


if __name__ == "__main__":
    main()
