"""ops.logs: `--log-format json` writes one parseable object per record, with the caller's context."""
from __future__ import annotations

import logging
from pathlib import Path

import orjson

from ops.logs import JsonFormatter


def record(message: str, *args: object, exc: BaseException | None = None, **extra: object) -> logging.LogRecord:
    rec = logging.getLogger("tape.test").makeRecord("tape.test", logging.ERROR, __file__, 1, message, args,
                                                     (type(exc), exc, exc.__traceback__) if exc else None,
                                                     extra=extra)
    return rec


def test_a_record_is_one_json_line_with_its_context() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError as caught:
        line = JsonFormatter().format(record("uncaught exception in %s", "m:f", exc=caught, request_id="abc123",
                                             path="m:f", where=Path("/x")))
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry["level"] == "error" and entry["logger"] == "tape.test"
    assert entry["message"] == "uncaught exception in m:f"
    assert entry["request_id"] == "abc123" and entry["path"] == "m:f" and entry["where"] == "/x"
    assert entry["ts"].endswith("+00:00") and "ValueError: boom" in entry["exc"]


def test_plain_records_carry_only_the_four_fields() -> None:
    entry = orjson.loads(JsonFormatter().format(record("reloaded %d functions", 3)))
    assert set(entry) == {"ts", "level", "logger", "message"} and entry["message"] == "reloaded 3 functions"
