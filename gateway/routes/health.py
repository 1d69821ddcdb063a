"""Service info, liveness and readiness."""

import asyncio
import time
from datetime import timedelta
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from gateway.deps import PoolDep, ProducerDep
from schemas import SuccessResponse

router = APIRouter(tags=["health"])
_STARTED = time.monotonic()


def _uptime() -> tuple[str, float]:
    seconds = time.monotonic() - _STARTED
    return str(timedelta(seconds=int(seconds))), round(seconds, 3)


class ServiceInfo(BaseModel):
    name: str = "Versatile Data Ingestion Platform"
    version: str
    docs: str = "/docs"
    openapi: str = "/openapi.json"
    status: Literal["ok"] = "ok"
    uptime: str = Field(description="How long this process has run, as H:MM:SS (the original API's form).")
    uptime_s: float = Field(description="The same, in seconds.")


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"
    uptime: str = Field(description="How long this process has run, as H:MM:SS (the original API's form).")
    uptime_s: float = Field(description="The same, in seconds.")


class Check(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    ready: bool
    kafka: Check
    postgres: Check


@router.get("/", summary="What this service is")
async def root() -> SuccessResponse[ServiceInfo]:
    from importlib.metadata import version

    uptime, uptime_s = _uptime()
    info = ServiceInfo(version=version("vdip"), uptime=uptime, uptime_s=uptime_s)
    return SuccessResponse(message="Versatile Data Ingestion Platform", data=info)


@router.get("/health", summary="Liveness: the process answers")
async def health() -> SuccessResponse[Liveness]:
    uptime, uptime_s = _uptime()
    return SuccessResponse(message="alive", data=Liveness(uptime=uptime, uptime_s=uptime_s))


async def _postgres(pool: PoolDep) -> Check:
    try:
        await asyncio.wait_for(pool.fetchval("SELECT 1"), 3)
    except Exception as exc:
        return Check(ok=False, detail=f"{type(exc).__name__}: {exc}")
    return Check(ok=True, detail="SELECT 1 answered")


@router.get(
    "/health/ready",
    summary="Readiness: Kafka and PostgreSQL answer",
    responses={503: {"model": SuccessResponse[Readiness], "description": "Not ready"}},
)
async def ready(pool: PoolDep, producer: ProducerDep) -> JSONResponse:
    (kafka_ok, kafka_detail), postgres = await asyncio.gather(producer.ready(), _postgres(pool))
    readiness = Readiness(
        ready=kafka_ok and postgres.ok, kafka=Check(ok=kafka_ok, detail=kafka_detail), postgres=postgres
    )
    body: SuccessResponse[Readiness] = SuccessResponse(
        success=readiness.ready, message="ready" if readiness.ready else "not ready", data=readiness
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if readiness.ready else 503)


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    """The gateway's Prometheus metrics (see vdip/metrics.py), in the text exposition format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
