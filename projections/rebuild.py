"""Replaying the commit log into a projection (a fresh rebuild, or catching up).

The log is read through its ``read(start, end)`` async batch iterator (``end``
exclusive) and applied in atomic batches of about `BATCH_RECORDS` records.
A log that offers ``read_writes(start, end, batch, prepare, forked)`` (the
FileLog) is read through that instead: it yields each batch's writes
flattened, straight from the frames, without building `Record` objects. For a
long replay with a core to spare (``reads_forked``) the frames are decoded in
a child process (`log.forked`), which also computes the writes' index keys
(the projection's `WritePreparer`) and works ahead on the next batches while
`Projection.apply_prepared` folds this one in. (Threads do not help here:
decoding, key computation and the RocksDB write all hold the GIL.)
"""
from __future__ import annotations

import asyncio
import os
import time
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
    tracking = projection.track_new_documents()
    try:
        read_writes = getattr(log, "read_writes", None)
        if read_writes is not None:
            return await _catch_up_writes(projection, log, read_writes, start, upto, progress, batch_records)
        return await _catch_up_records(projection, log, start, upto, progress, batch_records)
    finally:
        if tracking:
            projection.track_new_documents(False)


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
    projection: Projection, log: Any, read_writes: Any, start: int, upto: int | None, progress: Progress | None,
    batch_records: int,
) -> int:
    """`catch_up` through the log's ``read_writes``: one atomic batch per batch read.

    When the log decodes in a child process (``reads_forked``), the child also
    computes the writes' index keys (`Projection.write_preparer`), leaving
    `Projection.apply_prepared` what depends on the projection's state;
    otherwise `Projection.apply_writes` does it all (cheaper in one process).
    A child that cannot keep up (no core to spare after all) is dropped for
    the in-process path (see `_Pace`).
    """
    end = None if upto is None else upto + 1
    reads_forked = getattr(log, "reads_forked", None)
    forked = bool(reads_forked is not None and reads_forked(start, end, watched=True))
    while True:
        prepare = projection.write_preparer() if forked else None
        batches = read_writes(projection.applied_offset + 1, end, batch_records, prepare=prepare, forked=forked)
        pace = _Pace() if forked else None
        try:
            async for writes, _count, last_offset, last_ts in batches:
                if pace is not None:
                    pace.received()
                if prepare is None:
                    projection.apply_writes(writes, last_offset, last_ts)
                else:
                    projection.apply_prepared(writes, last_offset, last_ts)
                if progress is not None:
                    progress(projection.applied_offset, projection.applied_offset - start + 1)
                if pace is not None and pace.applied():
                    break  # the child falls behind: on in this process
                await asyncio.sleep(0)  # let the event loop breathe between batches
            else:
                break
        finally:
            aclose = getattr(batches, "aclose", None)
            if aclose is not None:
                await aclose()
        forked = False
    return projection.applied_offset - start + 1


class _Pace:
    """Whether replaying from a child process still pays: how long this side waits for it.

    Applying a prepared batch costs this process a little over half (~57%) of
    doing the whole batch itself, so once the time spent waiting for the
    child's batches exceeds about three quarters of the time spent applying
    them (judged over a dozen batches, as the child may share a CPU for a
    while, e.g. with a restore's log copy), the child runs slower than this
    process would alone: no core is free for it.
    """

    WARMUP_BATCHES = 3  # not judged: the child starts slowly (copy-on-write faults, cold caches)
    MIN_BATCHES = 12
    MAX_WAIT_SHARE = 0.75

    def __init__(self) -> None:
        self._mark = time.perf_counter()
        self._waited = 0.0
        self._applying = 0.0
        self._batches = 0

    def received(self) -> None:
        """A batch arrived (the time since the last one was applied was spent waiting)."""
        now = time.perf_counter()
        if self._batches >= self.WARMUP_BATCHES:
            self._waited += now - self._mark
        self._mark = now

    def applied(self) -> bool:
        """A batch was applied; returns whether to give up on the child."""
        now = time.perf_counter()
        if self._batches >= self.WARMUP_BATCHES:
            self._applying += now - self._mark
        self._mark = now
        self._batches += 1
        return self._batches >= self.MIN_BATCHES and self._waited > self.MAX_WAIT_SHARE * self._applying
