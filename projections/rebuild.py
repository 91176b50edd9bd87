"""Replaying the commit log into a projection (a fresh rebuild, or catching up).

The log is read through its ``read(start, end)`` async batch iterator (``end``
exclusive) and applied in atomic batches of about `BATCH_RECORDS` records.
(Writing each batch from a worker thread while preparing the next was tried:
with keys written in sorted order the RocksDB write is a small share of the
cost, and the GIL hand-offs cost more than the overlap saved.)
"""
from __future__ import annotations

import asyncio
import os
from typing import Any, Callable, Mapping

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

    Returns the number of records applied.
    """
    start = projection.applied_offset + 1
    if upto is not None and upto < start:
        return 0
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
