"""`ArchivedLog`: a FileLog read together with the segment archive retention moved its prefix to.

Offsets below the live log's first offset are read from the archive (itself a
FileLog directory, see `log.segment_archive.DirectoryArchive`), the rest from
the live log; appends and truncation are refused. Restore, time travel and the
change stream use it when a data directory has an archive.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

from log.base import Log
from log.errors import LogError
from log.file_log import FileLog
from log.record import Record


class ArchivedLog(Log):
    """Read-only view of `archive` (a FileLog directory) followed by the open FileLog `live`."""

    def __init__(self, archive_dir: str | Path, live: FileLog, *, owns_live: bool = True) -> None:
        """`owns_live=False`: `live` belongs to someone else (a running node) and stays open on `close`."""
        self.archive = FileLog(archive_dir, read_only=True)
        self.live = live
        self.owns_live = owns_live
        self.directory = live.directory

    async def open(self) -> None:
        """Open the archive (the live log is opened by its owner)."""
        await self.archive.open()
        if self.owns_live:
            await self.live.open()
        if self.archive.next_offset() < self.live.first_offset():
            end = self.archive.next_offset()
            await self.archive.close()
            raise LogError(f"the segment archive {self.archive.directory} ends at offset {end} but the log "
                           f"{self.live.directory} starts at {self.live.first_offset()}: offsets in between "
                           "are missing")

    async def close(self) -> None:
        """Close the archive, and the live log if this owns it."""
        await self.archive.close()
        if self.owns_live:
            await self.live.close()

    async def append(self, records: list[Record]) -> None:
        """Refused: read-only."""
        raise LogError(f"{self.directory}: an archived log is read-only")

    def first_offset(self) -> int:
        """The archive's first offset."""
        return self.archive.first_offset()

    def next_offset(self) -> int:
        """The live log's next offset."""
        return self.live.next_offset()

    def last_ts(self) -> int:
        """The live log's last ts."""
        return self.live.last_ts()

    def _split(self) -> int:
        return self.live.first_offset()

    async def read(self, start: int, end: int | None = None, batch: int = 4096) -> AsyncIterator[list[Record]]:
        """Records from the archive below the live log's first offset, then from the live log."""
        async for item in self._both("read", start, end, batch):
            yield item

    async def read_writes(self, start: int, end: int | None = None, batch: int = 4096) -> AsyncIterator[Any]:
        """`FileLog.read_writes` over archive and live log."""
        async for item in self._both("read_writes", start, end, batch):
            yield item

    async def read_changes(self, start: int, end: int | None = None, batch: int = 4096,
                           encode: Any = None) -> AsyncIterator[Any]:
        """`FileLog.read_changes` over archive and live log."""
        async for item in self._both("read_changes", start, end, batch, encode):
            yield item

    async def _both(self, method: str, start: int, end: int | None, batch: int, *more: Any) -> AsyncIterator[Any]:
        split = self._split()
        if start < split:
            async for item in getattr(self.archive, method)(start, split if end is None else min(end, split),
                                                            batch, *more):
                yield item
            start = split
        if end is None or start < end:
            async for item in getattr(self.live, method)(start, end, batch, *more):
                yield item

    async def tail(self, start: int, batch: int = 4096) -> AsyncIterator[list[Record]]:
        """The archived part, then the live log's tail."""
        split = self._split()
        if start < split:
            async for recs in self.archive.read(start, split, batch):
                yield recs
            start = split
        async for recs in self.live.tail(start, batch):
            yield recs

    async def offset_for_timestamp(self, ts: int) -> int:
        """The first offset with ts >= `ts`, from the archive when it is older than the live log."""
        if ts <= self.live.start.prev_ts:
            return await self.archive.offset_for_timestamp(ts)
        return await self.live.offset_for_timestamp(ts)

    async def truncate(self, next_offset: int) -> None:
        """Refused: read-only."""
        raise LogError(f"{self.directory}: an archived log is read-only")


__all__ = ["ArchivedLog"]
