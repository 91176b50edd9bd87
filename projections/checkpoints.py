"""Projection checkpoints: consistent copies of the projection, tagged with their log position.

Layout (inside a data directory)::

    checkpoints/
      <offset>/                 one checkpoint: the state after log record <offset>
        projection/             a RocksDB checkpoint (opens as a normal `Projection`)
        checkpoint.json         {"offset", "ts", "created_ns", "indexes", "documents", ...}
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .store import Projection

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

    @property
    def projection_dir(self) -> Path:
        """The RocksDB directory of this checkpoint (open it only through a copy: see `copy_projection`)."""
        return self.path / PROJECTION_DIR

    def as_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "offset": self.offset,
            "ts": self.ts,
            "created_ns": self.created_ns,
            "documents": self.documents,
            "blocked_ms": self.blocked_ms,
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
                              documents=int(meta.get("documents", 0)), blocked_ms=float(meta.get("blocked_ms", 0.0)))
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
    OPTIONS, ...) is copied, since RocksDB may append to it once opened.
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync every file under `path` and every directory (RocksDB's own files included)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


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
                    *, force: bool = False) -> CheckpointInfo | None:
    """Checkpoint `projection` into DATA_DIR/checkpoints/<applied offset>/ (synchronously).

    The caller makes sure nothing applies records to `projection` during the
    call (on a node: call it on the event loop). Returns None when nothing was
    applied yet or a checkpoint of this offset exists already (unless `force`,
    which replaces it). With `keep`, older checkpoints beyond the newest `keep`
    are deleted afterwards.
    """
    offset, ts = projection.applied_offset, projection.applied_ts
    if offset < 0:
        return None
    root = checkpoints_dir(data_dir)
    final = root / str(offset)
    if final.exists() and not force:
        return None
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{TMP_PREFIX}{offset}-{os.getpid()}-{next(_counter)}"
    started = time.perf_counter()
    try:
        tmp.mkdir()
        projection.checkpoint(tmp / PROJECTION_DIR)
        marker = Path(projection.path) / SCHEMA_MARKER
        if marker.exists():  # the documents were checked against the schema: so were the checkpoint's
            shutil.copy2(marker, tmp / PROJECTION_DIR / SCHEMA_MARKER)
        blocked_ms = (time.perf_counter() - started) * 1000.0
        documents = sum(projection.count(t) for t in projection.tables())
        meta = {
            "format": FORMAT,
            "offset": offset,
            "ts": ts,
            "created_ns": time.time_ns(),
            "indexes": projection.indexes,
            "documents": documents,
            "blocked_ms": round(blocked_ms, 3),
        }
        _write_json(tmp / META_FILE, meta)
        _fsync_tree(tmp)  # everything is durable before the rename makes it a checkpoint
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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


async def checkpoint_live(projection: Projection, data_dir: str | os.PathLike[str],
                          keep: "int | CheckpointPolicy | None" = None,
                          *, force: bool = False) -> CheckpointInfo | None:
    """Take a checkpoint of a projection that is being applied to on this event loop, without stopping it.

    The memtable is flushed first in a worker thread (RocksDB flushes are
    thread-safe; applies may continue meanwhile), then the checkpoint itself —
    a flush of whatever was applied since plus hard links — is taken on the
    event loop, so it is exactly the state after the applied offset it is
    tagged with. The time the loop was blocked is logged and stored. Returns
    None when nothing new was applied since the newest checkpoint (unless
    `force`); with `keep`, only the newest `keep` checkpoints are kept.
    """
    latest = list_checkpoints(data_dir)
    if not force and latest and latest[-1].offset == projection.applied_offset:
        return None
    if projection.applied_offset < 0:
        return None
    await asyncio.to_thread(projection.flush)
    info = take_checkpoint(projection, data_dir, keep, force=force)
    if info is not None:
        log.info("checkpoint at offset %d (%d documents), event loop blocked %.1f ms",
                 info.offset, info.documents, info.blocked_ms)
    return info


async def run_checkpointer(projection: Projection, data_dir: str | os.PathLike[str], interval: float,
                           keep: "int | CheckpointPolicy") -> None:
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
            await checkpoint_live(projection, data_dir, keep)
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
    "drop_after",
    "list_checkpoints",
    "nearest_checkpoint",
    "nearest_valid_checkpoint",
    "prune",
    "run_checkpointer",
    "take_checkpoint",
    "verify",
]
