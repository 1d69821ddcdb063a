"""Logging for every process: one JSON object per line (default) or a line for humans (``--pretty``).

Each record carries ``correlation_id`` and, when it is about one event, ``event_id``: the gateway
sets the correlation id of the request it handles (``correlation_id`` below); the worker and the
sinks pass both with ``extra=event_context(event)``, taking the correlation id from the event's
metadata, so one grep follows an event from its request to its last delivery.
"""

import logging
import logging.config
import sys
from contextvars import ContextVar
from types import TracebackType
from typing import Any

from schemas import EventEnvelope

correlation_id: ContextVar[str] = ContextVar("correlation_id", default="-")


class ContextFilter(logging.Filter):
    """Adds ``correlation_id`` (the request's, unless the record brings its own) and ``event_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "correlation_id"):
            record.correlation_id = correlation_id.get()
        if not hasattr(record, "event_id"):
            record.event_id = None
        return True


def event_context(event: EventEnvelope) -> dict[str, str]:
    """``extra=`` for a log line about ``event``."""
    return {"event_id": str(event.event_id), "correlation_id": event.metadata.correlation_id or "-"}


def logging_config(level: str, pretty: bool, process: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for one process (faust's worker takes it as it is)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s %(event_id)s",
                "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
                "static_fields": {"process": process},
            },
            "pretty": {
                "format": "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s] %(message)s",
            },
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "pretty" if pretty else "json",
                "filters": ["context"],
            }
        },
        "root": {"level": level.upper(), "handlers": ["default"]},
    }


def configure(level: str, pretty: bool, process: str) -> None:
    """Log as ``logging_config`` says; Python's warnings and an exception nothing caught, which
    Python would print to stderr as bare text, become log records too."""
    logging.config.dictConfig(logging_config(level, pretty, process))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("vdip").critical("uncaught exception: %r", value, exc_info=(kind, value, tb))
