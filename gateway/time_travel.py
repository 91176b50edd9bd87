"""Time travel: run a query against the state of a past log position, without touching the live one.

The state as of offset N (or as of commit timestamp T: the records with
ts <= T) is materialized into a temporary projection under
``DATA/.timetravel/<pid>/``: the best base at or before N — a cached
past projection (copied by a RocksDB checkpoint: hard links) or a checkpoint
of ``DATA/checkpoints`` — plus a replay of the log up to N. A point at or
after the live projection's applied offset runs on the live runtime directly.

Bounded, so time travel cannot stall the live deployment:

* the few most recently used past projections are kept open (`CACHE_SIZE`),
  so repeated queries at one point cost just the query; each is flushed once
  built (no memtable held in memory);
* one state is built at a time, replayed in steps of `REPLAY_BATCH` records
  with the event loop served between steps; at most `MAX_WAITING_BUILDS`
  distinct states wait for their turn, more are refused with ``Overloaded``
  (`TimeTravelBusy`) instead of queueing without end;
* the query itself runs like a live one (`Runtime.query`): on the loop for
  one slice, then on a query worker with the full time limit. A projection
  lent to a worker is pinned: evicting it from the cache closes it only once
  the worker is done.

History is not public. ``/api/query_at_ts`` (`query_at`) serves without the
admin key only states that were live at some moment of the last
``ServerConfig.query_at_ts_window`` seconds (default 300; Convex itself keeps
about 30 s): the history holds deleted data. Older states need
``Authorization: Convex <admin key>``; ``/api/admin/query_at`` is admin-only.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import shutil
import time
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Sequence

from engine.errors import EngineError
from engine.execution import SliceExpired
from engine.readset import ReadSet
from engine.runtime import QueryResult
from gateway import http_protocol as hp
from history.build import build_projection
from history.points import format_ns
from log.archived_log import ArchivedLog
from log.file_log import FileLog
from projections.checkpoints import CheckpointInfo, take_checkpoint
from projections.store import Projection

log = logging.getLogger("tape.time_travel")

CACHE_SIZE = 4
REPLAY_BATCH = 256  # records prepared per step on the live event loop (keeps its stalls to a few ms)
MAX_WAITING_BUILDS = 8  # distinct past states waiting to be built; beyond it new ones are refused
ROOT_DIR = ".timetravel"

_instances: "weakref.WeakKeyDictionary[Any, TimeTravel]" = weakref.WeakKeyDictionary()


async def _with_archive(node: Any, offset: int) -> Any:
    """The node's log, read together with its segment archive when `offset` is before the retention window."""
    live = node.log
    archive = getattr(node, "archive_directory", None)
    if offset >= live.first_offset() or not isinstance(live, FileLog) or archive is None:
        return live
    joined = ArchivedLog(archive, live, owns_live=False)
    await joined.open()
    return joined


class TimeTravelBusy(EngineError):
    """Too many distinct past states are waiting to be built: try again later."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PinnedProjection:
    """A cached past projection lent to a query worker (a `SnapshotReader`); `close` returns it.

    Past projections never change once built, so any thread may read one; the
    pin only keeps the cache from closing it while a worker still reads.
    """

    def __init__(self, owner: "TimeTravel", projection: Projection) -> None:
        self._owner = owner
        self._projection = projection
        self._closed = False

    @property
    def applied_offset(self) -> int:
        return self._projection.applied_offset

    @property
    def applied_ts(self) -> int:
        return self._projection.applied_ts

    def get(self, doc_id: str) -> bytes | None:
        return self._projection.get(doc_id)

    def scan(self, lo: bytes, hi: bytes, reverse: bool = False) -> Iterator[tuple[bytes, str]]:
        return self._projection.scan(lo, hi, reverse)

    def doc_key(self, doc_id: str, table: str | None = None) -> bytes:
        return self._projection.doc_key(doc_id, table)

    def index_keys(self, table: str, doc: dict[str, Any]) -> list[tuple[str, bytes]]:
        return self._projection.index_keys(table, doc)

    def index_prefix(self, table: str, index: str) -> bytes:
        return self._projection.index_prefix(table, index)

    def index_range(self, table: str, index: str, eq: Sequence[Any] = (), lower: Any = None,
                    upper: Any = None) -> tuple[bytes, bytes]:
        return self._projection.index_range(table, index, eq, lower, upper)

    def iter_documents(self, table: str | None = None) -> Iterator[bytes]:
        return self._projection.iter_documents(table)

    def search_spec(self, table: str, index: str) -> Any:
        return self._projection.search_spec(table, index)

    def search_candidates(self, table: str, index: str, query: Any, limit: int, extra: Any = None) -> Any:
        """The past projection's own search index (built from its documents when it was opened)."""
        return self._projection.search_candidates(table, index, query, limit, extra)

    def close(self) -> None:
        """Give the projection back (it may then be closed by the cache)."""
        if not self._closed:
            self._closed = True
            self._owner._unpin(self._projection)


class TimeTravel:
    """Past projections of one node, built on demand and cached (see the module docstring)."""

    def __init__(self, node: Any, cache_size: int = CACHE_SIZE, max_waiting: int = MAX_WAITING_BUILDS) -> None:
        self.node = node
        self.cache_size = max(1, cache_size)
        self.max_waiting = max(1, max_waiting)
        base = Path(node.config.data_dir) / ROOT_DIR
        self.root = base / str(os.getpid())
        self._cache: OrderedDict[int, Projection] = OrderedDict()
        self._building: dict[int, asyncio.Task[Projection]] = {}
        self._pins: dict[int, int] = {}  # id(projection) -> workers reading it
        self._retired: dict[int, Projection] = {}  # evicted while pinned: closed when the last pin goes
        self._evicted: dict[int, Projection] = {}  # waiting to be discarded (`_discard_later`)
        self._discarding: set[asyncio.Future[None]] = set()  # their discards, waiting or on a thread
        self._counter = itertools.count()
        self._closed = False
        self._one_at_a_time = asyncio.Lock()
        self.builds = 0
        self._clean_stale(base)

    def _clean_stale(self, base: Path) -> None:
        try:
            entries = list(os.scandir(base))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.isdigit() and (int(entry.name) == os.getpid() or not _pid_alive(int(entry.name))):
                shutil.rmtree(entry.path, ignore_errors=True)

    # -- positions ---------------------------------------------------------------

    async def offset_at_ts(self, ts: int) -> int:
        """The last offset whose record has ts <= `ts` (-1 if none)."""
        return await self.node.log.offset_for_timestamp(ts + 1) - 1

    def live_offset(self) -> int:
        return self.node.runtime.projection.applied_offset

    # -- projections ---------------------------------------------------------------

    async def projection_at(self, offset: int) -> Projection:
        """An open projection holding exactly records 0..offset (cached; do not close it).

        Raises `TimeTravelBusy` if `MAX_WAITING_BUILDS` other states are already waiting to be built.
        """
        if self._closed:
            raise RuntimeError("time travel is closed")
        cached = self._cache.get(offset)
        if cached is not None:
            self._cache.move_to_end(offset)
            return cached
        task = self._building.get(offset)
        if task is None:
            if len(self._building) >= self.max_waiting:
                raise TimeTravelBusy(f"Overloaded: {len(self._building)} past states are already being built "
                                     "for time travel; try again shortly")
            task = asyncio.ensure_future(self._build(offset))
            self._building[offset] = task
            task.add_done_callback(lambda _t, o=offset: self._building.pop(o, None))
        return await asyncio.shield(task)

    async def _build(self, offset: int) -> Projection:
        async with self._one_at_a_time:  # one replay at a time next to the live workload
            return await self._build_now(offset)

    async def _build_now(self, offset: int) -> Projection:
        node = self.node
        n = next(self._counter)
        path = self.root / f"{offset}-{n}"
        scratch = self.root / f"base-{n}"
        self.root.mkdir(parents=True, exist_ok=True)
        extra: list[CheckpointInfo] = []
        below = [o for o in self._cache if o <= offset]
        if below:
            # A cached past state is usually the closest base: copy it (hard links, on a thread: a
            # checkpoint may flush) and replay forward.
            lent = self._pin(self._cache[max(below)])
            try:
                info = await asyncio.to_thread(take_checkpoint, lent._projection, scratch)
            finally:
                lent.close()
            if info is not None:
                extra.append(info)
        source = await _with_archive(node, offset)
        try:
            projection, build = await build_projection(
                source, path, offset, data_dir=Path(node.config.data_dir),
                catalog=node.app.schema.index_catalog(), extra_bases=extra, batch_records=REPLAY_BATCH)
        finally:
            if source is not node.log:
                await source.close()
            await asyncio.to_thread(shutil.rmtree, scratch, True)
        try:  # on a thread (without the GIL): frees its memtable, and later checkpoints and closes are quick
            await asyncio.to_thread(projection.flush)
        except BaseException:
            projection.close()
            raise
        self.builds += 1
        log.info("time travel: built the state at offset %d from %s + %d replayed record(s) in %.3fs",
                 offset, build.base, build.replayed, build.copy_seconds + build.replay_seconds)
        if self._closed:
            projection.close()
            shutil.rmtree(path, ignore_errors=True)
            raise RuntimeError("time travel was closed while building")
        self._cache[offset] = projection
        while len(self._cache) > self.cache_size:
            _old, victim = self._cache.popitem(last=False)
            if self._pins.get(id(victim)):
                self._retired[id(victim)] = victim  # a worker still reads it: closed when it is done
            else:
                self._discard_later(victim)
        return projection

    @staticmethod
    def _discard(projection: Projection) -> None:
        path = projection.path
        try:
            projection.close()
        except Exception as exc:  # its directory may be gone already (time travel closed meanwhile)
            log.debug("time travel: closing %s failed: %s", path, exc)
        shutil.rmtree(path, ignore_errors=True)

    def _discard_later(self, projection: Projection) -> None:
        """Close and remove `projection` on a thread, between builds.

        Closing flushes the RocksDB (tens to hundreds of ms, without the GIL);
        opening one holds the GIL, and slowly while the disk is busy flushing:
        so a discard never overlaps a build.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._discard(projection)
            return
        self._evicted[id(projection)] = projection

        async def discard() -> None:
            async with self._one_at_a_time:
                await asyncio.to_thread(self._discard, projection)
            self._evicted.pop(id(projection), None)
        future = asyncio.ensure_future(discard())
        self._discarding.add(future)
        future.add_done_callback(self._discarding.discard)

    async def wait_discarded(self) -> None:
        """Wait until every evicted projection has been closed and removed."""
        while self._discarding:
            await asyncio.gather(*list(self._discarding), return_exceptions=True)

    def _pin(self, projection: Projection) -> PinnedProjection:
        self._pins[id(projection)] = self._pins.get(id(projection), 0) + 1
        return PinnedProjection(self, projection)

    def _unpin(self, projection: Projection) -> None:
        key = id(projection)
        left = self._pins.get(key, 1) - 1
        if left > 0:
            self._pins[key] = left
            return
        self._pins.pop(key, None)
        retired = self._retired.pop(key, None)
        if retired is not None:
            self._discard_later(retired)

    # -- queries -------------------------------------------------------------------

    async def evaluate(self, path: str, args: Any, offset: int, identity: Any = None) -> QueryResult:
        """Run query `path` as of `offset` (errors are returned in the result, as `Runtime.evaluate_query`)."""
        runtime = self.node.runtime
        if offset == self.live_offset():
            return await runtime.query(path, args, identity=identity)
        try:
            projection = await self.projection_at(offset)
        except TimeTravelBusy as exc:
            return QueryResult(None, ReadSet(), offset, 0, exc)
        if not runtime.is_slow(path):
            try:  # like a live query: one slice on the loop...
                return runtime.evaluate_query(path, args, identity=identity, reader=projection,
                                              slice_seconds=runtime.limits.loop_slice_seconds)
            except SliceExpired:
                pass
        # ...then on a query worker, with the projection pinned (the worker closes the pin when done).
        return await runtime.query_at(self._pin(projection), path, args, identity=identity)

    def close(self) -> None:
        """Close every cached projection and remove the temporary directory."""
        self._closed = True
        for task in list(self._building.values()):
            task.cancel()
        for projection in [*self._cache.values(), *self._evicted.values()]:
            if self._pins.get(id(projection)):
                self._retired[id(projection)] = projection  # closed when its last reader is done
            else:
                projection.close()
        self._cache.clear()
        self._evicted.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def get_time_travel(node: Any) -> TimeTravel:
    """The node's `TimeTravel` (made on first use)."""
    tt = _instances.get(node)
    if tt is None or tt._closed:
        tt = _instances[node] = TimeTravel(node)
    return tt


def close_time_travel(node: Any) -> None:
    """Release the node's past projections (call on shutdown)."""
    tt = _instances.pop(node, None)
    if tt is not None:
        tt.close()


# -- the public window ------------------------------------------------------------


async def is_public(node: Any, ts: int, now_ns: int | None = None) -> bool:
    """Whether the state as of `ts` may be served without the admin key.

    It may if it was the live state at some moment of the last
    ``query_at_ts_window`` seconds: it is still live (`ts` at or after the
    last applied commit), or the first commit after `ts` came within the
    window (commit timestamps are wall-clock ns). Answered from the log's
    timestamp index, without reading records.
    """
    window = float(node.config.query_at_ts_window)
    if (math.isinf(window) and window > 0) or ts >= node.runtime.projection.applied_ts:
        return True
    cutoff = (time.time_ns() if now_ns is None else now_ns) - int(max(window, 0.0) * 1e9)
    if ts >= cutoff:
        return True
    superseded_at = await node.log.offset_for_timestamp(ts + 1)  # the first record after the state
    return superseded_at >= await node.log.offset_for_timestamp(cutoff)


def window_error(node: Any, ts: int) -> hp.HttpApiError:
    """The one-line refusal of a `ts` outside the public window (HTTP 400 ``TimestampTooOld``)."""
    window = float(node.config.query_at_ts_window)
    when = format_ns(ts) if ts > 0 else "the beginning"
    return hp.HttpApiError(
        f"ts {ts} ({when}) is older than the {window:g} s of history /api/query_at_ts serves without the "
        "admin key; send 'Authorization: Convex <admin key>' to query older states",
        code="TimestampTooOld", status=400)


async def query_at(node: Any, path: str, args: Any, ts: int, identity: Any, *, admin: bool = False) -> Any:
    """The value of query `path` as of commit timestamp `ts` (records with ts <= `ts`).

    Without `admin`, only a state within the public window (`is_public`) is
    served; an older `ts` raises `window_error`'s `HttpApiError` (400), as does
    a busy time travel (`TimeTravelBusy`, 503). Otherwise raises the query's
    error (AppError/EngineError) like `Runtime.run_query`.
    """
    if not admin and not await is_public(node, ts):
        raise window_error(node, ts)
    tt = get_time_travel(node)
    if ts >= node.runtime.projection.applied_ts:
        result = await node.runtime.query(path, args, identity=identity)
    else:
        result = await tt.evaluate(path, args, await tt.offset_at_ts(ts), identity)
    if isinstance(result.error, TimeTravelBusy):
        raise hp.HttpApiError(str(result.error), code="Overloaded", status=503)
    if result.error is not None:
        raise result.error
    return result.value


__all__ = ["CACHE_SIZE", "MAX_WAITING_BUILDS", "PinnedProjection", "TimeTravel", "TimeTravelBusy",
           "close_time_travel", "get_time_travel", "is_public", "query_at", "window_error"]
