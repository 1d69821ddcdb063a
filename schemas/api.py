"""The HTTP answer envelope: ``{"success", "message", "data"}``, and its error form."""

from typing import Generic, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


class SuccessResponse(BaseModel, Generic[T]):
    success: bool = True
    message: str
    data: T


class ErrorDetail(BaseModel):
    field: str = Field(description="Where the problem is, e.g. 'body.payload' or 'path.app_id'.")
    reason: str


class ErrorResponse(BaseModel):
    success: bool = False
    message: str
    errors: list[ErrorDetail] = Field(default_factory=list)
