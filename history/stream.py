"""Change data capture: export the change events of a log's records to a sink, resumably.

`run_stream` reads records from a start offset (through an end, or following
new commits), hands each batch to a `Sink` (`history.sinks`), commits the
sink and then saves the next offset with `StreamState`, so a restarted export
continues without gaps (at-least-once: the batch in flight at a crash is sent
again; every event carries its ``source.offset``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import orjson

from history.errors import StreamError
from history.retention import first_offset_of, window_error
from history.points import parse_point
from history.sinks import Sink
from log.base import ReadsChanges

# ----------------------------------------------------------------- position state


class StreamState:
    """The exporter's own position: ``{"next_offset": N, ...}`` in a small JSON file, replaced atomically."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any] | None:
        """The saved state (None if there is no file yet; StreamError if it is unreadable)."""
        try:
            state = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise StreamError(f"{self.path}: unreadable state file ({exc})") from None
        if type(state) is not dict or type(state.get("next_offset")) is not int:
            raise StreamError(f"{self.path}: not a tape stream state file")
        return state

    def save(self, next_offset: int, **extra: Any) -> None:
        """Durably replace the state with `next_offset` (and `extra` fields)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        body = orjson.dumps({"next_offset": next_offset, "updated_ns": time.time_ns(), **extra})
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent if str(self.path.parent) else ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ----------------------------------------------------------------- the export loop


@dataclass
class StreamStats:
    """What an export did so far."""

    records: int = 0
    events: int = 0
    seconds: float = 0.0
    next_offset: int = 0

    @property
    def events_per_second(self) -> float:
        """Events exported per second (0 before any time has passed)."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def run_stream(
    log_: Any,
    start: int,
    sink: Sink,
    *,
    follow: bool = False,
    until: int | None = None,
    state: StreamState | None = None,
    batch: int = 4096,
    on_batch: Callable[[StreamStats], Any] | None = None,
    state_extra: dict[str, Any] | None = None,
    stats: StreamStats | None = None,
) -> StreamStats:
    """Export the events of records from `start` (through `until`, inclusive) to `sink`.

    Without `follow` it stops at the end of the log as it is when called; with
    `follow` it waits for new records until cancelled. After each batch the
    sink commits and `state` records the next offset.
    """
    stats = stats if stats is not None else StreamStats()
    stats.next_offset = start
    began = time.perf_counter()
    end = None if follow else log_.next_offset()
    if until is not None:
        end = until + 1 if end is None else min(end, until + 1)
    if end is not None and start >= end:
        stats.seconds = time.perf_counter() - began
        return stats
    flat_encoder = getattr(sink, "flat_encoder", None)
    if end is not None and isinstance(log_, ReadsChanges) and flat_encoder is not None:
        # The fast path: records decoded flat and encoded where they are read (see `FileLog.read_changes`).
        changes = log_.read_changes(start, end, batch, flat_encoder())
        try:
            async for encoded, count, last_offset in changes:
                stats.events += await sink.write_encoded(encoded)  # type: ignore[attr-defined]
                stats.records += count
                if await _batch_done(sink, stats, last_offset + 1, began, state, state_extra, on_batch, end):
                    break
        finally:
            await changes.aclose()  # type: ignore[attr-defined]
            stats.seconds = time.perf_counter() - began
        return stats
    batches = log_.tail(start, batch) if end is None else log_.read(start, end, batch)
    try:
        async for records in batches:
            if end is not None and records[-1].offset >= end:
                records = [r for r in records if r.offset < end]
                if not records:
                    break
            stats.events += await sink.write(records)
            stats.records += len(records)
            if await _batch_done(sink, stats, records[-1].offset + 1, began, state, state_extra, on_batch, end):
                break
    finally:
        aclose = getattr(batches, "aclose", None)
        if aclose is not None:
            await aclose()
        stats.seconds = time.perf_counter() - began
    return stats


async def _batch_done(
    sink: Sink, stats: StreamStats, next_offset: int, began: float, state: StreamState | None,
    state_extra: dict[str, Any] | None, on_batch: Callable[[StreamStats], Any] | None, end: int | None,
) -> bool:
    """After a batch was written: commit the sink, save the state, report; returns whether `end` is reached."""
    await sink.commit()
    stats.next_offset = next_offset
    if state is not None:
        state.save(stats.next_offset, **(state_extra or {}))
    stats.seconds = time.perf_counter() - began
    if on_batch is not None:
        on_batch(stats)
    return end is not None and stats.next_offset >= end


async def start_offset(log_: Any, text: str | None) -> int:
    """The first offset to export for --from TEXT (bare number = offset)."""
    first = first_offset_of(log_)
    if text is None:
        return first  # from the oldest record the log still holds
    point = parse_point(text, bare="offset")
    if point.kind == "end":
        return log_.next_offset()
    assert point.value is not None
    if point.kind == "offset":
        if point.value < first:
            raise StreamError(window_error(log_, f"--from offset {point.value}", first))
        return max(point.value, 0)
    start = getattr(log_, "start", None)
    if first > 0 and start is not None and point.value <= start.prev_ts:
        raise StreamError(window_error(log_, f"--from {text}", first))
    return await log_.offset_for_timestamp(point.value)


__all__ = ["StreamState", "StreamStats", "run_stream", "start_offset"]
