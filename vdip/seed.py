"""``vdip import-seed``: the original service's applications, routing rules and stored events,
copied from its PostgreSQL database (the schema of its ``database/schema.sql``), which is only read.

- ``applications``: its serial ``app_id`` becomes the id ``str(app_id)`` and ``app_name`` the name.
  An application made now gets a key of every scope, returned once; the original's ``api_key``
  (stored in clear, never checked) is not carried over. One that exists is kept as it is.
- ``routing_rules``: validated as the rules API validates them (``check``); each one made is
  remembered in ``seed_rules`` with the original's id, so no rule is made twice (nor again once
  deleted). An application's new rules are written and its rule set published in one transaction
  (``vdip.rulesets.write_rules``), as the API does.
- ``data_events``: each becomes the event ``seed_event_id(app_id, event_id)`` (a UUIDv5, so that
  importing again stores nothing twice), received at its ``created_at``, with its payload and its
  metadata (plus ``seed_event_id``), routed already (status ``processed``; the original's
  ``processed`` is in ``routing.seed_processed``). The statistics of the imported range are then
  recomputed, so events of any age are counted.
"""

import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import asyncpg
import orjson
from pydantic import ValidationError

from schemas.rules import RuleFields, SavedRule
from vdip import statistics
from vdip.errors import DestinationOwned
from vdip.rulesets import Publish, Republisher, claim_destination, write_rules
from vdip.settings import Settings
from vdip.store import audit
from vdip.store import events as event_store
from vdip.store import rules as rule_store
from vdip.store.applications import create_application

BATCH = 1000
NAME_MAX = 200
Progress = Callable[[str, int, int], None]  # (what, done, total)
Check = Callable[[RuleFields], list[str]]  # the problems of a rule, as the rules API finds them


def seed_event_id(app_id: str, event_id: int) -> uuid.UUID:
    """The id an event of the original gets here: stable, so that importing again finds it."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"seed:{app_id}:{event_id}")


@dataclass
class Report:
    keys: list[tuple[str, str]] = field(default_factory=list)  # applications made, with their key
    kept_applications: list[str] = field(default_factory=list)
    rules: list[tuple[int, int, str | None]] = field(default_factory=list)  # seed id, rule id, secret
    skipped_rules: list[tuple[int, str]] = field(default_factory=list)  # seed id, why
    events_new: int = 0
    events_seen: int = 0
    skipped_events: list[tuple[int, str]] = field(default_factory=list)  # seed id, why


async def import_seed(
    source: asyncpg.Connection,
    pool: asyncpg.Pool,
    settings: Settings,
    publish: Publish,
    check: Check,
    progress: Progress,
) -> Report:
    report = Report()
    await _applications(source, pool, report, progress)
    republisher = Republisher(pool, publish, settings)
    try:
        await _rules(source, pool, settings, publish, republisher, check, report, progress)
    finally:
        await republisher.stop()
    await _events(source, pool, report, progress)
    return report


async def _record(pool: asyncpg.Pool, app_id: str, action: str, target: str, changes: dict[str, Any]) -> None:
    await audit.record(pool, app_id, audit.ADMIN, action, target, {**changes, "via": "import-seed"})


async def _applications(
    source: asyncpg.Connection, pool: asyncpg.Pool, report: Report, progress: Progress
) -> None:
    rows = await source.fetch("SELECT app_id, app_name FROM applications ORDER BY app_id")
    for done, row in enumerate(rows, 1):
        app_id = str(row["app_id"])
        name = (row["app_name"] or app_id)[:NAME_MAX]
        created = await create_application(pool, app_id, name, "imported from the original service")
        if created is None:
            report.kept_applications.append(app_id)
        else:
            report.keys.append((app_id, created[1]))
            await _record(pool, app_id, "application.create", f"application {app_id}", {"name": name})
        progress("applications", done, len(rows))


def _as_object(text: str | None) -> Any:
    return orjson.loads(text) if text is not None else None


async def _rules(
    source: asyncpg.Connection,
    pool: asyncpg.Pool,
    settings: Settings,
    publish: Publish,
    republisher: Republisher,
    check: Check,
    report: Report,
    progress: Progress,
) -> None:
    rows = await source.fetch(
        """SELECT rule_id, app_id, rule_name, event_type_filter, condition::text AS condition,
                  destination_type, destination_config::text AS destination_config, priority, is_active
           FROM routing_rules ORDER BY app_id, rule_id"""
    )
    done = await rule_store.imported_seed_rules(pool)
    by_app: dict[str, list[tuple[int, RuleFields]]] = defaultdict(list)
    for row in rows:
        if row["rule_id"] in done:
            continue
        try:
            fields = RuleFields.model_validate(
                {
                    "app_id": str(row["app_id"]),
                    "rule_name": row["rule_name"],
                    "event_type_filter": row["event_type_filter"],
                    "condition": _as_object(row["condition"]),
                    "destination_type": row["destination_type"],
                    "destination_config": _as_object(row["destination_config"]),
                    "priority": row["priority"] if row["priority"] is not None else 0,
                    "is_active": row["is_active"] if row["is_active"] is not None else True,
                }
            )
        except ValidationError as exc:
            why = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            report.skipped_rules.append((row["rule_id"], why))
            continue
        problems = check(fields)
        if problems:
            report.skipped_rules.append((row["rule_id"], "; ".join(problems)))
            continue
        by_app[fields.app_id].append((row["rule_id"], fields))
    progress("rules", 0, len(rows))
    for app_id, rules in by_app.items():
        await write_rules(pool, publish, republisher, settings, app_id, partial(_insert_rules, rules, report))
    progress("rules", len(rows), len(rows))


async def _insert_rules(
    rules: list[tuple[int, RuleFields]], report: Report, conn: asyncpg.Connection
) -> SavedRule | None:
    """Make the rules (of one application); the last one made, None if none (nothing to publish)."""
    last = None
    for seed_id, fields in rules:
        try:
            await claim_destination(conn, fields)
        except DestinationOwned:
            report.skipped_rules.append((seed_id, "its destination belongs to another application"))
            continue
        last = await rule_store.insert_seed_rule(conn, fields, seed_id)
        report.rules.append((seed_id, last.rule_id, last.webhook_secret))
        changes = {**fields.model_dump(mode="json"), "seed_rule_id": seed_id, "via": "import-seed"}
        changes["destination_config"].pop("headers", None)  # header values may be secrets: never recorded
        target = f"rule {last.rule_id}"
        await audit.record(conn, fields.app_id, audit.ADMIN, "rule.create", target, changes)
    return last


async def _events(source: asyncpg.Connection, pool: asyncpg.Pool, report: Report, progress: Progress) -> None:
    total = await source.fetchval("SELECT count(*) FROM data_events")
    spans: dict[str, tuple[datetime, datetime]] = {}
    after = 0
    while True:
        rows = await source.fetch(
            """SELECT event_id, app_id, event_type, payload::text AS payload, metadata::text AS metadata,
                      processed, created_at
               FROM data_events WHERE event_id > $1 ORDER BY event_id LIMIT $2""",
            after,
            BATCH,
        )
        if not rows:
            break
        after = rows[-1]["event_id"]
        by_app: dict[str, list[event_store.ImportedEvent]] = defaultdict(list)
        for row in rows:
            app_id, seed_id, at = str(row["app_id"]), row["event_id"], row["created_at"]
            payload = orjson.loads(row["payload"])
            if at is None or not isinstance(payload, dict):
                why = "no created_at" if at is None else "its payload is not a JSON object"
                report.skipped_events.append((seed_id, why))
                continue
            metadata = _as_object(row["metadata"]) or {}  # NULL: the original's default, {}
            metadata = metadata if isinstance(metadata, dict) else {"seed_metadata": metadata}
            routing = {
                "rules_evaluated": 0,
                "matched_rules": [],
                "deliveries": [],
                "routed_at": at.isoformat(),
                "seed_processed": bool(row["processed"]),
            }
            by_app[app_id].append(
                (
                    seed_event_id(app_id, seed_id),
                    row["event_type"],
                    orjson.dumps(payload).decode(),
                    orjson.dumps({**metadata, "seed_event_id": seed_id}).decode(),
                    at,
                    orjson.dumps(routing).decode(),
                )
            )
            low, high = spans.get(app_id, (at, at))
            spans[app_id] = (min(low, at), max(high, at))
        for app_id, events in by_app.items():
            report.events_new += await event_store.insert_imported(pool, app_id, events)
        report.events_seen += len(rows)
        progress("events", report.events_seen, total)
    for done, (app_id, (low, high)) in enumerate(spans.items(), 1):  # events of any age counted
        await statistics.recompute(pool, app_id, low, high + timedelta(microseconds=1))
        progress("statistics", done, len(spans))
