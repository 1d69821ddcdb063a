"""What the dashboard needs beyond the other APIs: rule match counts, and the page itself (static
files in ``gateway/dashboard/``, no build step)."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from gateway.deps import AppReader, PoolDep
from gateway.responses import scoped
from schemas import SuccessResponse
from vdip.store import rules

router = APIRouter(tags=["dashboard"])
PAGE = StaticFiles(directory=Path(__file__).resolve().parent.parent / "dashboard", html=True)


class RuleActivity(BaseModel):
    rule_id: int
    rule_name: str
    destination_type: str
    is_active: bool
    matches: int
    delivered: int
    failed: int


@router.get(
    "/api/statistics/rules/{app_id}",
    summary="Each of an application's rules with how many events it matched, delivered and failed",
    responses=scoped("read", 401, 404, 422),
)
async def rule_activity(caller: AppReader, pool: PoolDep) -> SuccessResponse[list[RuleActivity]]:
    assert caller.application is not None
    rows = await rules.activity(pool, caller.application.app_id)
    return SuccessResponse(message=f"{len(rows)} rule(s)", data=[RuleActivity(**dict(r)) for r in rows])
