"""Replaying the commit log into a projection (a fresh rebuild, or catching up).

The log is read through its ``read(start, end)`` async batch iterator (``end``
exclusive) and applied in atomic batches of about `BATCH_RECORDS` records.
A log that can also yield each batch's writes flattened, straight from its
frames, without building `Record` objects (`log.base.ReadsFlatWrites`: the
FileLog) is read that way instead, each batch applied with
`Projection.apply_writes`. Replay runs in this process: decoding the log,
computing index keys and writing RocksDB all hold the GIL, and handing the
decoding to a child process was measured slower whenever no core is idle
(docs/architecture.md, "Decisions").
"""
from __future__ import annotations

import asyncio
import os
from typing import Any, Callable, Mapping

from log.base import ReadsFlatWrites
from log.record import Record

from .errors import ProjectionError
from .store import Projection

BATCH_RECORDS = 2048

Progress = Callable[[int, int], Any]
"""``progress(applied_offset, records_applied_so_far)``, called after each applied batch."""


async def rebuild(
    log: Any,
    path: str | os.PathLike[str],
    indexes: Mapping[str, Mapping[str, list[str]]] | None,
    upto: int | None = None,
    progress: Progress | None = None,
) -> Projection:
    """Build a fresh projection at `path` from the log, through offset `upto` (inclusive; None: the end).

    `path` must not exist or be an empty directory. Returns the open projection.
    """
    path = os.fspath(path)
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ProjectionError(f"{path}: rebuild needs a new or empty directory")
    projection = Projection(path, indexes or {})
    try:
        await catch_up(projection, log, upto, progress)
    except BaseException:
        projection.close()
        raise
    return projection


async def catch_up(
    projection: Projection,
    log: Any,
    upto: int | None = None,
    progress: Progress | None = None,
    batch_records: int = BATCH_RECORDS,
) -> int:
    """Apply log records after `projection.applied_offset` through `upto` (inclusive; None: the end).

    `log` needs ``read(start, end, batch)`` (a `log.base.Log` has it).
    Returns the number of records applied.
    """
    start = projection.applied_offset + 1
    if upto is not None and upto < start:
        return 0
    tracking = projection.track_new_documents()
    projection.bulk_search(True)  # search indexes commit once, at the end
    try:
        if isinstance(log, ReadsFlatWrites):
            return await _catch_up_writes(projection, log, start, upto, progress, batch_records)
        return await _catch_up_records(projection, log, start, upto, progress, batch_records)
    finally:
        if tracking:
            projection.track_new_documents(False)
        await asyncio.to_thread(projection.bulk_search, False)


async def _catch_up_records(
    projection: Projection, log: Any, start: int, upto: int | None, progress: Progress | None,
    batch_records: int,
) -> int:
    """`catch_up` through the log's ``read``, in batches of about `batch_records` records."""
    buffer: list[Record] = []

    async def flush() -> None:
        nonlocal buffer
        records, buffer = buffer, []
        projection.apply(records)
        if progress is not None:
            progress(projection.applied_offset, projection.applied_offset - start + 1)
        await asyncio.sleep(0)  # let the event loop breathe between batches

    batches = log.read(start) if upto is None else log.read(start, upto + 1)
    try:
        done = False
        async for batch in batches:
            for record in batch:
                if upto is not None and record.offset > upto:
                    done = True
                    break
                buffer.append(record)
            if len(buffer) >= batch_records:
                await flush()
            if done:
                break
        if buffer:
            await flush()
    finally:
        aclose = getattr(batches, "aclose", None)
        if aclose is not None:
            await aclose()
    return projection.applied_offset - start + 1


async def _catch_up_writes(
    projection: Projection, log: ReadsFlatWrites, start: int, upto: int | None, progress: Progress | None,
    batch_records: int,
) -> int:
    """`catch_up` through the log's ``read_writes``: one atomic batch (`Projection.apply_writes`) per batch read."""
    end = None if upto is None else upto + 1
    batches = log.read_writes(start, end, batch_records)
    try:
        async for writes, _count, last_offset, last_ts in batches:
            projection.apply_writes(writes, last_offset, last_ts)
            if progress is not None:
                progress(projection.applied_offset, projection.applied_offset - start + 1)
            await asyncio.sleep(0)  # let the event loop breathe between batches
    finally:
        aclose = getattr(batches, "aclose", None)
        if aclose is not None:
            await aclose()
    return projection.applied_offset - start + 1
