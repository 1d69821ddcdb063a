"""A subject's deletion: an application's stored events that carry given values at a path (a user
id, say) deleted, with their deliveries and table rows, by a job of the event store's process
(``sinks.deletions``); and, asked for, the same values suppressed from then on (the router drops
the events that carry one: ``schemas.rules.Suppression``)."""

import uuid
from typing import Annotated

import asyncpg
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from gateway.deps import AppManager, AppReader, PoolDep, ProducerDep, RepublisherDep, SettingsDep
from gateway.errors import ApiError
from gateway.responses import scoped
from schemas import ErrorDetail, SuccessResponse
from schemas.jobs import JobView
from schemas.rules import SUBJECT_PATH, SubjectValue, suppression_hash
from vdip.rulesets import write_rules
from vdip.store import audit, events, jobs, suppressions

router = APIRouter(tags=["deletions"])


class SubjectDeletion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Annotated[str, Field(pattern=SUBJECT_PATH, examples=["payload.user_id"])] = Field(
        description="Where the subject's value is in an event: `payload.` and its keys."
    )
    values: list[SubjectValue] = Field(
        min_length=1, max_length=1000, description="The subject's values (strings or integers)."
    )
    suppress: bool = Field(
        default=False,
        description="Drop, from now on, every event that carries one of these values at this path"
        " (only their hashes are kept).",
    )


@router.post(
    "/api/applications/{app_id}/deletions",
    status_code=202,
    summary="Delete the stored events that carry a subject's values (and suppress future ones)",
    responses=scoped("manage", 400, 401, 404, 422, 503),
)
async def delete_subject(
    body: SubjectDeletion,
    caller: AppManager,
    pool: PoolDep,
    settings: SettingsDep,
    producer: ProducerDep,
    republisher: RepublisherDep,
) -> SuccessResponse[JobView]:
    """The suppression applies at once (published with the application's rule set); the job
    deletes what is stored, and what was on its way when it began."""
    assert caller.application is not None
    app_id = caller.application.app_id
    values = list(dict.fromkeys(body.values))
    total = await events.count_matching(pool, app_id, body.path.split(".")[1:], list(values))
    params = {"path": body.path, "values": values, "suppress": body.suppress}

    async def record(conn: asyncpg.Connection) -> asyncpg.Record:
        if body.suppress:
            hashes = [suppression_hash(body.path, value) for value in values]
            await suppressions.add(conn, app_id, body.path, hashes)
        job = await jobs.create(conn, uuid.uuid4(), app_id, "deletion", params, total)
        changes = {"path": body.path, "values": len(values), "suppress": body.suppress}
        await audit.record(
            conn, app_id, caller.actor, "deletion.create", f"deletion {job['job_id']}", changes
        )
        return job

    if body.suppress:  # published with the rule set, in the same transaction
        job = await write_rules(pool, producer.publish, republisher, settings, app_id, record)
    else:
        async with pool.acquire() as conn, conn.transaction():
            job = await record(conn)
    assert job is not None
    return SuccessResponse(message="Deletion queued", data=JobView.of(job))


@router.get(
    "/api/applications/{app_id}/deletions/{job_id}",
    summary="Where a subject's deletion stands",
    responses=scoped("read", 401, 404, 422, 503),
)
async def get_deletion(job_id: uuid.UUID, caller: AppReader, pool: PoolDep) -> SuccessResponse[JobView]:
    assert caller.application is not None
    job = await jobs.get(pool, caller.application.app_id, job_id)
    if job is None or job["kind"] != "deletion":
        unknown = [ErrorDetail(field="path.job_id", reason="unknown deletion")]
        raise ApiError(404, f"Deletion {job_id} does not exist", unknown)
    return SuccessResponse(message=f"Deletion {job['state']}", data=JobView.of(job))
