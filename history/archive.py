"""Archives of log records: Avro object container files of the log record schema (v1).

An in-place restore saves the tail it discards as one (``discarded-*.avro``);
`ArchiveLog` reads one back as a read-only `Log` (offsets keep their original
values), so `tape stream --log FILE` and a restore can use it as a source.
Any Avro tool reads the files too.
"""
from __future__ import annotations

import asyncio
import bisect
import os
from pathlib import Path
from typing import Any, AsyncIterator

from fastavro import reader as avro_reader
from fastavro.write import Writer as AvroWriter

from history.errors import RestoreError
from log import Log, LogError
from log.codec import load_schema
from log.directory import fsync_dir
from log.record import Record, Write

ARCHIVE_SCHEMA_VERSION = 1


def _record_to_avro(rec: Record) -> dict[str, Any]:
    return {
        "offset": rec.offset,
        "ts": rec.ts,
        "writes": [{"table": w.table, "id": w.id, "doc": w.doc, "prev": w.prev} for w in rec.writes],
        "session_id": rec.session_id,
        "request_id": rec.request_id,
        "function": rec.function,
        "result": rec.result,
        "extra": dict(rec.extra),
    }


def _record_from_avro(d: dict[str, Any]) -> Record:
    return Record(
        writes=[Write(w["table"], w["id"], w["doc"], w["prev"]) for w in d["writes"]],
        offset=d["offset"], ts=d["ts"], session_id=d["session_id"], request_id=d["request_id"],
        function=d["function"], result=d["result"], extra=dict(d.get("extra") or {}),
    )


async def write_archive(path: Path, batches: AsyncIterator[list[Record]], metadata: dict[str, str] | None = None) -> int:
    """Write records to an Avro object container file (log record schema v1); returns the count.

    Written to ``path.tmp`` and fsynced, then renamed, so `path` only ever holds a complete archive.
    """
    schema = load_schema(ARCHIVE_SCHEMA_VERSION)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    meta = {"tape.kind": "log-records", **(metadata or {})}
    with open(tmp, "wb") as f:
        out = AvroWriter(f, schema, codec="deflate", metadata=meta)
        async for batch in batches:
            for rec in batch:
                out.write(_record_to_avro(rec))
            count += len(batch)
        out.flush()
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return count


class ArchiveLog(Log):
    """A read-only `Log` over an archive file written by `write_archive` (offsets keep their original values)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._offsets: list[int] = []
        self._ts: list[int] = []

    async def open(self) -> None:
        """Scan the archive once for its offsets and timestamps (RestoreError if it is not one)."""
        def scan() -> None:
            with open(self.path, "rb") as f:
                try:
                    for d in avro_reader(f):
                        self._offsets.append(d["offset"])
                        self._ts.append(d["ts"])
                except Exception as exc:
                    raise RestoreError(f"{self.path}: not a Tape record archive ({exc})") from None
        await asyncio.to_thread(scan)

    async def close(self) -> None:
        """Nothing to release."""

    async def append(self, records: list[Record]) -> None:
        """Refused: an archive is read-only."""
        raise LogError(f"{self.path}: an archive is read-only")

    def first_offset(self) -> int:
        """The offset of the first archived record (0 if there is none)."""
        return self._offsets[0] if self._offsets else 0

    def next_offset(self) -> int:
        """One past the last archived offset."""
        return self._offsets[-1] + 1 if self._offsets else 0

    def last_ts(self) -> int:
        """The commit ts of the last archived record (0 if there is none)."""
        return self._ts[-1] if self._ts else 0

    async def read(self, start: int, end: int | None = None, batch: int = 4096) -> AsyncIterator[list[Record]]:
        """Batches of the archived records with start <= offset < end."""
        stop = self.next_offset() if end is None else end
        out: list[Record] = []
        with open(self.path, "rb") as f:
            for d in avro_reader(f):
                off = d["offset"]
                if off < start:
                    continue
                if off >= stop:
                    break
                out.append(_record_from_avro(d))
                if len(out) >= batch:
                    yield out
                    out = []
                    await asyncio.sleep(0)
        if out:
            yield out

    async def tail(self, start: int, batch: int = 4096) -> AsyncIterator[list[Record]]:
        """An archive never grows: this ends after the last record."""
        async for recs in self.read(start, None, batch):
            yield recs

    async def offset_for_timestamp(self, ts: int) -> int:
        """The first archived offset with a commit ts >= `ts` (`next_offset()` if none)."""
        i = bisect.bisect_left(self._ts, ts)
        return self._offsets[i] if i < len(self._offsets) else self.next_offset()

    async def truncate(self, next_offset: int) -> None:
        """Refused: an archive is read-only."""
        raise LogError(f"{self.path}: an archive is read-only")


__all__ = ["ArchiveLog", "write_archive"]
