"""An application's keys: make one with a name, scopes and an optional expiry, list them (never
the secret), revoke one, rotate one with a grace period. The ``manage`` scope (or the admin
token); a key makes keys of its own scopes only. SQL in ``vdip.store.keys``."""

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import AwareDatetime, BaseModel, Field

from gateway.deps import ApplicationsDep, AppManager, PoolDep, SettingsDep, missing_scope
from gateway.errors import ApiError
from gateway.responses import scoped
from schemas import ErrorDetail, SuccessResponse
from vdip.applications import ApplicationKey, Scope
from vdip.store import audit
from vdip.store import keys as store

router = APIRouter(tags=["keys"])

KeyId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The key's id.")]


class NewKey(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]
    scopes: Annotated[list[Scope], Field(min_length=1, description="What the key may do.")]
    expires_at: AwareDatetime | None = Field(default=None, description="Never, when absent.")


class KeyView(BaseModel):
    key_id: int
    app_id: str
    name: str
    scopes: list[Scope]
    expires_at: datetime | None
    revoked_at: datetime | None
    previous_key_valid_until: datetime | None = Field(
        description="Until when the secret replaced by the last rotation keeps working."
    )
    created_at: datetime

    @classmethod
    def of(cls, key: ApplicationKey) -> "KeyView":
        return cls(
            key_id=key.key_id,
            app_id=key.app_id,
            name=key.name,
            scopes=list(key.scopes),
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
            previous_key_valid_until=key.previous_valid_until(datetime.now(UTC)),
            created_at=key.created_at,
        )


class KeyWithSecret(KeyView):
    api_key: str = Field(description="Shown only now: only its hash is stored.")


def _audited(key: ApplicationKey) -> dict[str, object]:
    """What the audit trail keeps of a new key (never its secret or hash)."""
    return {"name": key.name, "scopes": list(key.scopes), "expires_at": key.expires_at}


def _unknown_key(key_id: int, what: str = "unknown key") -> ApiError:
    return ApiError(
        404, f"This application has no key {key_id}", [ErrorDetail(field="path.key_id", reason=what)]
    )


@router.post(
    "/api/applications/{app_id}/keys",
    status_code=201,
    summary="Make a key with a name, scopes and an optional expiry (its secret is shown once)",
    responses=scoped("manage", 400, 401, 404, 422),
)
async def create_key(
    body: NewKey, caller: AppManager, pool: PoolDep, cache: ApplicationsDep
) -> SuccessResponse[KeyWithSecret]:
    assert caller.application is not None
    for scope in body.scopes:
        if caller.key is not None and scope not in caller.key.scopes:
            raise missing_scope(scope)
    if body.expires_at is not None and body.expires_at <= datetime.now(UTC):
        raise ApiError(
            422, "The key would be expired", [ErrorDetail(field="body.expires_at", reason="is in the past")]
        )
    app_id = caller.application.app_id
    async with pool.acquire() as conn, conn.transaction():
        made, secret = await store.create_key(conn, app_id, body.name, body.scopes, body.expires_at)
        await audit.record(conn, app_id, caller.actor, "key.create", f"key {made.key_id}", _audited(made))
    cache.forget(app_id)
    return SuccessResponse(
        message="Key created; store it now, it is not shown again",
        data=KeyWithSecret(**KeyView.of(made).model_dump(), api_key=secret),
    )


@router.get(
    "/api/applications/{app_id}/keys",
    summary="An application's keys, revoked ones too (never their secrets)",
    responses=scoped("manage", 401, 404, 422),
)
async def list_keys(caller: AppManager, pool: PoolDep) -> SuccessResponse[list[KeyView]]:
    assert caller.application is not None
    found = await store.keys_of(pool, caller.application.app_id)
    return SuccessResponse(message=f"{len(found)} key(s)", data=[KeyView.of(k) for k in found])


@router.post(
    "/api/applications/{app_id}/keys/{key_id}/revoke",
    summary="Revoke a key: it (and a previous secret in its grace period) stops working at once",
    responses=scoped("manage", 401, 404, 422),
)
async def revoke_key(
    key_id: KeyId, caller: AppManager, pool: PoolDep, cache: ApplicationsDep
) -> SuccessResponse[KeyView]:
    assert caller.application is not None
    app_id = caller.application.app_id
    async with pool.acquire() as conn, conn.transaction():
        revoked = await store.revoke_key(conn, app_id, key_id)
        if revoked is None:
            raise _unknown_key(key_id)
        await audit.record(conn, app_id, caller.actor, "key.revoke", f"key {key_id}", {})
    cache.forget(app_id)
    return SuccessResponse(message="Key revoked", data=KeyView.of(revoked))


@router.post(
    "/api/applications/{app_id}/keys/{key_id}/rotate",
    summary="A new secret for a key; the old one keeps working for the grace period",
    responses=scoped("manage", 401, 404, 422),
)
async def rotate_key(
    key_id: KeyId,
    caller: AppManager,
    pool: PoolDep,
    cache: ApplicationsDep,
    settings: SettingsDep,
    grace_s: Annotated[
        int | None,
        Query(
            ge=0, le=30 * 86400, description="Seconds the old secret keeps working (key_rotation_grace_s)."
        ),
    ] = None,
) -> SuccessResponse[KeyWithSecret]:
    assert caller.application is not None
    app_id = caller.application.app_id
    grace = timedelta(seconds=settings.key_rotation_grace_s if grace_s is None else grace_s)
    async with pool.acquire() as conn, conn.transaction():
        rotated = await store.rotate_key(conn, app_id, key_id, grace)
        if rotated is None:
            raise _unknown_key(key_id, "unknown, revoked or expired key")
        changes = {"previous_secret_valid_s": grace.total_seconds()}
        await audit.record(conn, app_id, caller.actor, "key.rotate", f"key {key_id}", changes)
    cache.forget(app_id)
    key, secret = rotated
    return SuccessResponse(
        message="Key rotated; store the new secret now, it is not shown again",
        data=KeyWithSecret(**KeyView.of(key).model_dump(), api_key=secret),
    )
