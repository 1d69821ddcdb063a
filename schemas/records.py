"""Batch records: one Kafka record that carries many values of a topic.

A record of ``events`` or ``events.routed`` holds one value (a JSON object), or, as a *batch
record*, a JSON array of such values, in order. The gateway writes a batch request this way and
the router its routed events, so Kafka, faust and the consumers pay their per-record cost once
per batch; each value is then read, validated and, when invalid, dead-lettered on its own.
"""

from dataclasses import dataclass
from typing import TypeVar

import orjson
from pydantic import TypeAdapter, ValidationError

T = TypeVar("T")

RECORD_BYTES = 900_000  # below the broker's default max.message.bytes (1 MiB), with room


def batch_records(values: list[bytes], limit: int = RECORD_BYTES) -> list[tuple[bytes, int]]:
    """Serialised values as few records as fit in ``limit`` bytes each: one value alone is itself;
    several, in order, a JSON array (a batch record). Each record with how many values it holds."""
    records: list[tuple[bytes, int]] = []
    chunk: list[bytes] = []
    size = 1  # "[" and, per value, the value and a "," or "]"
    for value in values:
        if chunk and size + len(value) + 1 > limit:
            records.append(_record(chunk))
            chunk, size = [], 1
        chunk.append(value)
        size += len(value) + 1
    if chunk:
        records.append(_record(chunk))
    return records


def _record(chunk: list[bytes]) -> tuple[bytes, int]:
    return (chunk[0] if len(chunk) == 1 else b"[" + b",".join(chunk) + b"]"), len(chunk)


@dataclass(frozen=True)
class Invalid:
    """What in a record is not a valid value: why, and (for one value of a batch record) that
    value alone, to dead-letter without the valid ones."""

    reason: str
    value: bytes | None = None


def rejection_reason(error: ValidationError) -> str:
    """A short, header-sized account of why a value is not valid."""
    parts = []
    for item in error.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "<record>"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)[:1000]


def parse_batch(
    value: bytes | None, one: TypeAdapter[T], many: TypeAdapter[list[T]]
) -> list[tuple[int | None, T | Invalid]]:
    """The values of a record, each with its position in a batch record (None for a record that
    is one value), validated by ``one`` (``many``: the same type's list); what is not valid comes
    as ``Invalid``."""
    if value is None or value.lstrip()[:1] != b"[":
        if value is None:
            return [(None, Invalid("<record>: a null value (a tombstone)"))]
        try:
            return [(None, one.validate_json(value))]
        except ValidationError as exc:
            return [(None, Invalid(rejection_reason(exc)))]
    try:
        parsed = many.validate_json(value)  # the common case: every value valid
        if parsed:
            return list(enumerate(parsed))
    except ValidationError:
        pass
    try:
        items = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return [(None, Invalid(f"<record>: Invalid JSON: {exc}"))]
    if not items:
        return [(None, Invalid("<record>: an empty batch"))]
    found: list[tuple[int | None, T | Invalid]] = []
    for index, item in enumerate(items):
        try:
            found.append((index, one.validate_python(item)))
        except ValidationError as exc:
            found.append((index, Invalid(rejection_reason(exc), orjson.dumps(item))))
    return found
