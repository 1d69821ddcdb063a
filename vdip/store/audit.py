"""``audit_log``: every statement that writes it, and its reads.

Each management action (applications, keys, rules, secrets, redeliveries, destination transfers)
adds a row in the transaction of its change where there is one: who did it (``Actor``: the admin
token, or a key by its id), the application, the action, its target and what changed. Secrets and
key hashes are never recorded. Read newest first, a page at a time (``page``).
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
import orjson
from pydantic import BaseModel

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True)
class Actor:
    """Who acted: the admin token (``key_id`` None) or an application's key."""

    key_id: int | None = None

    @property
    def kind(self) -> str:
        return "admin" if self.key_id is None else "key"


ADMIN = Actor()


class AuditEntry(BaseModel):
    audit_id: int
    app_id: str
    actor: str
    key_id: int | None
    action: str
    target: str | None
    changes: dict[str, Any]
    at: datetime


async def record(
    db: Db, app_id: str, actor: Actor, action: str, target: str | None, changes: dict[str, Any]
) -> None:
    """``changes``: anything orjson writes, other values (asyncpg's UUIDs, say) as their str."""
    await db.execute(
        """INSERT INTO audit_log (app_id, actor, key_id, action, target, changes)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        app_id,
        actor.kind,
        actor.key_id,
        action,
        target,
        orjson.loads(orjson.dumps(changes, default=str)),
    )


async def page(db: Db, app_id: str, before: int | None, limit: int) -> list[AuditEntry]:
    """Up to ``limit`` entries of the application, newest first, older than ``before``."""
    rows = await db.fetch(
        """SELECT audit_id, app_id, actor, key_id, action, target, changes, at
           FROM audit_log WHERE app_id = $1 AND audit_id < coalesce($2::bigint, 9223372036854775807)
           ORDER BY audit_id DESC LIMIT $3""",
        app_id,
        before,
        limit,
    )
    return [AuditEntry(**dict(row)) for row in rows]


async def forget_app(db: Db, app_id: str) -> None:
    """Delete the application's audit trail (the application is being deleted)."""
    await db.execute("DELETE FROM audit_log WHERE app_id = $1", app_id)
