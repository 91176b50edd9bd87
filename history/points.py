"""Points in a log's history, and where they fall in a given log.

The unit of history is the transaction: the state "as of TIME" holds exactly
the records committed at or before TIME (never part of one). TIME is one of

* ``offset:N``   — the state after log record N (offsets start at 0; ``offset:-1`` is empty),
* ``ts:N`` or a bare integer — a commit timestamp in ns since the epoch (records with ts <= N),
* an ISO-8601 time (``2024-05-01T12:00:00.123456789Z``; no zone = local time),
* ``end`` / ``now`` — everything in the log.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from history.errors import RestoreError
from log.record import Record


@dataclass(frozen=True)
class Point:
    """A parsed TIME: kind is "offset" (state after record N), "ts" (records with ts <= N) or "end"."""

    kind: str
    value: int | None = None

    def describe(self) -> str:
        """The point in words, for reports."""
        if self.kind == "end":
            return "the end of the log"
        if self.kind == "offset":
            return f"offset {self.value}"
        return f"ts {self.value} ({format_ns(self.value or 0)})"


_FRACTION = re.compile(r"^(.*\d{2}:\d{2}:\d{2})[.,](\d{1,9})(.*)$")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def iso_to_ns(text: str) -> int:
    """Nanoseconds since the epoch of an ISO-8601 time (up to 9 fractional digits; naive = local time)."""
    text = text.strip()
    frac_ns = 0
    m = _FRACTION.match(text)
    if m:
        text = m.group(1) + m.group(3)
        frac_ns = int(m.group(2).ljust(9, "0"))
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 time") from None
    if when.tzinfo is None:
        when = when.astimezone()
    seconds = (when - _EPOCH) // dt.timedelta(seconds=1)
    return seconds * 1_000_000_000 + when.microsecond * 1000 + frac_ns


def format_ns(ts: int) -> str:
    """An ns timestamp as ISO-8601 UTC with nanoseconds."""
    seconds, ns = divmod(ts, 1_000_000_000)
    base = dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ns:09d}Z"


def parse_point(text: str, bare: str = "ts") -> Point:
    """Parse TIME (see the module docstring); a bare integer is a `bare` ("ts" or "offset")."""
    t = str(text).strip()
    low = t.lower()
    try:
        if low in ("end", "now", "latest"):
            return Point("end")
        if low.startswith("offset:"):
            n = int(t[7:])
            if n < -1:
                raise ValueError("an offset is -1 (empty) or more")
            return Point("offset", n)
        if low.startswith("ts:"):
            n = int(t[3:])
            if n < 0:
                raise ValueError("a timestamp is not negative")
            return Point("ts", n)
        if re.fullmatch(r"-?\d+", t):
            n = int(t)
            if bare == "offset":
                if n < -1:
                    raise ValueError("an offset is -1 (empty) or more")
                return Point("offset", n)
            if n < 0:
                raise ValueError("a timestamp is not negative")
            return Point("ts", n)
        return Point("ts", iso_to_ns(t))
    except ValueError as exc:
        raise RestoreError(f"cannot read the time {text!r}: {exc} (use an ISO-8601 time, a commit ts in ns, "
                           "ts:N, offset:N or end)") from None


async def resolve_point(log_: Any, point: Point, *, strict_offset: bool = True) -> int:
    """The last offset included at `point` (-1: none) in `log_`."""
    end = log_.next_offset()
    if point.kind == "end":
        return end - 1
    if point.kind == "offset":
        assert point.value is not None
        if point.value > end - 1 and strict_offset:
            raise RestoreError(f"offset {point.value} is past the end of the log (its last offset is {end - 1})")
        return min(point.value, end - 1)
    assert point.value is not None
    start = getattr(log_, "start", None)
    if start is not None and log_.first_offset() > 0 and point.value < start.prev_ts:
        raise RestoreError(f"{point.describe()} is outside the retention window: retention removed the log "
                           f"before offset {log_.first_offset()} (records after ts {start.prev_ts}, "
                           f"{format_ns(start.prev_ts)}). Pick a later point, or restore from a data directory "
                           "whose segment archive (DATA/log-archive) holds it.")
    return await log_.offset_for_timestamp(point.value + 1) - 1


async def record_at(log_: Any, offset: int) -> Record | None:
    """The record at `offset` (None if out of range)."""
    if offset < 0 or offset >= log_.next_offset():
        return None
    async for batch in log_.read(offset, offset + 1):
        for rec in batch:
            if rec.offset == offset:
                return rec
    return None


__all__ = ["Point", "format_ns", "iso_to_ns", "parse_point", "record_at", "resolve_point"]
