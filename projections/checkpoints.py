"""Projection checkpoints: consistent copies of the projection, tagged with their log position.

Layout (inside a data directory)::

    checkpoints/
      <offset>/                 one checkpoint: the state after log record <offset>
        projection/             a RocksDB checkpoint (opens as a normal `Projection`)
          search/<table>/<index>/   each ready full-text index, committed at exactly <offset>
        vectors/<table>.<index>/    each ready vector index, saved with a stamp <= <offset> (optional)
        checkpoint.json         {"offset", "ts", "created_ns", "indexes", "documents", "search", "vectors", ...}
      .tmp-<offset>-<pid>-<n>/  a checkpoint being written (removed by `clean_partial`)

A checkpoint is written into a ``.tmp-*`` directory and renamed into place, so
a directory named by a plain number is always complete. RocksDB checkpoints
hard-link the immutable SST files, so one costs a memtable flush plus a few
small file copies, whatever the size of the projection.

Consistency: the projection is applied on the event loop, so `checkpoint_live`
first flushes the memtable in a worker thread (the slow part, concurrent with
the loop) and then takes the checkpoint synchronously on the loop, where no
apply can interleave; the offset it is tagged with is the projection's applied
offset at that instant (and the very same offset is stored inside the copy).

**Search and vector indexes ride along** (decision: carry exact copies, never
lagging ones, for full text; stamped copies for vectors). Right after the
RocksDB checkpoint, still on the loop, a marker is queued for the search
worker (`Projection.snapshot_search`); the worker commits every ready
tantivy index at exactly the checkpoint's offset and hard-links its
(immutable) segment files into ``projection/search/`` — off the loop, which
only waits for it. A projection opened from the checkpoint finds each index
at its applied offset and does not rebuild it (see `projections.search`). An
index still building, or a worker that fails to copy, is left out: that
index is rebuilt where the checkpoint is opened, as before. Vector indexes
(in memory, owned by the runtime) are saved before the loop part, in a
worker thread, with `VectorIndexes.save_copy` (an index unchanged since the
previous checkpoint's copy is hard-linked from it): their stamp is <= the
checkpoint's offset, and the documents written in between are re-read from
the log where they are loaded (`VectorIndexes.load_saved`); whoever turns a
checkpoint into a data directory puts them into ``DATA/vectors``
(`projections.vectors.adopt_saved`). Checkpoints without these directories
(older ones, or taken without a runtime) open as before, rebuilding.

Users: `tape serve --checkpoint-interval S` (`run_checkpointer`), point-in-time
restore (`history.restore`), and time travel (`gateway.time_travel`), which start
from the nearest checkpoint at or before the wanted offset and replay the log
from there. A checkpoint is only valid for the log it was taken from: the
recorded `ts` must equal the ts of the log record at `offset` (see `verify`);
an in-place restore deletes the checkpoints past its target (`drop_after`).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from log.directory import fsync_dir

from .search import SEARCH_DIR, link_or_copy
from .store import Projection
from .vectors import VECTORS_DIR, VectorIndexes

log = logging.getLogger("tape.checkpoints")

CHECKPOINTS_DIR = "checkpoints"
META_FILE = "checkpoint.json"
PROJECTION_DIR = "projection"
TMP_PREFIX = ".tmp-"
FORMAT = 1
SCHEMA_MARKER = "TAPE_SCHEMA_CHECKED"  # in a projection directory: see engine.schema_check (copied with it)

_counter = itertools.count()


@dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint on disk."""

    path: Path
    offset: int
    ts: int
    created_ns: int = 0
    indexes: dict[str, Any] = field(default_factory=dict)
    documents: int = 0
    blocked_ms: float = 0.0
    search: dict[str, int] = field(default_factory=dict)  # "table.index" -> offset of the copy carried
    vectors: dict[str, int] = field(default_factory=dict)  # "table.index" -> stamp offset of the saved copy

    @property
    def projection_dir(self) -> Path:
        """The RocksDB directory of this checkpoint (open it only through a copy: see `copy_projection`)."""
        return self.path / PROJECTION_DIR

    @property
    def vectors_dir(self) -> Path:
        """The saved vector indexes of this checkpoint (may not exist; see `projections.vectors.adopt_saved`)."""
        return self.path / VECTORS_DIR

    def as_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "offset": self.offset,
            "ts": self.ts,
            "created_ns": self.created_ns,
            "documents": self.documents,
            "blocked_ms": self.blocked_ms,
            "search": self.search,
            "vectors": self.vectors,
        }


def checkpoints_dir(data_dir: str | os.PathLike[str]) -> Path:
    """DATA_DIR/checkpoints."""
    return Path(data_dir) / CHECKPOINTS_DIR


def _read_meta(path: Path) -> CheckpointInfo | None:
    try:
        meta = orjson.loads((path / META_FILE).read_bytes())
        if meta.get("format") != FORMAT or not (path / PROJECTION_DIR).is_dir():
            return None
        return CheckpointInfo(path=path, offset=int(meta["offset"]), ts=int(meta["ts"]),
                              created_ns=int(meta.get("created_ns", 0)), indexes=meta.get("indexes") or {},
                              documents=int(meta.get("documents", 0)), blocked_ms=float(meta.get("blocked_ms", 0.0)),
                              search={str(k): int(v) for k, v in (meta.get("search") or {}).items()},
                              vectors={str(k): int(v) for k, v in (meta.get("vectors") or {}).items()})
    except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None


def list_checkpoints(data_dir: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """Every complete checkpoint of `data_dir`, oldest (lowest offset) first."""
    root = checkpoints_dir(data_dir)
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        if not entry.name.isdigit() or not entry.is_dir():
            continue
        info = _read_meta(Path(entry.path))
        if info is not None and info.offset == int(entry.name):
            found.append(info)
    found.sort(key=lambda c: c.offset)
    return found


def nearest_checkpoint(data_dir: str | os.PathLike[str], offset: int) -> CheckpointInfo | None:
    """The checkpoint with the highest offset <= `offset`, or None."""
    best = None
    for info in list_checkpoints(data_dir):
        if info.offset <= offset:
            best = info
    return best


async def verify(info: CheckpointInfo, log_: Any) -> bool:
    """True if `info` belongs to `log_`: the record it was taken after has its ts.

    When retention removed that record, a FileLog's START still names the ts of
    the record before its first offset; a Kafka topic that deleted it cannot
    tell, so a checkpoint right before its first offset is accepted (what
    follows it is all there).
    """
    if info.offset < 0 or info.offset >= log_.next_offset():
        return False
    first = log_.first_offset() if hasattr(log_, "first_offset") else 0
    if info.offset < first - 1:
        return False  # records after the checkpoint are gone: it cannot be caught up
    if info.offset == first - 1:
        start = getattr(log_, "start", None)
        return start is None or start.prev_ts == info.ts
    async for batch in log_.read(info.offset, info.offset + 1):
        for record in batch:
            if record.offset == info.offset:
                return record.ts == info.ts
    return False


async def nearest_valid_checkpoint(data_dir: str | os.PathLike[str] | None, offset: int,
                                   log_: Any) -> CheckpointInfo | None:
    """`nearest_checkpoint`, skipping checkpoints that do not belong to `log_` (see `verify`)."""
    if data_dir is None:
        return None
    for info in reversed(list_checkpoints(data_dir)):
        if info.offset > offset:
            continue
        if await verify(info, log_):
            return info
        log.warning("checkpoint %s does not match the log (a restore or another log?); skipping it", info.path)
    return None


def copy_projection(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Copy a closed RocksDB directory (e.g. a checkpoint's) to the new directory `dest`.

    SST files are immutable, so they are hard-linked when `dest` is on the same
    file system (copied otherwise); everything else (MANIFEST, CURRENT,
    OPTIONS, ...) is copied, since RocksDB may append to it once opened. The
    search indexes under ``search/`` come along (`copy_search_indexes`).
    """
    src, dest = Path(src), Path(dest)
    dest.mkdir(parents=True)
    for entry in os.scandir(src):
        if not entry.is_file() or entry.name == "LOCK":
            continue
        target = dest / entry.name
        if entry.name.endswith(".sst"):
            try:
                os.link(entry.path, target)
                continue
            except OSError:
                pass
        shutil.copy2(entry.path, target)
    if (src / SEARCH_DIR).is_dir():
        copy_search_indexes(src / SEARCH_DIR, dest / SEARCH_DIR)


def copy_search_indexes(src: Path, dest: Path) -> None:
    """Copy a (closed) projection's ``search/`` tree: tantivy's segment files are immutable and hard-linked;
    its ``meta.json`` and other dot/JSON files, which it replaces as it commits, are copied; locks are skipped."""
    for root, _dirs, files in os.walk(src):
        target = dest / os.path.relpath(root, src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            if name.endswith(".lock"):
                continue
            if name.startswith(".") or name.endswith(".json"):
                shutil.copy2(os.path.join(root, name), target / name)
            else:
                link_or_copy(os.path.join(root, name), os.fspath(target / name))


def _fsync_tree(path: Path) -> None:
    """fsync every file under `path` and every directory (RocksDB's own files included)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "wb") as f:
        f.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2))
        f.flush()
        os.fsync(f.fileno())


@dataclass(frozen=True)
class CheckpointPolicy:
    """Which checkpoints to keep: the newest `keep`, plus one per `step_ns` of commit time.

    With `step_ns`, the newest checkpoint of every step (ts // step_ns) is kept
    too, so points in time far back still have a checkpoint near them; with
    `window_ns` (the retention window) steps wholly before the window are
    dropped, except the newest checkpoint at or before the window's start,
    which is where a restore at the window's edge starts (and what lets
    retention remove the segments before it).
    """

    keep: int = 3
    step_ns: int | None = None
    window_ns: int | None = None

    def kept(self, found: list[CheckpointInfo], now_ns: int) -> list[CheckpointInfo]:
        """The checkpoints of `found` (oldest first) this policy keeps."""
        keep = set(c.path for c in found[-max(1, self.keep):])
        horizon = now_ns - self.window_ns if self.window_ns is not None else None
        if self.step_ns:
            newest_per_step: dict[int, CheckpointInfo] = {}
            for c in found:
                newest_per_step[c.ts // self.step_ns] = c
            for c in newest_per_step.values():
                if horizon is None or c.ts >= horizon:
                    keep.add(c.path)
        if horizon is not None:
            edge = [c for c in found if c.ts <= horizon]
            if edge:
                keep.add(edge[-1].path)
        return [c for c in found if c.path in keep]


def take_checkpoint(projection: Projection, data_dir: str | os.PathLike[str],
                    keep: "int | CheckpointPolicy | None" = None,
                    *, force: bool = False, vectors: VectorIndexes | None = None) -> CheckpointInfo | None:
    """Checkpoint `projection` into DATA/checkpoints/<applied offset>/ (synchronously).

    The caller makes sure nothing applies records to `projection` during the
    call (on a node: call it on the event loop). Returns None when nothing was
    applied yet or a checkpoint of this offset exists already (unless `force`,
    which replaces it). With `keep`, older checkpoints beyond the newest `keep`
    are deleted afterwards. The search indexes come along; with `vectors`,
    the ready vector indexes too (see the module docstring).
    """
    offset = projection.applied_offset
    if offset < 0:
        return None
    root = checkpoints_dir(data_dir)
    if (root / str(offset)).exists() and not force:
        return None
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{TMP_PREFIX}{offset}-{os.getpid()}-{next(_counter)}"
    try:
        tmp.mkdir()
        saved = vectors.save_copy(tmp / VECTORS_DIR, _previous_vectors(data_dir)) if vectors is not None else {}
        taken = _take(projection, tmp)
        taken.search = _wait_search(taken.snapshot)
        return _finish(data_dir, tmp, taken, saved, keep, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _previous_vectors(data_dir: str | os.PathLike[str]) -> Path | None:
    """The newest checkpoint's saved vector indexes: an index unchanged since is linked, not saved again."""
    found = list_checkpoints(data_dir)
    return found[-1].vectors_dir if found else None


@dataclass
class _Taken:
    """The synchronous part of a checkpoint: the RocksDB copy at `offset` and the queued search copy."""

    offset: int
    ts: int
    documents: int
    blocked_ms: float
    indexes: dict[str, Any]
    snapshot: Any
    search: dict[str, int] = field(default_factory=dict)


def _take(projection: Projection, tmp: Path) -> _Taken:
    """The part of a checkpoint no apply may interleave with (on a node: on the event loop); kept small."""
    started = time.perf_counter()
    offset, ts = projection.applied_offset, projection.applied_ts
    projection.checkpoint(tmp / PROJECTION_DIR)
    snapshot = projection.snapshot_search(tmp / PROJECTION_DIR)
    marker = Path(projection.path) / SCHEMA_MARKER
    if marker.exists():  # the documents were checked against the schema: so were the checkpoint's
        shutil.copy2(marker, tmp / PROJECTION_DIR / SCHEMA_MARKER)
    blocked_ms = (time.perf_counter() - started) * 1000.0
    documents = sum(projection.count(t) for t in projection.tables())
    return _Taken(offset, ts, documents, blocked_ms, projection.indexes, snapshot)


def _wait_search(snapshot: Any) -> dict[str, int]:
    """The search indexes copied into the checkpoint ({} when the copy failed: they are rebuilt at open)."""
    try:
        return snapshot.wait()
    except Exception as exc:
        log.warning("the checkpoint goes without its search indexes (they are rebuilt where it is opened): %s", exc)
        return {}


def _finish(data_dir: str | os.PathLike[str], tmp: Path, taken: _Taken, saved: dict[str, int],
            keep: "int | CheckpointPolicy | None", force: bool) -> CheckpointInfo | None:
    """Write checkpoint.json, fsync everything and rename `tmp` into place (None: one exists and not `force`)."""
    root = checkpoints_dir(data_dir)
    final = root / str(taken.offset)
    meta = {
        "format": FORMAT,
        "offset": taken.offset,
        "ts": taken.ts,
        "created_ns": time.time_ns(),
        "indexes": taken.indexes,
        "documents": taken.documents,
        "blocked_ms": round(taken.blocked_ms, 3),
        "search": taken.search,
        "vectors": {label: stamp for label, stamp in saved.items() if stamp <= taken.offset},
    }
    if len(meta["vectors"]) != len(saved):  # cannot happen (saved before the offset was taken); never ship it
        shutil.rmtree(tmp / VECTORS_DIR, ignore_errors=True)
        meta["vectors"] = {}
    _write_json(tmp / META_FILE, meta)
    _fsync_tree(tmp)  # everything is durable before the rename makes it a checkpoint
    if final.exists():
        if not force:
            shutil.rmtree(tmp, ignore_errors=True)
            return None
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(root)
    info = _read_meta(final)
    assert info is not None
    if keep is not None:
        prune(data_dir, keep)
    return info


def prune(data_dir: str | os.PathLike[str], keep: "int | CheckpointPolicy",
          now_ns: int | None = None) -> list[Path]:
    """Delete the checkpoints `keep` (a count of newest ones, or a `CheckpointPolicy`) does not keep.

    At least one is always kept; returns what was removed.
    """
    policy = keep if isinstance(keep, CheckpointPolicy) else CheckpointPolicy(keep=max(1, keep))
    found = list_checkpoints(data_dir)
    kept = {c.path for c in policy.kept(found, time.time_ns() if now_ns is None else now_ns)}
    removed = []
    for info in found:
        if info.path not in kept:
            shutil.rmtree(info.path, ignore_errors=True)
            removed.append(info.path)
    return removed


def partial_checkpoints(data_dir: str | os.PathLike[str]) -> list[Path]:
    """``.tmp-*`` directories: checkpoints (or transfers) a crash interrupted; never used, removed on start."""
    root = checkpoints_dir(data_dir)
    try:
        return sorted(Path(e.path) for e in os.scandir(root) if e.name.startswith(TMP_PREFIX))
    except FileNotFoundError:
        return []


def drop_after(data_dir: str | os.PathLike[str], offset: int) -> list[Path]:
    """Delete the checkpoints taken after log offset `offset` (before a log truncation)."""
    removed = []
    for info in list_checkpoints(data_dir):
        if info.offset > offset:
            shutil.rmtree(info.path, ignore_errors=True)
            removed.append(info.path)
    return removed


def clean_partial(data_dir: str | os.PathLike[str]) -> None:
    """Remove ``.tmp-*`` leftovers of checkpoints interrupted by a crash (call before checkpointing)."""
    root = checkpoints_dir(data_dir)
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX):
            shutil.rmtree(entry.path, ignore_errors=True)


_live_locks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]]" = (
    weakref.WeakKeyDictionary())


def _live_lock(data_dir: str | os.PathLike[str]) -> asyncio.Lock:
    """One checkpoint at a time per data directory (per event loop): the periodic one and an admin's."""
    locks = _live_locks.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(os.path.abspath(data_dir), asyncio.Lock())


async def checkpoint_live(projection: Projection, data_dir: str | os.PathLike[str],
                          keep: "int | CheckpointPolicy | None" = None,
                          *, force: bool = False, vectors: VectorIndexes | None = None) -> CheckpointInfo | None:
    """Take a checkpoint of a projection that is being applied to on this event loop, without stopping it.

    In worker threads first: the memtable is flushed (RocksDB flushes are
    thread-safe; applies continue meanwhile), the search indexes commit what
    is pending, and `vectors`' ready indexes are saved. Then the checkpoint
    itself — a flush of whatever was applied since plus hard links, and a
    marker for the search worker — is taken on the event loop, so it is
    exactly the state after the applied offset it is tagged with; the search
    worker's commit at that offset and its copy, the fsyncs and the rename
    run off the loop again. The time the loop was blocked is logged and
    stored. Returns None when nothing new was applied since the newest
    checkpoint (unless `force`); with `keep`, only the newest `keep`
    checkpoints are kept.
    """
    async with _live_lock(data_dir):
        latest = list_checkpoints(data_dir)
        if not force and latest and latest[-1].offset == projection.applied_offset:
            return None
        if projection.applied_offset < 0:
            return None
        root = checkpoints_dir(data_dir)
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f"{TMP_PREFIX}live-{os.getpid()}-{next(_counter)}"
        taken: _Taken | None = None
        try:
            tmp.mkdir()
            await asyncio.to_thread(projection.flush)
            await asyncio.to_thread(projection.flush_search)  # the commit at the checkpoint's offset is then small
            saved = (await asyncio.to_thread(vectors.save_copy, tmp / VECTORS_DIR, _previous_vectors(data_dir))
                     if vectors is not None else {})
            if (root / str(projection.applied_offset)).exists() and not force:
                shutil.rmtree(tmp, ignore_errors=True)
                return None
            taken = _take(projection, tmp)  # on the loop: no apply interleaves
            taken.search = await asyncio.to_thread(_wait_search, taken.snapshot)
            info = await asyncio.to_thread(_finish, data_dir, tmp, taken, saved, keep, force)
        except BaseException:
            if taken is not None and not taken.search:  # let the search worker finish its copy into `tmp` first
                await asyncio.to_thread(_wait_search, taken.snapshot)
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            raise
    if info is not None:
        log.info("checkpoint at offset %d (%d documents, %d search and %d vector indexes), event loop "
                 "blocked %.1f ms", info.offset, info.documents, len(info.search), len(info.vectors),
                 info.blocked_ms)
    return info


async def run_checkpointer(projection: Projection, data_dir: str | os.PathLike[str], interval: float,
                           keep: "int | CheckpointPolicy", *, vectors: VectorIndexes | None = None) -> None:
    """Background task: `checkpoint_live` the projection every `interval` seconds (0 or less: off).

    Keeps the newest `keep`. Failures are logged and retried at the next
    interval; cancel the task to stop it.
    """
    interval = float(interval)
    if interval <= 0:
        return
    await asyncio.to_thread(clean_partial, data_dir)
    while True:
        await asyncio.sleep(interval)
        try:
            await checkpoint_live(projection, data_dir, keep, vectors=vectors)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("taking a projection checkpoint failed; retrying in %.1fs", interval)


__all__ = [
    "CheckpointInfo",
    "CheckpointPolicy",
    "SCHEMA_MARKER",
    "partial_checkpoints",
    "checkpoint_live",
    "checkpoints_dir",
    "clean_partial",
    "copy_projection",
    "copy_search_indexes",
    "drop_after",
    "list_checkpoints",
    "nearest_checkpoint",
    "nearest_valid_checkpoint",
    "prune",
    "run_checkpointer",
    "take_checkpoint",
    "verify",
]
