"""Jobs on the wire: a replay asked for, and where a job stands (``jobs``, ``sinks.jobs``)."""

from datetime import datetime
from enum import StrEnum
from typing import Any, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from schemas.events import EventType, UtcDatetime


class JobState(StrEnum):
    """``jobs.state``: queued, running (under a runner's lease), then done, failed or cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = {JobState.DONE, JobState.FAILED, JobState.CANCELLED}


class ReplayRequest(BaseModel):
    """Route the application's stored events received in [start, end) again through its active
    rules (``rule_ids``: only those), delivering what was not delivered yet (``force``: all)."""

    model_config = ConfigDict(extra="forbid")

    start: UtcDatetime = Field(description="The first moment of the range (received_at, inclusive).")
    end: UtcDatetime = Field(description="The end of the range (received_at, exclusive).")
    event_type: EventType | None = Field(default=None, description="Only events of this type.")
    rule_ids: list[PositiveInt] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Only these of the application's active rules (default: all of them).",
    )
    events_per_s: float | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        description="The most events a second it goes through (default: VDIP_REPLAY_EVENTS_PER_S).",
    )
    force: bool = Field(
        default=False,
        description="Deliver again what was delivered (or failed) already, under the same delivery_id;"
        " without it, only the (event, rule) pairs never delivered are.",
    )

    @model_validator(mode="after")
    def _range(self) -> Self:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class JobView(BaseModel):
    """Where a job stands. ``percent`` and ``eta_s`` are estimates: the range's events were counted
    when the job was made."""

    job_id: UUID
    app_id: str
    kind: str
    state: JobState
    params: dict[str, Any] = Field(
        description="What it was asked to do (a replay: its request; a subject's deletion: its path,"
        " how many values, and whether they are suppressed)."
    )
    total: int = Field(description="Events in its range (a deletion: stored) when the job was made.")
    scanned: int = Field(description="Events gone through (a deletion: deleted).")
    sent: int = Field(description="Deliveries sent.")
    skipped: int = Field(description="Deliveries made already, not sent again (without force).")
    percent: float
    eta_s: float | None = Field(description="Seconds left at the pace so far (while it runs).")
    error: str | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, row: Any) -> "JobView":
        values = dict(row)
        total, scanned, state = values["total"], values["scanned"], JobState(values["state"])
        percent = 100.0 if state == JobState.DONE else min(100.0, 100.0 * scanned / total) if total else 0.0
        eta_s = None
        started = values["started_at"]
        if state == JobState.RUNNING and started is not None and scanned:
            elapsed = (values["updated_at"] - started).total_seconds()
            eta_s = max(0.0, (total - scanned) * elapsed / scanned) if elapsed > 0 else None
        if isinstance(values["params"].get("values"), list):  # a subject's: never repeated
            values["params"] = {**values["params"], "values": len(values["params"]["values"])}
        return cls(**values, percent=round(percent, 1), eta_s=eta_s)
