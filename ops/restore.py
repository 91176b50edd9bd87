"""Point-in-time restore: a data directory as of a past moment, from a data directory or a log.

The unit of restore is the transaction: the state "as of TIME" holds exactly
the records committed at or before TIME (never part of one). TIME is one of

* ``offset:N``   — the state after log record N (offsets start at 0; ``offset:-1`` is empty),
* ``ts:N`` or a bare integer — a commit timestamp in ns since the epoch (records with ts <= N),
* an ISO-8601 time (``2024-05-01T12:00:00.123456789Z``; no zone = local time),
* ``end`` / ``now`` — everything in the log.

`restore_to_dir` builds a new, complete, servable data directory: the log
prefix (a FileLog with the same records, offsets and timestamps), the
projection (the nearest earlier checkpoint copied, plus a replay of the rest;
a full replay without checkpoints) and the admin key. It is assembled next to
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
import bisect
import datetime as dt
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator

import orjson
from fastavro import parse_schema
from fastavro import reader as avro_reader
from fastavro.write import Writer as AvroWriter

from log import FileLog, Log, LogError, open_log
from log import forked as log_forked
from log.codec import HEADER, HEADER_SIZE
from log.directory import fsync_dir
from log.record import Record, Write
from log.segment import list_segments, walk_headers
from projections.checkpoints import (
    CheckpointInfo,
    copy_projection,
    drop_after,
    list_checkpoints,
    take_checkpoint,
    verify,
)
from projections.rebuild import catch_up
from projections.store import Projection

ADMIN_KEY_FILE = "admin_key"
RESTORE_INFO_FILE = "restore.json"
COPY_BATCH = 4096
_SCHEMA_FILE = Path(__file__).resolve().parent.parent / "log" / "schemas" / "record_v1.avsc"


class RestoreError(Exception):
    """A restore that cannot be done as asked (the message says why and what to do)."""


# ----------------------------------------------------------------- progress


class Task:
    """A progress handle; the default does nothing."""

    def update(self, completed: int) -> None:
        pass

    def finish(self) -> None:
        pass


class Reporter:
    """Progress reporting hook of the restore/export logic (the CLI shows rich progress bars)."""

    def task(self, description: str, total: int | None) -> Task:
        return Task()

    def note(self, text: str) -> None:
        pass


# ----------------------------------------------------------------- points in time


@dataclass(frozen=True)
class Point:
    """A parsed TIME: kind is "offset" (state after record N), "ts" (records with ts <= N) or "end"."""

    kind: str
    value: int | None = None

    def describe(self) -> str:
        if self.kind == "end":
            return "the end of the log"
        if self.kind == "offset":
            return f"offset {self.value}"
        return f"ts {self.value} ({format_ns(self.value or 0)})"


_FRACTION = re.compile(r"^(.*\d{2}:\d{2}:\d{2})[.,](\d{1,9})(.*)$")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def iso_to_ns(text: str) -> int:
    """Nanoseconds since the epoch of an ISO-8601 time (up to 9 fractional digits; naive = local time)."""
    text = text.strip()
    frac_ns = 0
    m = _FRACTION.match(text)
    if m:
        text = m.group(1) + m.group(3)
        frac_ns = int(m.group(2).ljust(9, "0"))
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 time") from None
    if when.tzinfo is None:
        when = when.astimezone()
    seconds = (when - _EPOCH) // dt.timedelta(seconds=1)
    return seconds * 1_000_000_000 + when.microsecond * 1000 + frac_ns


def format_ns(ts: int) -> str:
    """An ns timestamp as ISO-8601 UTC with nanoseconds."""
    seconds, ns = divmod(ts, 1_000_000_000)
    base = dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ns:09d}Z"


def parse_point(text: str, bare: str = "ts") -> Point:
    """Parse TIME (see the module docstring); a bare integer is a `bare` ("ts" or "offset")."""
    t = str(text).strip()
    low = t.lower()
    try:
        if low in ("end", "now", "latest"):
            return Point("end")
        if low.startswith("offset:"):
            n = int(t[7:])
            if n < -1:
                raise ValueError("an offset is -1 (empty) or more")
            return Point("offset", n)
        if low.startswith("ts:"):
            n = int(t[3:])
            if n < 0:
                raise ValueError("a timestamp is not negative")
            return Point("ts", n)
        if re.fullmatch(r"-?\d+", t):
            n = int(t)
            if bare == "offset":
                if n < -1:
                    raise ValueError("an offset is -1 (empty) or more")
                return Point("offset", n)
            if n < 0:
                raise ValueError("a timestamp is not negative")
            return Point("ts", n)
        return Point("ts", iso_to_ns(t))
    except ValueError as exc:
        raise RestoreError(f"cannot read the time {text!r}: {exc} (use an ISO-8601 time, a commit ts in ns, "
                           "ts:N, offset:N or end)") from None


async def resolve_point(log_: Any, point: Point, *, strict_offset: bool = True) -> int:
    """The last offset included at `point` (-1: none) in `log_`."""
    end = log_.next_offset()
    if point.kind == "end":
        return end - 1
    if point.kind == "offset":
        assert point.value is not None
        if point.value > end - 1 and strict_offset:
            raise RestoreError(f"offset {point.value} is past the end of the log (its last offset is {end - 1})")
        return min(point.value, end - 1)
    assert point.value is not None
    return await log_.offset_for_timestamp(point.value + 1) - 1


async def record_at(log_: Any, offset: int) -> Record | None:
    """The record at `offset` (None if out of range)."""
    if offset < 0 or offset >= log_.next_offset():
        return None
    async for batch in log_.read(offset, offset + 1):
        for rec in batch:
            if rec.offset == offset:
                return rec
    return None


# ----------------------------------------------------------------- sources


@dataclass
class Source:
    """An opened restore source: its log, and the data directory if there is one (for checkpoints)."""

    log: Any
    data_dir: Path | None
    description: str
    log_dir: Path | None = None  # a FileLog directory (enables the fast byte copy)

    async def close(self) -> None:
        await self.log.close()


def is_data_dir(path: Path) -> bool:
    return (path / "log").is_dir() and ((path / "log" / "FORMAT").exists() or bool(list_segments(path / "log")))


async def open_source(source: str) -> Source:
    """Open SOURCE read-only: a data directory, a FileLog directory (or file://), a kafka:// URL or an archive file."""
    if source.startswith("kafka://"):
        log_ = open_log(source)
        try:
            await log_.open()
        except LogError as exc:
            raise RestoreError(f"cannot open {source}: {exc}") from None
        return Source(log_, None, source)
    path = Path(source[len("file://"):] if source.startswith("file://") else source)
    if path.is_file():
        archive = ArchiveLog(path)
        await archive.open()
        return Source(archive, None, f"archive {path}")
    if not path.exists():
        raise RestoreError(f"{path} does not exist")
    if is_data_dir(path):
        data_dir, log_dir = path, path / "log"
    elif (path / "FORMAT").exists() or list_segments(path):
        data_dir, log_dir = None, path
        if path.name == "log" and is_data_dir(path.parent):
            data_dir = path.parent
    else:
        raise RestoreError(f"{path} is neither a Tape data directory nor a log directory")
    log_ = FileLog(log_dir, read_only=True)
    try:
        await log_.open()
    except LogError as exc:
        raise RestoreError(f"cannot open the log {log_dir}: {exc}") from None
    return Source(log_, data_dir, f"data directory {data_dir}" if data_dir else f"log {log_dir}", log_dir)


def read_catalog(data_dir: Path | None) -> dict[str, Any] | None:
    """The index catalog of a data directory: from its newest checkpoint, else its projection (read-only)."""
    if data_dir is None:
        return None
    found = list_checkpoints(data_dir)
    if found:
        return found[-1].indexes
    proj = data_dir / "projection"
    if not proj.is_dir():
        return None
    try:
        from rocksdict import AccessType, Options, Rdict

        from projections.layout import META_CATALOG
        db = Rdict(str(proj), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            raw = db.get(META_CATALOG)
        finally:
            db.close()
        return orjson.loads(raw) if raw else None
    except Exception:
        return None


# ----------------------------------------------------------------- archives of records


def _record_schema() -> Any:
    return parse_schema(json.loads(_SCHEMA_FILE.read_text("utf-8")))


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
    schema = _record_schema()
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
        pass

    async def append(self, records: list[Record]) -> None:
        raise LogError(f"{self.path}: an archive is read-only")

    def first_offset(self) -> int:
        return self._offsets[0] if self._offsets else 0

    def next_offset(self) -> int:
        return self._offsets[-1] + 1 if self._offsets else 0

    def last_ts(self) -> int:
        return self._ts[-1] if self._ts else 0

    async def read(self, start: int, end: int | None = None, batch: int = 4096) -> AsyncIterator[list[Record]]:
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
        i = bisect.bisect_left(self._ts, ts)
        return self._offsets[i] if i < len(self._offsets) else self.next_offset()

    async def truncate(self, next_offset: int) -> None:
        raise LogError(f"{self.path}: an archive is read-only")


# ----------------------------------------------------------------- copying a log prefix


def _copy_range(src: Path, dest: Path, length: int) -> None:
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        done = 0
        while done < length:
            try:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), length - done)
            except (AttributeError, OSError):
                fin.seek(done)
                fout.seek(done)
                while done < length:
                    chunk = fin.read(min(8 << 20, length - done))
                    if not chunk:
                        break
                    fout.write(chunk)
                    done += len(chunk)
                n = 0
            if n == 0:
                break
            done += n
        if done != length:
            raise RestoreError(f"{src} ended after {done} bytes, expected {length}")
        fout.flush()
        os.fsync(fout.fileno())


def _frame_end(path: Path, offset: int) -> int:
    """The file position right after the frame of `offset` in segment `path`."""
    found = walk_headers(path, 0, os.path.getsize(path), offset=offset)
    if found is None or found[0] != offset:
        raise RestoreError(f"{path}: no frame for offset {offset}")
    pos = found[2]
    with open(path, "rb") as f:
        f.seek(pos)
        head = f.read(HEADER_SIZE)
    return pos + HEADER_SIZE + HEADER.unpack(head)[2]


def copy_segments(src_dir: Path, dest_dir: Path, n: int) -> int:
    """Copy the frames of offsets < `n` of the FileLog in `src_dir` into `dest_dir` (bytes copied).

    Whole sealed segments are copied with copy_file_range; the segment holding
    offset n-1 is cut right after that frame. The copy is verified when it is
    opened as a FileLog (every frame's CRC, dense offsets, increasing ts).
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    if n <= 0:
        return 0
    fmt = src_dir / "FORMAT"
    if fmt.exists():
        shutil.copy2(fmt, dest_dir / "FORMAT")
    segs = list_segments(src_dir)
    total = 0
    for i, (base, path) in enumerate(segs):
        if base >= n:
            break
        following = segs[i + 1][0] if i + 1 < len(segs) else None
        length = os.path.getsize(path) if following is not None and following <= n else _frame_end(path, n - 1)
        _copy_range(path, dest_dir / path.name, length)
        total += length
    fsync_dir(dest_dir)
    return total


async def copy_verified_log_prefix(src_dir: Path, dest_dir: Path, upto: int, reporter: Reporter) -> None:
    """`copy_log_prefix` from the FileLog in `src_dir`, leaving the copy closed.

    The copy is verified by opening it as its writer (which scans every
    frame); with a second CPU that runs in a forked child process
    (`log.forked`), so that a projection replaying meanwhile keeps this
    process's GIL to itself.
    """
    n = upto + 1
    task = reporter.task("copy log", n)

    def copy_and_verify() -> Iterator[int]:
        copy_segments(src_dir, dest_dir, n)
        yield asyncio.run(_open_and_close(dest_dir))

    if n > 0:
        if log_forked.worthwhile(watched=True):
            got = [item async for item in log_forked.forked_items(copy_and_verify)][0]
        else:
            await asyncio.to_thread(copy_segments, src_dir, dest_dir, n)
            got = await _open_and_close(dest_dir)
        if got != n:
            raise RestoreError(f"the copied log ends at offset {got - 1}, expected {n - 1}")
    else:
        await _open_and_close(dest_dir)
    task.update(n)
    task.finish()


async def _open_and_close(log_dir: Path) -> int:
    """Open the FileLog in `log_dir` as its writer (scanning and verifying it) and close it; its next offset."""
    log_ = FileLog(log_dir, read_only=False)
    await log_.open()
    try:
        return log_.next_offset()
    finally:
        await log_.close()


async def copy_log_prefix(src: Source, dest_dir: Path, upto: int, reporter: Reporter) -> FileLog:
    """A new FileLog in `dest_dir` holding the records of `src` with offset <= `upto`; returned open.

    From a FileLog the segment bytes are copied (same offsets, timestamps and
    contents, verified on open). From any other log the records are appended
    one batch at a time, keeping their timestamps; a source whose offsets have
    gaps (a KafkaLog skips duplicate copies) gets dense offsets in the copy,
    so its projection must then be built from the copy (`restore_to_dir` does).
    """
    n = upto + 1
    task = reporter.task("copy log", n)
    if src.log_dir is not None and n > 0:
        await asyncio.to_thread(copy_segments, src.log_dir, dest_dir, n)
        dest = FileLog(dest_dir, read_only=False)
        await dest.open()  # scans and verifies every copied frame
        if dest.next_offset() != n:
            got = dest.next_offset()
            await dest.close()
            raise RestoreError(f"the copied log ends at offset {got - 1}, expected {n - 1}")
    else:
        dest = FileLog(dest_dir, read_only=False)
        await dest.open()
        if dest.next_offset() != 0:
            await dest.close()
            raise RestoreError(f"{dest_dir} already holds a log")
        start = getattr(src.log, "first_offset", lambda: 0)()
        if start != 0 and n > start:
            await dest.close()
            raise RestoreError("an archive of a log tail cannot be restored on its own (it does not start at offset 0)")
        done = 0
        try:
            async for batch in src.log.read(0, n, COPY_BATCH):
                stamps = [r.ts for r in batch]
                await dest.append(batch)  # keeps each record's (increasing) ts; offsets become dense
                if [r.ts for r in batch] != stamps:
                    raise RestoreError(f"copying up to offset {batch[-1].offset}: the new log changed a timestamp")
                done += len(batch)
                task.update(done)
        except BaseException:
            await dest.close()
            raise
    task.update(n)
    task.finish()
    return dest


# ----------------------------------------------------------------- projections


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
) -> tuple[Projection, ProjectionBuild]:
    """A projection at `dest` holding exactly records 0..upto of `log_` (open; the caller closes it).

    Starts from the best base at or before `upto` — a checkpoint of
    `data_dir` or one of `extra_bases`, each checked against the log — else
    from nothing, and replays the rest. `catalog` (if given) is installed;
    otherwise a checkpoint keeps its own. `batch_records` bounds the records
    prepared per step on the event loop (smaller: shorter stalls for others).
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
        except OSError:
            shutil.rmtree(dest, ignore_errors=True)
            continue
        projection = Projection(dest, catalog)
        if projection.applied_offset != base.offset:
            projection.close()
            raise RestoreError(f"checkpoint {base.path} holds offset {projection.applied_offset}, "
                               f"not {base.offset} as its metadata says")
        info.base_offset, info.base = base.offset, f"checkpoint {base.path.name}"
        break
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


# ----------------------------------------------------------------- restore


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

    def as_json(self) -> dict[str, Any]:
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
        }


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
                                              catalog=catalog, reporter=reporter)

            if src.log_dir is not None:
                # A FileLog source: copy its bytes while the projection replays from it.
                log_dir = src.log_dir

                async def copy_part() -> None:
                    t0 = time.perf_counter()
                    await copy_verified_log_prefix(log_dir, work / "log", upto, reporter)
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
            if src.data_dir is not None and (src.data_dir / ADMIN_KEY_FILE).exists():
                shutil.copy2(src.data_dir / ADMIN_KEY_FILE, work / ADMIN_KEY_FILE)
                os.chmod(work / ADMIN_KEY_FILE, 0o600)
            info = {"restored_from": src.description, "target": point.describe(), "offset": report.upto,
                    "ts": report.ts, "restored_at_ns": time.time_ns()}
            (work / RESTORE_INFO_FILE).write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
            if dest.exists():
                dest.rmdir()
            os.rename(work, dest)
            fsync_dir(dest.parent)
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
        return self.end - self.upto - 1

    def describe(self) -> str:
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
                                                       extra_bases=extra, reporter=reporter)
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
    "ArchiveLog",
    "DiscardPlan",
    "Point",
    "ProjectionBuild",
    "Reporter",
    "RestoreError",
    "RestoreReport",
    "Source",
    "Task",
    "build_projection",
    "copy_log_prefix",
    "copy_verified_log_prefix",
    "copy_segments",
    "format_ns",
    "iso_to_ns",
    "open_source",
    "parse_point",
    "record_at",
    "resolve_point",
    "restore_in_place",
    "restore_to_dir",
    "snapshot_live_projection",
    "write_archive",
]
