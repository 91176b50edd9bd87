"""How `tape` logs: readable lines (the default) or one JSON object per line (`--log-format json`).

JSON lines carry ``ts`` (UTC, ISO-8601 with microseconds), ``level``, ``logger`` and
``message``; a record logged with ``extra={"request_id": ..., "path": ...}`` (an
uncaught exception in a function, say) carries those fields too, and one with an
exception its traceback as ``exc``.
"""
from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from typing import Any

import orjson

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; any other one came from `extra=` and is copied into the JSON object.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="microseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():  # what the caller passed in `extra`
            if name not in _STANDARD and value is not None and name not in entry:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


def configure_logging(*, log_format: str = "text", level: str = "warning", tape_level: str | None = None) -> None:
    """Log to stderr in `log_format` at `level`; Tape's own loggers (``tape.*``) at `tape_level` if given."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("tape").setLevel((tape_level or level).upper())


__all__ = ["FORMATS", "JsonFormatter", "LEVELS", "configure_logging"]
