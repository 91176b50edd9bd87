"""Point-in-time restore: a data directory as of a past moment, from a data directory or a log.

The state "as of TIME" holds exactly the records committed at or before TIME
(see `history.points` for the forms of TIME).

`restore_to_dir` builds a new, complete, servable data directory: the log
prefix (a FileLog with the same records, offsets and timestamps), the
projection (the nearest earlier checkpoint copied — with the search and
vector indexes it carries — plus a replay of the rest; a full replay without
checkpoints), the admin key and the blobs of stored
files (hard-linked; blobs outlive their `_storage` documents, so every
document of the restored point finds its bytes). It is assembled next to
the target and renamed into place at the end, so an interrupted restore
leaves nothing half-built behind. The source is only read (a FileLog is
opened as a follower), so it may be a live deployment's data directory.

`restore_in_place` rewinds a stopped deployment: it saves the discarded tail
to ``DATA/discarded-<time>-offsets-<a>-<b>.avro`` (an Avro object container of
log records, readable by `tape stream --log FILE` and any Avro tool), builds
the projection as of TIME beside the current one, swaps it in and only then
truncates the log. A crash at any point leaves a directory that starts
consistently (at worst with its full, un-restored history).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import orjson

from history.archive import ArchiveLog, write_archive
from history.build import ProjectionBuild, build_projection, snapshot_live_projection
from history.errors import RestoreError
from history.retention import first_offset_of, window_error, window_start
from history.points import Point, format_ns, record_at, resolve_point
from history.progress import Reporter
from history.segments import copy_log_prefix, copy_verified_log_prefix
from history.sources import is_data_dir, open_source, read_catalog
from log import FileLog, LogError
from log.directory import fsync_dir, move_into_place
from log.record import Record
from projections.checkpoints import drop_after
from projections.store import Projection
from projections.vectors import VECTORS_DIR, adopt_saved
from storage import BLOBS_DIR, link_store

ADMIN_KEY_FILE = "admin_key"
RESTORE_INFO_FILE = "restore.json"


@dataclass
class RestoreReport:
    """What a restore did."""

    source: str
    target: str
    upto: int
    ts: int
    records: int
    destination: Path
    projection: ProjectionBuild = field(default_factory=ProjectionBuild)
    discarded: int = 0
    archive: Path | None = None
    seconds: float = 0.0
    log_seconds: float = 0.0
    in_place: bool = False
    blobs: int = 0  # stored files' blobs linked into the new directory

    def as_json(self) -> dict[str, Any]:
        """The report as the JSON object `tape restore --json` prints."""
        return {
            "source": self.source,
            "target": self.target,
            "offset": self.upto,
            "ts": self.ts,
            "time": format_ns(self.ts) if self.ts else None,
            "records": self.records,
            "destination": str(self.destination),
            "base": self.projection.base,
            "base_offset": self.projection.base_offset,
            "replayed": self.projection.replayed,
            "replay_seconds": round(self.projection.replay_seconds, 3),
            "discarded": self.discarded,
            "archive": str(self.archive) if self.archive else None,
            "seconds": round(self.seconds, 3),
            "in_place": self.in_place,
            "blobs": self.blobs,
        }


async def check_in_window(log_: Any, data_dir: Path | None, upto: int, point: Point) -> None:
    """RestoreError (naming the window) if the state after offset `upto` cannot be rebuilt from what is kept."""
    if first_offset_of(log_) > 0:
        oldest = await window_start(log_, data_dir)
        if upto < oldest:
            raise RestoreError(window_error(log_, point.describe(), oldest))


def _check_new_dir(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RestoreError(f"{path} exists and is not empty: restore into a new directory (or use --in-place)")


async def restore_to_dir(source: str, point: Point, new_dir: str | os.PathLike[str],
                         reporter: Reporter | None = None, *, use_checkpoints: bool = True) -> RestoreReport:
    """Build a new data directory `new_dir` as of `point` from `source` (see the module docstring).

    `use_checkpoints=False` replays the whole prefix even when checkpoints exist.
    """
    reporter = reporter or Reporter()
    started = time.perf_counter()
    dest = Path(new_dir).absolute()
    _check_new_dir(dest)
    src = await open_source(source)
    try:
        upto = await resolve_point(src.log, point)
        if isinstance(src.log, ArchiveLog) and src.log.first_offset() > 0:
            raise RestoreError(f"{source} holds only offsets {src.log.first_offset()}.. of a log: "
                               "it cannot be restored on its own")
        await check_in_window(src.log, src.data_dir, upto, point)
        last = await record_at(src.log, upto)
        work = dest.parent / f".{dest.name}.restoring-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        report = RestoreReport(src.description, point.describe(), upto, last.ts if last else 0, upto + 1, dest)
        try:
            catalog = read_catalog(src.data_dir)

            async def log_part() -> FileLog:
                t0 = time.perf_counter()
                copied = await copy_log_prefix(src, work / "log", upto, reporter)
                report.log_seconds = time.perf_counter() - t0
                return copied

            async def projection_part(log_: Any, last: int) -> tuple[Projection, ProjectionBuild]:
                return await build_projection(log_, work / "projection", last,
                                              data_dir=src.data_dir if use_checkpoints else None,
                                              catalog=catalog, reporter=reporter,
                                              vectors_dest=work / VECTORS_DIR if use_checkpoints else None)

            if src.log_dir is not None:
                # A FileLog source: copy its bytes while the projection replays from it.
                log_dir = src.log_dir

                async def copy_part() -> None:
                    t0 = time.perf_counter()
                    await copy_verified_log_prefix(log_dir, work / "log", upto, reporter, src.archive_dir)
                    report.log_seconds = time.perf_counter() - t0

                results = await asyncio.gather(copy_part(), projection_part(src.log, upto), return_exceptions=True)
                errors = [r for r in results if isinstance(r, BaseException)]
                if isinstance(results[1], tuple):
                    results[1][0].close()
                if errors:
                    raise errors[0]
                report.projection = results[1][1]  # type: ignore[index]
            else:
                # Other logs may have offset gaps: the copy is renumbered, so replay from the copy.
                copied = await log_part()
                try:
                    report.records = copied.next_offset()
                    report.upto = copied.next_offset() - 1
                    report.ts = copied.last_ts()
                    projection, report.projection = await projection_part(copied, report.upto)
                    projection.close()
                finally:
                    await copied.close()
            if use_checkpoints and src.data_dir is not None:
                # The source's own saved vector indexes (from its last stop) may be more recent than the
                # checkpoint's, and still fit the restored point if they were saved at or before it.
                await asyncio.to_thread(adopt_saved, src.data_dir / VECTORS_DIR, work / VECTORS_DIR, report.upto)
            if src.data_dir is not None and (src.data_dir / BLOBS_DIR).is_dir():
                # Stored files: blobs are immutable and never deleted with their documents, so the source's
                # blobs hold the bytes of every `_storage` document of any earlier point (hard links).
                report.blobs = await asyncio.to_thread(link_store, src.data_dir / BLOBS_DIR, work / BLOBS_DIR)
            if src.data_dir is not None and (src.data_dir / ADMIN_KEY_FILE).exists():
                shutil.copy2(src.data_dir / ADMIN_KEY_FILE, work / ADMIN_KEY_FILE)
                os.chmod(work / ADMIN_KEY_FILE, 0o600)
            info = {"restored_from": src.description, "target": point.describe(), "offset": report.upto,
                    "ts": report.ts, "restored_at_ns": time.time_ns()}
            (work / RESTORE_INFO_FILE).write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
            move_into_place(work, dest)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    finally:
        await src.close()
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class DiscardPlan:
    """What an in-place restore would throw away; shown before asking for confirmation."""

    data_dir: Path
    upto: int
    end: int
    first_ts: int
    last_ts: int

    @property
    def discarded(self) -> int:
        """How many transactions the restore would discard."""
        return self.end - self.upto - 1

    def describe(self) -> str:
        """The plan in one line, for the confirmation prompt."""
        if self.discarded <= 0:
            return f"{self.data_dir}: nothing to discard (the log ends at offset {self.end - 1})"
        return (f"{self.data_dir}: keep offsets 0..{self.upto}, discard {self.discarded} transaction(s) "
                f"(offsets {self.upto + 1}..{self.end - 1}, committed {format_ns(self.first_ts)} .. "
                f"{format_ns(self.last_ts)})")


Confirm = Callable[[DiscardPlan], "bool | Awaitable[bool]"]


async def restore_in_place(data_dir: str | os.PathLike[str], point: Point, confirm: Confirm,
                           reporter: Reporter | None = None) -> RestoreReport | None:
    """Rewind the stopped deployment in `data_dir` to `point`; None if `confirm` said no."""
    reporter = reporter or Reporter()
    started = time.perf_counter()
    data = Path(data_dir).absolute()
    if not is_data_dir(data):
        raise RestoreError(f"{data} is not a Tape data directory (--in-place needs DATA with a log/ inside)")
    log_ = FileLog(data / "log", read_only=False)
    try:
        await log_.open()
    except LogError as exc:
        raise RestoreError(f"cannot take the log of {data} for writing: {exc}. Stop the server first.") from None
    try:
        upto = await resolve_point(log_, point)
        await check_in_window(log_, data, upto, point)
        end = log_.next_offset()
        first = await record_at(log_, upto + 1)
        last = await record_at(log_, end - 1)
        plan = DiscardPlan(data, upto, end, first.ts if first else 0, last.ts if last else 0)
        keep_rec = await record_at(log_, upto)
        report = RestoreReport(f"data directory {data}", point.describe(), upto, keep_rec.ts if keep_rec else 0,
                               upto + 1, data, in_place=True)
        answer = confirm(plan)
        if asyncio.iscoroutine(answer) or isinstance(answer, asyncio.Future):
            answer = await answer
        if not answer:
            return None
        scratch = data / f".restore-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        try:
            if plan.discarded > 0:
                stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
                archive = data / f"discarded-{stamp}-offsets-{upto + 1}-{end - 1}.avro"
                task = reporter.task("save discarded tail", plan.discarded)
                count = 0

                async def counted() -> AsyncIterator[list[Record]]:
                    nonlocal count
                    async for batch in log_.read(upto + 1, end):
                        count += len(batch)
                        task.update(count)
                        yield batch

                saved = await write_archive(archive, counted(), {"tape.source": str(data),
                                                                 "tape.discarded_from": str(upto + 1)})
                task.finish()
                if saved != plan.discarded:
                    raise RestoreError(f"saved {saved} records of the tail, expected {plan.discarded}")
                report.archive, report.discarded = archive, saved
            extra = []
            live = snapshot_live_projection(data, scratch / "live")
            if live is not None:
                extra.append(live)
            projection, build = await build_projection(log_, scratch / "projection", upto, data_dir=data,
                                                       extra_bases=extra, reporter=reporter,
                                                       vectors_dest=data / VECTORS_DIR)
            projection.close()
            report.projection = build
            drop_after(data, upto)
            old = scratch / "projection.old"
            current = data / "projection"
            if current.exists():
                os.rename(current, old)
            os.rename(scratch / "projection", current)
            fsync_dir(data)
            if plan.discarded > 0:
                t0 = time.perf_counter()
                await log_.truncate(upto + 1)
                report.log_seconds = time.perf_counter() - t0
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    finally:
        await log_.close()
    report.seconds = time.perf_counter() - started
    return report


__all__ = [
    "ADMIN_KEY_FILE",
    "Confirm",
    "DiscardPlan",
    "RESTORE_INFO_FILE",
    "RestoreReport",
    "restore_in_place",
    "restore_to_dir",
]
