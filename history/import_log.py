"""The shared steps of building a new data directory from imported documents.

`tape import` of a Tape snapshot and of a Convex ZIP both write the documents
as import records into a fresh FileLog in a work directory beside the
destination, rebuild the projection from that log, and then publish the
directory with one rename (`log.directory.move_into_place`).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from history.errors import SnapshotError
from history.progress import Reporter
from log import FileLog
from log.record import Record
from projections.rebuild import rebuild

APPEND_GROUP = 16  # import records per log append


def new_work_dir(dest: Path, pid: int) -> Path:
    """The work directory the import of `dest` builds in; refuses a `dest` that exists and is not empty."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise SnapshotError(f"{dest} exists and is not empty: import into a new data directory")
    work = dest.parent / f".{dest.name}.importing-{pid}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


async def append_table(log_: FileLog, records: Iterable[tuple[Record, int]], task: Any) -> tuple[int, int]:
    """Append (record, documents in it) pairs in groups of APPEND_GROUP, updating `task` with the documents
    done; returns (records appended, documents appended)."""
    appended = done = 0
    pending: list[Record] = []
    for record, n in records:
        pending.append(record)
        done += n
        if len(pending) >= APPEND_GROUP:
            await log_.append(pending)
            appended += len(pending)
            pending = []
            task.update(done)
    if pending:
        await log_.append(pending)
        appended += len(pending)
    task.update(done)
    task.finish()
    return appended, done


async def build_projection_from(log_: FileLog, work: Path, indexes: Mapping[str, Any], reporter: Reporter,
                                records: int) -> None:
    """Rebuild the work directory's projection from its import log (with a progress task over `records`)."""
    task = reporter.task("build projection", records)
    projection = await rebuild(log_, work / "projection", indexes, progress=lambda off, n: task.update(n))
    task.finish()
    projection.close()


__all__ = ["APPEND_GROUP", "append_table", "build_projection_from", "new_work_dir"]
