"""Replay jobs made: what the replays API and ``vdip replay`` share. The event store's process runs
them (``sinks.replay``, ``sinks.jobs``)."""

import uuid
from typing import Any

import asyncpg

from schemas.jobs import ReplayRequest
from vdip.store import events, jobs, rules


async def not_active(pool: asyncpg.Pool, app_id: str, rule_ids: list[int] | None) -> list[int]:
    """Those of ``rule_ids`` that are not active rules of the application."""
    active = {r.rule_id for r in await rules.list_rules(pool, app_id, False)}
    return sorted(set(rule_ids or []) - active)


async def create_job(pool: asyncpg.Pool, app_id: str, request: ReplayRequest) -> Any:
    """A queued replay job (its row), with the range's events counted now."""
    total = await events.count_in_range(pool, app_id, request.start, request.end, request.event_type)
    params = request.model_dump(mode="json")
    return await jobs.create(pool, uuid.uuid4(), app_id, "replay", params, total)
