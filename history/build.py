"""A projection as of a past log offset: the nearest earlier checkpoint (if any) plus a replay of the rest.

Used by restore and export (`history.restore`, `history.snapshot`) and by time
travel in the gateway, which materializes past states next to a live node.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

from history.errors import RestoreError
from history.points import parse_point, record_at, resolve_point
from history.retention import first_offset_of, window_error, window_start
from history.progress import Reporter
from history.sources import open_source
from projections.checkpoints import SCHEMA_MARKER, CheckpointInfo, copy_projection, list_checkpoints, take_checkpoint, verify
from projections.rebuild import catch_up
from projections.store import Projection
from projections.vectors import adopt_saved


@dataclass
class ProjectionBuild:
    """How a projection was built: its base (checkpoint or empty) and the replay after it."""

    base_offset: int = -1
    base: str = "empty"
    replayed: int = 0
    copy_seconds: float = 0.0
    replay_seconds: float = 0.0

    @property
    def replay_rate(self) -> float:
        """Records replayed per second (0 if nothing was replayed)."""
        return self.replayed / self.replay_seconds if self.replay_seconds > 0 else 0.0


async def build_projection(
    log_: Any,
    dest: Path,
    upto: int,
    *,
    data_dir: Path | None = None,
    catalog: dict[str, Any] | None = None,
    extra_bases: Iterable[CheckpointInfo] = (),
    reporter: Reporter | None = None,
    batch_records: int | None = None,
    vectors_dest: Path | None = None,
) -> tuple[Projection, ProjectionBuild]:
    """A projection at `dest` holding exactly records 0..upto of `log_` (open; the caller closes it).

    Starts from the best base at or before `upto` — a checkpoint of
    `data_dir` or one of `extra_bases`, each checked against the log — else
    from nothing, and replays the rest. `catalog` (if given) is installed;
    otherwise a checkpoint keeps its own. `batch_records` bounds the records
    prepared per step on the event loop (smaller: shorter stalls for others).
    A checkpoint's search indexes come with it (only the records after it are
    indexed); with `vectors_dest` (the new data directory's ``vectors/``), so
    do its saved vector indexes (see `projections.vectors.adopt_saved`).
    """
    reporter = reporter or Reporter()
    info = ProjectionBuild()
    started = time.perf_counter()
    candidates = [c for c in (list_checkpoints(data_dir) if data_dir is not None else []) if c.offset <= upto]
    candidates += [c for c in extra_bases if c.offset <= upto]
    candidates.sort(key=lambda c: c.offset, reverse=True)
    projection: Projection | None = None
    for base in candidates:
        if not await verify(base, log_):
            continue
        try:
            # A running server's checkpointer may delete an old checkpoint meanwhile: then try the next one.
            await asyncio.to_thread(copy_projection, base.projection_dir, dest)
            if vectors_dest is not None:
                await asyncio.to_thread(adopt_saved, base.vectors_dir, vectors_dest, upto)
        except OSError:
            shutil.rmtree(dest, ignore_errors=True)
            continue
        # On a thread: opening a copy rebuilds the search indexes it does not carry (see projections.search).
        projection = await asyncio.to_thread(Projection, dest, catalog)
        if projection.applied_offset != base.offset:
            projection.close()
            raise RestoreError(f"checkpoint {base.path} holds offset {projection.applied_offset}, "
                               f"not {base.offset} as its metadata says")
        info.base_offset, info.base = base.offset, f"checkpoint {base.path.name}"
        break
    if projection is None and first_offset_of(log_) > 0:
        oldest = await window_start(log_, data_dir)
        raise RestoreError(window_error(log_, f"offset {upto}", oldest))
    if projection is None:
        dest.mkdir(parents=True, exist_ok=True)
        projection = Projection(dest, catalog or {})
    info.copy_seconds = time.perf_counter() - started
    todo = upto - projection.applied_offset
    task = reporter.task("replay log into projection", max(todo, 0))
    first = projection.applied_offset

    def progress(applied: int, _count: int) -> None:
        task.update(applied - first)

    started = time.perf_counter()
    try:
        if todo > 0:
            if batch_records is None:
                info.replayed = await catch_up(projection, log_, upto, progress)
            else:
                info.replayed = await catch_up(projection, log_, upto, progress, batch_records=batch_records)
    except BaseException:
        projection.close()
        raise
    info.replay_seconds = time.perf_counter() - started
    if info.replayed:  # replayed records were checked by whatever schema wrote them: not necessarily the base's
        (Path(projection.path) / SCHEMA_MARKER).unlink(missing_ok=True)
    task.update(max(todo, 0))
    task.finish()
    if projection.applied_offset != upto:
        got = projection.applied_offset
        missing = got < upto and not [r async for b in log_.read(got + 1, upto + 1) for r in b]
        if not missing:  # not merely a gap in the log's offsets (a KafkaLog's skipped copies)
            projection.close()
            raise RestoreError(f"the projection reached offset {got}, expected {upto} "
                               "(is the log shorter than expected?)")
    return projection, info


def snapshot_live_projection(data_dir: Path, scratch: Path) -> CheckpointInfo | None:
    """A checkpoint (into `scratch`) of DATA/projection if no server holds it, else None."""
    path = data_dir / "projection"
    if not path.is_dir():
        return None
    try:
        projection = Projection(path)
    except Exception:
        return None  # locked by a running server (or unreadable): use the checkpoints
    try:
        return take_checkpoint(projection, scratch)
    finally:
        projection.close()


@dataclass
class ProjectionAt:
    """A data directory's projection as of a log point, built for an export (see `projection_at`)."""

    projection: Projection
    upto: int  # the last log offset it holds
    ts: int  # that record's commit time (0 for an empty log)
    build: ProjectionBuild
    scratch: Path  # a work directory beside the data, removed on exit


@contextlib.asynccontextmanager
async def projection_at(data: Path, at: str | None, reporter: Reporter) -> AsyncIterator[ProjectionAt]:
    """The projection of the data directory `data` as of `at` (a point; default the end of the log).

    Built in a scratch directory inside `data` from the nearest checkpoint, or
    from a checkpoint of the live projection when no server holds it; the
    projection is closed and the scratch directory removed on exit.
    """
    source = await open_source(str(data))
    scratch = data / f".export-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        upto = await resolve_point(source.log, parse_point(at or "end", bare="ts"))
        last = await record_at(source.log, upto)
        extra = []
        live = await asyncio.to_thread(snapshot_live_projection, data, scratch / "live")
        if live is not None:
            extra.append(live)
        projection, build = await build_projection(source.log, scratch / "projection", upto, data_dir=data,
                                                   extra_bases=extra, reporter=reporter)
        try:
            yield ProjectionAt(projection, upto, last.ts if last else 0, build, scratch)
        finally:
            projection.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        await source.close()


__all__ = ["ProjectionAt", "ProjectionBuild", "build_projection", "projection_at", "snapshot_live_projection"]
