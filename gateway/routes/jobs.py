"""Jobs, which the event store's process runs (``sinks.jobs``): replays (an application's stored
events of a range routed again through its active rules: ``sinks.replay``), made, followed and
cancelled here; an application's jobs listed; any job by its id, for the admin (an application's
deletion: ``sinks.purge``). A subject's deletion is made in ``gateway.routes.deletions``."""

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query

from gateway.deps import AppManager, AppReader, PoolDep, RequireAdmin
from gateway.errors import ApiError
from gateway.responses import errors, scoped
from schemas import ErrorDetail, SuccessResponse
from schemas.jobs import JobView, ReplayRequest
from vdip import replays
from vdip.store import audit, jobs

router = APIRouter(tags=["jobs"])


def _not_found(job_id: UUID) -> ApiError:
    return ApiError(
        404, f"Replay {job_id} does not exist", [ErrorDetail(field="path.job_id", reason="unknown replay")]
    )


@router.post(
    "/api/applications/{app_id}/replay",
    status_code=202,
    summary="Route the stored events of a time range again through today's active rules",
    responses=scoped("manage", 400, 401, 404, 422, 503),
)
async def start_replay(body: ReplayRequest, caller: AppManager, pool: PoolDep) -> SuccessResponse[JobView]:
    """A job, queued: the event store's process runs it, ``VDIP_REPLAY_EVENTS_PER_S`` at most.
    Without ``force``, an (event, rule) delivered (or under way) already is not delivered again."""
    assert caller.application is not None
    app_id = caller.application.app_id
    wrong = await replays.not_active(pool, app_id, body.rule_ids)
    if wrong:
        raise ApiError(
            422,
            "Only the application's active rules can be replayed",
            [ErrorDetail(field="body.rule_ids", reason=f"not an active rule of {app_id}: {wrong}")],
        )
    job = await replays.create_job(pool, app_id, body)
    changes = body.model_dump(mode="json")
    await audit.record(pool, app_id, caller.actor, "replay.create", f"replay {job['job_id']}", changes)
    return SuccessResponse(message="Replay queued", data=JobView.of(job))


@router.get(
    "/api/applications/{app_id}/jobs",
    summary="The application's jobs (replays, subjects' deletions), newest first",
    responses=scoped("read", 401, 404, 422, 503),
)
async def list_jobs(
    caller: AppReader,
    pool: PoolDep,
    kind: Annotated[
        Literal["replay", "deletion"] | None, Query(description="Only jobs of this kind.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> SuccessResponse[list[JobView]]:
    assert caller.application is not None
    rows = await jobs.of_app(pool, caller.application.app_id, kind, limit)
    return SuccessResponse(message=f"{len(rows)} jobs", data=[JobView.of(row) for row in rows])


@router.get(
    "/api/applications/{app_id}/replays/{job_id}",
    summary="Where a replay stands: state, counts, percent, time left",
    responses=scoped("read", 401, 404, 422, 503),
)
async def get_replay(job_id: UUID, caller: AppReader, pool: PoolDep) -> SuccessResponse[JobView]:
    assert caller.application is not None
    job = await jobs.get(pool, caller.application.app_id, job_id)
    if job is None or job["kind"] != "replay":
        raise _not_found(job_id)
    return SuccessResponse(message=f"Replay {job['state']}", data=JobView.of(job))


@router.post(
    "/api/applications/{app_id}/replays/{job_id}/cancel",
    summary="Cancel a queued or running replay (what it sent stays sent)",
    responses=scoped("manage", 401, 404, 409, 422, 503),
)
async def cancel_replay(job_id: UUID, caller: AppManager, pool: PoolDep) -> SuccessResponse[JobView]:
    assert caller.application is not None
    app_id = caller.application.app_id
    job = await jobs.cancel(pool, app_id, job_id)
    if job is None:
        found = await jobs.get(pool, app_id, job_id)
        if found is None or found["kind"] != "replay":
            raise _not_found(job_id)
        raise ApiError(
            409,
            f"Replay {job_id} has ended already",
            [ErrorDetail(field="path.job_id", reason=f"the replay is {found['state']}")],
        )
    await audit.record(pool, app_id, caller.actor, "replay.cancel", f"replay {job_id}", {})
    return SuccessResponse(message="Replay cancelled", data=JobView.of(job))


@router.get(
    "/api/jobs/{job_id}",
    dependencies=[RequireAdmin],
    summary="Where any job stands (a replay, an application's deletion)",
    responses=errors(401, 404, 422, 503),
)
async def get_job(job_id: UUID, pool: PoolDep) -> SuccessResponse[JobView]:
    job = await jobs.get_any(pool, job_id)
    if job is None:
        raise ApiError(
            404, f"Job {job_id} does not exist", [ErrorDetail(field="path.job_id", reason="unknown job")]
        )
    return SuccessResponse(message=f"Job {job['state']}", data=JobView.of(job))
