"""What an application owns and what was done to it: its destinations, their transfer by the
admin, and its audit trail. SQL in ``vdip.store.owners`` and ``vdip.store.audit``."""

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from gateway.deps import ApplicationsDep, AppReader, PoolDep, RequireAdmin
from gateway.errors import ApiError
from gateway.responses import errors, scoped
from schemas import ErrorDetail, SuccessResponse
from schemas.events import AppId
from schemas.rules import destination_problems
from vdip.store import audit, owners

router = APIRouter(tags=["tenants"])


@router.get(
    "/api/destinations/app/{app_id}",
    summary="The queue topics and tables an application owns",
    responses=scoped("read", 401, 404, 422),
)
async def owned(caller: AppReader, pool: PoolDep) -> SuccessResponse[list[owners.OwnedDestination]]:
    assert caller.application is not None
    found = await owners.owned_by(pool, caller.application.app_id)
    return SuccessResponse(message=f"{len(found)} destination(s)", data=found)


class NewOwner(BaseModel):
    app_id: AppId


@router.put(
    "/api/destinations/{destination_type}/{name}/owner",
    dependencies=[RequireAdmin],
    summary="Give a queue topic or table to another application (the admin token)",
    responses=errors(400, 401, 404, 409, 422),
)
async def transfer(
    destination_type: Literal["queue", "database_table"],
    name: Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,200}$")],
    body: NewOwner,
    pool: PoolDep,
    applications: ApplicationsDep,
) -> SuccessResponse[owners.OwnedDestination]:
    """Refused (409) while rules of another application than the new owner name it."""
    key = owners.NAME_KEYS[destination_type]
    problems = destination_problems(destination_type, {key: name})
    if problems:
        raise ApiError(422, "Not a destination name", [ErrorDetail(field="path.name", reason=problems[0][1])])
    if await applications.get(body.app_id) is None:
        raise ApiError(
            404,
            f"Application '{body.app_id}' does not exist",
            [ErrorDetail(field="body.app_id", reason="unknown application")],
        )
    async with pool.acquire() as conn, conn.transaction():
        others = await owners.users_other_than(conn, destination_type, name, body.app_id)
        if others:
            raise ApiError(
                409,
                "Rules of other applications name this destination",
                [ErrorDetail(field="path.name", reason=f"named by rules of {', '.join(others)}")],
            )
        moved, previous = await owners.transfer(conn, destination_type, name, body.app_id)
        target = f"{destination_type} {name}"
        if previous != body.app_id:
            await audit.record(conn, body.app_id, audit.ADMIN, "destination.transfer_in", target, {})
            if previous is not None:
                await audit.record(conn, previous, audit.ADMIN, "destination.transfer_out", target, {})
    return SuccessResponse(message="Destination transferred", data=moved)


class AuditPage(BaseModel):
    entries: list[audit.AuditEntry]
    next_cursor: str | None


@router.get(
    "/api/audit/app/{app_id}",
    summary="An application's audit trail, newest first: who changed what, and when",
    responses=scoped("read", 401, 404, 422),
)
async def audit_trail(
    caller: AppReader,
    pool: PoolDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,18}$", description="next_cursor of the previous page")
    ] = None,
) -> SuccessResponse[AuditPage]:
    assert caller.application is not None
    found = await audit.page(pool, caller.application.app_id, int(cursor) if cursor else None, limit + 1)
    entries = found[:limit]
    next_cursor = str(entries[-1].audit_id) if len(found) > limit else None
    return SuccessResponse(
        message=f"{len(entries)} entrie(s)", data=AuditPage(entries=entries, next_cursor=next_cursor)
    )
