"""The retention window: which part of the log a deployment keeps, and removing what falls out of it.

``tape serve --retain 30d`` keeps the last 30 days of history. `apply_retention`
(run periodically by the committer, `run_retention`) removes the full FileLog
segments that are wholly older than the window *and* covered by a checkpoint:
the newest checkpoint taken at or before the window's start (the checkpoint
policy always keeps it). Every point in the window is then "that checkpoint +
a replay of the log after it". Removed segments go to a `SegmentArchive`
(by default the directory ``DATA/log-archive``, `log.segment_archive`) or,
with ``--archive none``, are deleted.

Points before the window are refused with `window_error`, which names the
window; a data directory with an archive still serves them (`log.archived_log`).
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from history.points import format_ns
from log.file_log import FileLog
from log.segment_archive import DirectoryArchive, SegmentArchive
from projections.checkpoints import list_checkpoints, verify

log = logging.getLogger("tape.retention")

ARCHIVE_DIR = "log-archive"
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30d``, ``12h``, ``90m``, ``45s``, ``500ms`` or a bare number of seconds."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration (examples: 30d, 12h, 15m, 10s, 500ms)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def format_duration(seconds: float) -> str:
    """A duration in the largest whole unit (``30d``, ``90s``)."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def first_offset_of(log_: Any) -> int:
    """`log_.first_offset()`, or 0 for a log-like object without one."""
    first = getattr(log_, "first_offset", None)
    return first() if first is not None else 0


def default_archive(data_dir: Path) -> DirectoryArchive:
    """The default segment archive of a data directory: DATA/log-archive."""
    return DirectoryArchive(Path(data_dir) / ARCHIVE_DIR)


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep `window_s` seconds of history; removed segments go to `archive` (None: deleted)."""

    window_s: float
    archive: SegmentArchive | None = None

    def describe(self) -> str:
        where = f"archived to {self.archive.describe()}" if self.archive is not None else "deleted"
        return f"--retain {format_duration(self.window_s)} (older segments {where})"


@dataclass
class RetentionResult:
    """What one pass removed."""

    first_offset_before: int
    first_offset_after: int
    covering_checkpoint: int | None

    @property
    def removed_records(self) -> int:
        return self.first_offset_after - self.first_offset_before


async def apply_retention(log_: FileLog, data_dir: Path, policy: RetentionPolicy,
                          now_ns: int | None = None) -> RetentionResult:
    """Remove the segments wholly before the window and covered by a checkpoint (see the module docstring)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    cutoff = now_ns - int(policy.window_s * 1e9)
    before = log_.first_offset()
    covering = None
    for info in reversed(list_checkpoints(data_dir)):
        if info.ts <= cutoff and await verify(info, log_):
            covering = info
            break
    if covering is None:
        return RetentionResult(before, before, None)
    # Every record at or before the checkpoint has ts <= its ts <= cutoff: wholly older than the window.
    after = await log_.drop_prefix(covering.offset + 1, policy.archive)
    if after > before:
        log.info("retention: removed offsets %d..%d (%s); covered by the checkpoint at offset %d",
                 before, after - 1, policy.describe(), covering.offset)
    return RetentionResult(before, after, covering.offset)


async def run_retention(log_: FileLog, data_dir: Path, policy: RetentionPolicy, interval: float) -> None:
    """Background task: `apply_retention` every `interval` seconds; failures are logged and retried."""
    while True:
        await asyncio.sleep(interval)
        try:
            await apply_retention(log_, data_dir, policy)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention pass failed; retrying in %.1fs", interval)


async def window_start(log_: Any, data_dir: Path | None) -> int:
    """The oldest offset whose state can be rebuilt: -1 (empty) if the log starts at 0, else the oldest
    checkpoint that belongs to the log (the log's first offset - 1 if none does: nothing is restorable before)."""
    first = first_offset_of(log_)
    if first == 0:
        return -1
    for info in list_checkpoints(data_dir) if data_dir is not None else []:
        if await verify(info, log_):
            return info.offset
    return log_.next_offset()


def window_error(log_: Any, asked: str, oldest: int, window: str | None = None) -> str:
    """The message for a point before the window: names the window and what to do."""
    first = first_offset_of(log_)
    start = getattr(log_, "start", None)
    since = f" (records after ts {start.prev_ts}, {format_ns(start.prev_ts)})" if start is not None else ""
    kept = f"the retention window ({window}) " if window else "retention "
    oldest_text = (f"the oldest point that can be rebuilt is offset {oldest}"
                   if oldest < log_.next_offset() else "no checkpoint covers the start of the log")
    return (f"{asked} is outside the retention window: {kept}removed the log before offset {first}{since}, and "
            f"{oldest_text}. Pick a later point, or use the segment archive (DATA/{ARCHIVE_DIR}) if it was kept.")


__all__ = ["ARCHIVE_DIR", "RetentionPolicy", "RetentionResult", "apply_retention", "default_archive", "first_offset_of",
           "format_duration", "parse_duration", "run_retention", "window_error", "window_start"]
