"""``vdip``: the one console script. ``vdip --help`` lists the commands."""

import argparse
import asyncio
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from vdip import logs, stack
from vdip.applications import ALL_SCOPES, ApplicationKey, Scope
from vdip.errors import VdipError
from vdip.settings import Settings, get_settings

if TYPE_CHECKING:
    import asyncpg

PROCESSES = ("gateway", "worker", "bulk-worker", "sink", "table-sink", "webhooks")


def _configure_logging(args: argparse.Namespace) -> None:
    logs.configure(args.log_level, args.pretty, args.command)


# ------------------------------------------------------------------------------------ commands


def cmd_stack(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "up":
        stack.up(settings)
    elif args.action == "down":
        stack.down(settings)
    elif args.action == "browser":
        stack.install_browser()
    else:
        brokers = asyncio.run(stack.kafka_brokers_up(settings, 3))
        kafka = brokers > 0
        print(f"kafka {settings.kafka_bootstrap}: {f'up ({brokers} broker(s))' if kafka else 'down'}")
        postgres = asyncio.run(stack.postgres_answers(settings.database_url))
        print(f"postgres: {'up' if postgres else 'down'}")
        return 0 if kafka and postgres else 1
    return 0


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    from vdip.db import migrate_url

    applied = asyncio.run(migrate_url(settings.database_url, lambda notice: print(notice, file=sys.stderr)))
    print(f"migrations applied: {', '.join(applied)}" if applied else "migrations: up to date")
    return 0


def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    """check: compare event_statistics with counts computed from data_events, print every
    difference (exit 1 if any). refresh: repair them. Progress per application on stderr."""
    from datetime import UTC, datetime, timedelta

    from vdip import statistics
    from vdip.db import create_pool
    from vdip.store import statistics as stored_statistics

    async def run() -> list[statistics.Difference]:
        pool = await create_pool(settings.database_url, min_size=1, max_size=1)
        try:
            end = datetime.now(UTC) + timedelta(minutes=2)
            start = end - timedelta(days=args.days)
            apps = [args.app] if args.app else await stored_statistics.applications(pool)
            found: list[statistics.Difference] = []
            for number, app_id in enumerate(apps, 1):
                if args.action == "refresh":
                    wrong = await statistics.recompute(pool, app_id, start, end)
                else:
                    wrong = await statistics.check(pool, app_id, start, end)
                print(f"[{number}/{len(apps)}] {app_id}: {len(wrong)} bucket(s) off", file=sys.stderr)
                found += wrong
            return found
        finally:
            await pool.close()

    found = asyncio.run(run())
    for d in found:
        print(
            f"{d.app_id} {d.event_type!r} {d.time_period} {d.time_bucket.isoformat()}: "
            f"stored {d.stored or (0, 0, 0)}, actual {d.actual or (0, 0, 0)} (total, processed, failed)"
        )
    if args.action == "refresh":
        print(f"{len(found)} bucket(s) repaired")
        return 0
    print(f"{len(found)} difference(s)" if found else "statistics match the stored events")
    return 1 if found else 0


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from vdip.topics import apply_topics, declared_topics

    specs = declared_topics(settings, Path(args.file))
    report = asyncio.run(apply_topics(settings, specs))
    for name in report.created:
        print(f"created  {name}")
    for name in report.unchanged:
        print(f"ok       {name}")
    for line in report.drift:
        print(f"DRIFT    {line}")
    print(f"{len(report.created)} created, {len(report.unchanged)} as declared, {len(report.drift)} drifted")
    return 1 if report.drift else 0


def cmd_gateway(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.main import create_app

    _configure_logging(args)
    uvicorn.run(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_config=None,
        log_level=args.log_level.lower(),
        timeout_graceful_shutdown=30,
        proxy_headers=False,  # X-Forwarded-For is read by the gateway, from VDIP_TRUSTED_PROXIES only
    )
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from streams.app import run

    _configure_logging(args)  # until faust applies the same configuration
    config = logs.logging_config(args.log_level, args.pretty, args.command)
    run(settings, config, bulk=args.command == "bulk-worker")
    return 0


def cmd_sink(settings: Settings, args: argparse.Namespace) -> int:
    from sinks.event_store import run

    _configure_logging(args)
    run(settings)
    return 0


def cmd_table_sink(settings: Settings, args: argparse.Namespace) -> int:
    from sinks.tables import run

    _configure_logging(args)
    run(settings)
    return 0


def cmd_webhooks(settings: Settings, args: argparse.Namespace) -> int:
    from sinks.webhooks import run

    _configure_logging(args)
    run(settings)
    return 0


def cmd_app(settings: Settings, args: argparse.Namespace) -> int:
    """The verbs of the keys API, on PostgreSQL directly: gateways see a change within
    ``VDIP_APP_CACHE_TTL_S``."""
    return asyncio.run(_app_action(settings, args))


async def _app_action(settings: Settings, args: argparse.Namespace) -> int:
    from vdip.db import create_pool
    from vdip.store import audit, keys
    from vdip.store.applications import create_application, get_application

    pool = await create_pool(settings.database_url)

    async def record(action: str, target: str, changes: dict[str, object]) -> None:
        """The audit trail's entry: the operator at the shell acts as the admin."""
        await audit.record(pool, args.app_id, audit.ADMIN, action, target, {**changes, "via": "cli"})

    try:
        if args.action == "create":
            created = await create_application(pool, args.app_id, args.name or args.app_id)
            if created is None:
                return _fail(f"application '{args.app_id}' exists already (use `vdip app rotate-key`)")
            await record("application.create", f"application {args.app_id}", {"name": created[0].name})
            return _show_key(created[0].keys[0], created[1])
        if await get_application(pool, args.app_id) is None:
            return _fail(f"application '{args.app_id}' does not exist")
        if args.action == "origins":
            return await _origins(pool, args, record)
        if args.action == "keys":
            for key in await keys.keys_of(pool, args.app_id):
                state = "revoked" if key.revoked_at else "expires " + str(key.expires_at or "never")
                print(f"{key.key_id}\t{key.name}\t{','.join(key.scopes)}\t{state}")
            return 0
        if args.action == "add-key":
            made, secret = await keys.create_key(
                pool, args.app_id, args.key_name or "cli", args.scopes, args.expires_at
            )
            changes: dict[str, object] = {
                "name": made.name,
                "scopes": list(made.scopes),
                "expires_at": made.expires_at,
            }
            await record("key.create", f"key {made.key_id}", changes)
            return _show_key(made, secret)
        if args.action == "revoke-key":
            if args.key_id is None:
                return _fail("say which key with --key-id (`vdip app keys` lists them)")
            revoked = await keys.revoke_key(pool, args.app_id, args.key_id)
            if revoked is None:
                return _fail(f"application '{args.app_id}' has no key {args.key_id}")
            await record("key.revoke", f"key {revoked.key_id}", {})
            print(f"key {revoked.key_id} ({revoked.name}) revoked")
            return 0
        # rotate-key: without --key-id, the key made with the application
        rotated = await keys.rotate_key(pool, args.app_id, args.key_id, timedelta(seconds=args.grace_s))
        if rotated is None:
            return _fail(f"application '{args.app_id}' has no live key {args.key_id or '(the first)'}")
        await record("key.rotate", f"key {rotated[0].key_id}", {"previous_secret_valid_s": args.grace_s})
        return _show_key(*rotated)
    finally:
        await pool.close()


def cmd_import_seed(settings: Settings, args: argparse.Namespace) -> int:
    """Copy the original service's applications, rules and events (see ``vdip.seed``). New keys
    and webhook secrets on stdout, once; progress and what was skipped on stderr."""
    return asyncio.run(_import_seed(settings, args.source))


async def _import_seed(settings: Settings, source_url: str) -> int:
    import asyncpg
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from gateway.producer import EventProducer
    from gateway.routes.rules import rule_problems
    from schemas.rules import RuleFields
    from vdip import seed
    from vdip.db import create_pool, migrate_url

    await migrate_url(settings.database_url)
    source = await asyncpg.connect(source_url)
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    producer = EventProducer(settings)
    bar = Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    tasks: dict[str, TaskID] = {}

    def progress(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(what, total=total)
        bar.update(tasks[what], completed=done, total=total)

    def check(fields: RuleFields) -> list[str]:
        return [f"{p.field}: {p.reason}" for p in rule_problems(fields, settings)]

    try:
        await producer.start()
        async with source.transaction(isolation="repeatable_read", readonly=True):  # one snapshot
            with bar:
                report = await seed.import_seed(source, pool, settings, producer.publish, check, progress)
    finally:
        await producer.stop()
        await pool.close()
        await source.close()
    for app_id, key in report.keys:
        print(f"application {app_id}\tapi_key {key}")
    for seed_id, rule_id, secret in report.rules:
        print(f"rule {seed_id} -> {rule_id}" + (f"\twebhook_secret {secret}" if secret else ""))
    for seed_id, why in report.skipped_rules:
        print(f"rule {seed_id} not imported: {why}", file=sys.stderr)
    for seed_id, why in report.skipped_events:
        print(f"event {seed_id} not imported: {why}", file=sys.stderr)
    print(
        f"applications: {len(report.keys)} made (keys above, shown once),"
        f" {len(report.kept_applications)} kept;"
        f" rules: {len(report.rules)} made, {len(report.skipped_rules)} skipped;"
        f" events: {report.events_new} new of {report.events_seen}, {len(report.skipped_events)} skipped",
        file=sys.stderr,
    )
    return 0


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    """Make a replay job of the application (or follow ``--job``) and show its progress until it
    ends; Ctrl-C stops following, not the job."""
    try:
        return asyncio.run(_replay(settings, args))
    except KeyboardInterrupt:
        print(
            "no longer following: the replay goes on (POST .../replays/JOB/cancel stops it)", file=sys.stderr
        )
        return 130


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    import uuid

    from pydantic import ValidationError
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from schemas.jobs import FINISHED, JobView, ReplayRequest
    from vdip.db import create_pool, migrate_url
    from vdip.replays import create_job, not_active
    from vdip.store import audit, jobs

    await migrate_url(settings.database_url)
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        if args.job is not None:
            job = await jobs.get(pool, args.app_id, uuid.UUID(args.job))
            if job is None:
                return _fail(f"no replay {args.job} of {args.app_id}")
        else:
            fields = {
                "start": args.start,
                "end": args.end,
                "event_type": args.event_type,
                "force": args.force,
            }
            try:
                request = ReplayRequest.model_validate({**fields, "rule_ids": args.rule_id})
            except ValidationError as exc:
                wrong = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'range'}: {e['msg']}" for e in exc.errors()
                )
                return _fail(wrong)
            if wrong_ids := await not_active(pool, args.app_id, request.rule_ids):
                return _fail(f"not an active rule of {args.app_id}: {wrong_ids}")
            job = await create_job(pool, args.app_id, request)
            changes = request.model_dump(mode="json")
            await audit.record(
                pool, args.app_id, audit.ADMIN, "replay.create", f"replay {job['job_id']}", changes
            )
        view = JobView.of(job)
        print(
            f"replay {view.job_id}: {view.total} events (the event store's process runs it)", file=sys.stderr
        )
        bar = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("sent {task.fields[sent]}, skipped {task.fields[skipped]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        with bar:
            task = bar.add_task(view.state, total=view.total, sent=0, skipped=0)
            while True:
                row = await jobs.get(pool, args.app_id, view.job_id)
                assert row is not None
                view = JobView.of(row)
                total = max(view.total, view.scanned)
                bar.update(
                    task,
                    description=view.state,
                    completed=view.scanned,
                    total=total,
                    sent=view.sent,
                    skipped=view.skipped,
                )
                if view.state in FINISHED:
                    break
                await asyncio.sleep(0.5)
    finally:
        await pool.close()
    print(
        f"replay {view.job_id} {view.state}: {view.scanned} events, {view.sent} deliveries sent,"
        f" {view.skipped} made already" + (f"; {view.error}" if view.error else "")
    )
    return 0 if view.state == "done" else 1


async def _origins(
    pool: "asyncpg.Pool",
    args: argparse.Namespace,
    record: Callable[[str, str, dict[str, object]], Awaitable[None]],
) -> int:
    """``vdip app origins APP [ORIGIN ...]``: with origins, set them (``--clear``: none); then list them."""
    from vdip.origins import normalize_origin
    from vdip.store.applications import get_application, set_allowed_origins

    if args.origins or args.clear:
        found = {text: normalize_origin(text) for text in args.origins}
        wrong = [text for text, origin in found.items() if origin is None]
        if wrong:
            return _fail(f"not an origin (scheme://host[:port]): {', '.join(wrong)}")
        origins = sorted({origin for origin in found.values() if origin is not None})
        await set_allowed_origins(pool, args.app_id, origins)
        target = f"application {args.app_id}"
        await record("application.allowed_origins", target, {"allowed_origins": origins})
    application = await get_application(pool, args.app_id)
    assert application is not None
    for origin in application.allowed_origins:
        print(origin)
    return 0


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def _show_key(key: ApplicationKey, secret: str) -> int:
    print(
        f"app_id: {key.app_id}\nkey_id: {key.key_id}\nname: {key.name}\nscopes: {','.join(key.scopes)}"
        f"\napi_key: {secret}  (shown once; only its hash is stored)"
    )
    return 0


def _scopes(text: str) -> list[Scope]:
    try:
        return [Scope(s.strip()) for s in text.split(",") if s.strip()] or list(ALL_SCOPES)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"scopes are a comma-separated list of {', '.join(Scope)}") from exc


def _moment(text: str) -> datetime:
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone, e.g. 2030-01-01T00:00:00Z")
    return at


def _run_dir(settings: Settings) -> Path:
    return settings.stack_dir.resolve() / "run"


def admin_token(settings: Settings) -> str:
    """The configured admin token, or the local stack's own (made once, kept in the stack dir)."""
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    path = settings.stack_dir.resolve() / "admin-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def start_processes(settings: Settings) -> None:
    """Start the supervisor in the background, which starts (or adopts) gateway, worker and sinks
    and restarts whichever dies; a no-op for what runs already. Returns once each has a pid."""
    run_dir = _run_dir(settings)
    supervisor_pid = run_dir / "supervisor.pid"
    if stack.read_pid(supervisor_pid) is None:
        for name in PROCESSES:
            if stack.read_pid(run_dir / f"{name}.pid") is not None:
                stack.log(f"{name} already running")
        env = {**os.environ, "VDIP_ADMIN_TOKEN": admin_token(settings)}
        argv = [sys.executable, "-m", "vdip.cli", "supervise"]
        stack.spawn(argv, pid_file=supervisor_pid, log_file=run_dir / "supervisor.log", env=env)
        stack.log(f"started the supervisor, which keeps {', '.join(PROCESSES)} running (log: {run_dir})")
    else:
        for name in PROCESSES:
            stack.log(f"{name} already running (supervised)")
    deadline = time.monotonic() + 30
    while not all(stack.read_pid(run_dir / f"{name}.pid") for name in PROCESSES):
        if stack.read_pid(supervisor_pid) is None or time.monotonic() > deadline:
            raise VdipError(f"the processes did not start:\n{stack.tail(run_dir / 'supervisor.log')}")
        time.sleep(0.2)


def stop_processes(settings: Settings) -> None:
    """Stop the supervisor (which stops the processes), then any process left without it."""
    run_dir = _run_dir(settings)
    if stack.terminate(run_dir / "supervisor.pid", timeout_s=60):
        stack.log("stopped the supervisor and its processes")
    for name in PROCESSES:
        if stack.terminate(run_dir / f"{name}.pid"):
            stack.log(f"stopped {name}")


def cmd_supervise(settings: Settings, _: argparse.Namespace) -> int:
    from vdip import supervisor

    run_dir = _run_dir(settings)
    run_dir.mkdir(parents=True, exist_ok=True)
    supervisor.run(run_dir, PROCESSES, dict(os.environ))
    return 0


def cmd_status(settings: Settings, _: argparse.Namespace) -> int:
    """Each process: pid, uptime, restarts, last exit, and its consumer group's lag."""
    from vdip import supervisor
    from vdip.topics import consumer_lags

    run_dir = _run_dir(settings)
    state = supervisor.read_state(run_dir)
    by_process: dict[str, list[int | None]] = {}
    for process, _group, _topic, lag in asyncio.run(consumer_lags(settings)):
        by_process.setdefault(process, []).append(lag)
    lag_of = {p: None if None in lags else sum(lag or 0 for lag in lags) for p, lags in by_process.items()}
    supervised = stack.read_pid(run_dir / "supervisor.pid") is not None
    print(f"supervisor: {'running' if supervised else 'not running (vdip up starts it)'}")
    print(f"{'process':<11} {'pid':>8} {'uptime':>9} {'restarts':>8} {'lag':>8}  last exit")
    all_up = True
    for name in PROCESSES:
        item = state.get(name, {})
        pid = stack.read_pid(run_dir / f"{name}.pid")
        all_up = all_up and pid is not None
        started = item.get("started_at") if pid is not None and item.get("pid") == pid else None
        uptime = _duration(time.time() - started) if started else ("-" if pid is None else "?")
        shown = "-" if lag_of.get(name) is None else str(lag_of[name])
        print(
            f"{name:<11} {pid if pid is not None else 'down':>8} {uptime:>9} {item.get('restarts', 0):>8}"
            f" {shown:>8}  {item.get('last_exit') or '-'}"
        )
    return 0 if all_up else 1


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _wait_gateway(settings: Settings) -> None:
    import httpx

    url = f"http://{settings.gateway_host}:{settings.gateway_port}/health/ready"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if stack.read_pid(_run_dir(settings) / "gateway.pid") is None:
            break
        time.sleep(0.5)
    raise VdipError(
        f"the gateway did not become ready at {url}:\n{stack.tail(_run_dir(settings) / 'gateway.log')}"
    )


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    """Everything: services, schema, topics, processes, a demo application."""
    started = time.monotonic()
    stack.up(settings)
    cmd_migrate(settings, args)
    if cmd_topics(settings, argparse.Namespace(file=args.file)) != 0:
        stack.log("topics drifted from topics.yaml (see above); continuing")
    start_processes(settings)
    _wait_gateway(settings)
    key = asyncio.run(_demo_key(settings))
    base = f"http://{settings.gateway_host}:{settings.gateway_port}"
    ports = f"{settings.worker_metrics_port}-{settings.bulk_worker_metrics_port}"
    print(f"""
Versatile Data Ingestion Platform is running ({time.monotonic() - started:.1f} s).
  API:          {base}/
  Dashboard:    {base}/dashboard/  (app id: demo, with the key below)
  OpenAPI docs: {base}/docs
  Metrics:      {base}/metrics and 127.0.0.1:{ports}
  Readiness:    {base}/health/ready
  Demo app:     demo
  Demo API key: {key}
  Admin token:  {admin_token(settings)}  (management API: Authorization: Bearer <token>)
  Logs:         {_run_dir(settings)}/{{{",".join(PROCESSES)}}}.log

Send an event:
  curl -s -X POST {base}/api/ingest/demo -H 'X-API-Key: {key}' \\
       -H 'Content-Type: application/json' -d '{{"event_type": "signup", "payload": {{"plan": "pro"}}}}'
Read it back:
  curl -s {base}/api/events/app/demo -H 'X-API-Key: {key}'
Stop everything: .venv/bin/vdip down
""")
    return 0


async def _demo_key(settings: Settings) -> str:
    """Create the demo application, or give it a fresh key (keys are shown only once)."""
    from vdip.db import create_pool
    from vdip.store.applications import create_application, rotate_key

    pool = await create_pool(settings.database_url)
    try:
        created = await create_application(pool, "demo", "Demo application")
        if created is not None:
            return created[1]
        rotated = await rotate_key(pool, "demo")
        assert rotated is not None
        return rotated[1]
    finally:
        await pool.close()


def cmd_down(settings: Settings, _: argparse.Namespace) -> int:
    stop_processes(settings)
    stack.down(settings)
    return 0


# -------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vdip", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("VDIP_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--pretty",
        action="store_true",
        default=os.environ.get("VDIP_LOG_PRETTY", "") not in ("", "0"),
        help="log lines for humans instead of JSON (or VDIP_LOG_PRETTY=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, func: Callable[[Settings, argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    p = add("up", cmd_up, "Start everything: Kafka, PostgreSQL, schema, topics, gateway, worker, sink")
    p.add_argument("--file", default="topics.yaml")
    add("down", cmd_down, "Stop the pipeline's processes, Kafka and PostgreSQL")
    add("status", cmd_status, "Each process of `vdip up`: pid, uptime, restarts, consumer lag")
    add("supervise", cmd_supervise, "Keep gateway, worker and sinks running (what `vdip up` starts)")
    p = add(
        "stack", cmd_stack, "Start, stop or check the local Kafka and PostgreSQL (browser: install chromium)"
    )
    p.add_argument("action", choices=["up", "down", "status", "browser"])
    add("migrate", cmd_migrate, "Apply the SQL migrations not applied yet")
    p = add(
        "stats",
        cmd_stats,
        "Check event_statistics against the stored events (exit 1 if they differ), or repair it",
    )
    p.add_argument("action", choices=["check", "refresh"])
    p.add_argument("--app", help="one application (default: all)")
    p.add_argument("--days", type=float, default=400, help="how far back (default: 400 days)")
    p = add("topics", cmd_topics, "Create the topics of topics.yaml that are missing; report drift")
    p.add_argument("action", choices=["apply"])
    p.add_argument("--file", default="topics.yaml")
    add("gateway", cmd_gateway, "Run the HTTP gateway in the foreground")
    add("worker", cmd_worker, "Run the stream worker (routing agent, statistics fold) in the foreground")
    add("bulk-worker", cmd_worker, "Run the bulk lane's stream worker (events.bulk) in the foreground")
    add("sink", cmd_sink, "Run the event store sink in the foreground")
    add("table-sink", cmd_table_sink, "Run the sink of database_table destinations in the foreground")
    add("webhooks", cmd_webhooks, "Run the webhook dispatcher in the foreground")
    p = add(
        "import-seed",
        cmd_import_seed,
        "Copy the original service's applications (new keys), routing rules and events; idempotent",
    )
    p.add_argument(
        "--from", dest="source", required=True, help="its database: postgresql://USER:PASSWORD@HOST/DB"
    )
    p = add(
        "replay",
        cmd_replay,
        "Route an application's stored events of a time range again through its active rules,"
        " with a progress bar (the event store's process runs the job)",
    )
    p.add_argument("app_id")
    p.add_argument("--start", help="the range's first moment (received_at, ISO time with zone)")
    p.add_argument("--end", help="the range's end (exclusive)")
    p.add_argument("--event-type", help="only events of this type")
    p.add_argument("--rule-id", type=int, action="append", help="only this rule (repeat for more)")
    p.add_argument("--force", action="store_true", help="deliver again what was delivered already")
    p.add_argument("--job", help="follow this replay instead of making one")
    p = add(
        "app", cmd_app, "Create an application; list, add, revoke or rotate its keys; set its allowed origins"
    )
    p.add_argument("action", choices=["create", "keys", "add-key", "revoke-key", "rotate-key", "origins"])
    p.add_argument("app_id")
    p.add_argument("origins", nargs="*", help="origins: the web origins allowed to send events (CORS)")
    p.add_argument("--clear", action="store_true", help="origins: allow no origin")
    p.add_argument("--name", help="create: the application's name")
    p.add_argument("--key-name", help="add-key: the key's name")
    p.add_argument(
        "--scopes", type=_scopes, default=list(ALL_SCOPES), help="add-key: e.g. ingest,read (default: all)"
    )
    p.add_argument("--expires-at", type=_moment, help="add-key: ISO time with zone (default: never)")
    p.add_argument("--key-id", type=int, help="revoke-key, rotate-key (default: the key made with the app)")
    p.add_argument(
        "--grace-s",
        type=float,
        default=0,
        help="rotate-key: seconds the old secret keeps working (default 0)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(get_settings(), args))
    except VdipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
