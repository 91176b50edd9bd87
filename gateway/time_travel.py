"""Time travel: run a query against the state of a past log position, without touching the live one.

The state as of offset N (or as of commit timestamp T: the records with
ts <= T) is materialized into a temporary projection under
``DATA/.timetravel/<pid>/``: the best base at or before N — a cached
past projection (copied by a RocksDB checkpoint: hard links) or a checkpoint
of ``DATA/checkpoints`` — plus a replay of the log up to N. The few most
recently used past projections are kept open (`CACHE_SIZE`), so repeated
queries at the same point cost just the query; one state is built at a time,
in small steps, so the live event loop keeps serving. The query then runs on a
`Runtime` bound to that projection; queries only read, so nothing can write
to it. A point at or after the live projection's applied offset runs on the
live runtime directly.

`query_at(node, path, args, ts, identity)` is the entry point for
``/api/query_at_ts``; `gateway.admin_api` offers ``/api/admin/query_at``.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

from engine.runtime import QueryResult, Runtime
from projections.checkpoints import CheckpointInfo, take_checkpoint
from projections.store import Projection

log = logging.getLogger("tape.time_travel")

CACHE_SIZE = 4
REPLAY_BATCH = 256  # records prepared per step on the live event loop (keeps its stalls to a few ms)
ROOT_DIR = ".timetravel"

_instances: "weakref.WeakKeyDictionary[Any, TimeTravel]" = weakref.WeakKeyDictionary()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TimeTravel:
    """Past projections of one node, built on demand and cached (see the module docstring)."""

    def __init__(self, node: Any, cache_size: int = CACHE_SIZE) -> None:
        self.node = node
        self.cache_size = max(1, cache_size)
        base = Path(node.config.data_dir) / ROOT_DIR
        self.root = base / str(os.getpid())
        self._cache: OrderedDict[int, Projection] = OrderedDict()
        self._building: dict[int, asyncio.Task[Projection]] = {}
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
        """An open projection holding exactly records 0..offset (cached; do not close it)."""
        if self._closed:
            raise RuntimeError("time travel is closed")
        cached = self._cache.get(offset)
        if cached is not None:
            self._cache.move_to_end(offset)
            return cached
        task = self._building.get(offset)
        if task is None:
            task = asyncio.ensure_future(self._build(offset))
            self._building[offset] = task
            task.add_done_callback(lambda _t, o=offset: self._building.pop(o, None))
        return await asyncio.shield(task)

    async def _build(self, offset: int) -> Projection:
        async with self._one_at_a_time:  # one replay at a time next to the live workload
            return await self._build_now(offset)

    async def _build_now(self, offset: int) -> Projection:
        from ops.restore import build_projection
        node = self.node
        n = next(self._counter)
        path = self.root / f"{offset}-{n}"
        scratch = self.root / f"base-{n}"
        self.root.mkdir(parents=True, exist_ok=True)
        extra: list[CheckpointInfo] = []
        below = [o for o in self._cache if o <= offset]
        if below:
            # A cached past state is usually the closest base: copy it (hard links) and replay forward.
            info = take_checkpoint(self._cache[max(below)], scratch)
            if info is not None:
                extra.append(info)
        try:
            projection, build = await build_projection(
                node.log, path, offset, data_dir=Path(node.config.data_dir),
                catalog=node.app.schema.index_catalog(), extra_bases=extra, batch_records=REPLAY_BATCH)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
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
            victim_path = victim.path
            victim.close()
            shutil.rmtree(victim_path, ignore_errors=True)
        return projection

    # -- queries -------------------------------------------------------------------

    async def evaluate(self, path: str, args: Any, offset: int, identity: Any = None) -> QueryResult:
        """Run query `path` as of `offset` (errors are returned in the result, as `Runtime.evaluate_query`)."""
        node = self.node
        if offset == self.live_offset():
            return node.runtime.evaluate_query(path, args, identity=identity)
        projection = await self.projection_at(offset)
        runtime = Runtime(node.app, node.log, projection, node.config.limits, role="replica")
        return runtime.evaluate_query(path, args, identity=identity)

    def close(self) -> None:
        """Close every cached projection and remove the temporary directory."""
        self._closed = True
        for task in list(self._building.values()):
            task.cancel()
        for projection in self._cache.values():
            projection.close()
        self._cache.clear()
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


async def query_at(node: Any, path: str, args: Any, ts: int, identity: Any) -> Any:
    """The value of query `path` as of commit timestamp `ts` (records with ts <= `ts`).

    Raises the query's error (AppError/EngineError) like `Runtime.run_query`.
    """
    tt = get_time_travel(node)
    if ts >= node.runtime.projection.applied_ts:
        result = node.runtime.evaluate_query(path, args, identity=identity)
    else:
        result = await tt.evaluate(path, args, await tt.offset_at_ts(ts), identity)
    if result.error is not None:
        raise result.error
    return result.value


__all__ = ["CACHE_SIZE", "TimeTravel", "close_time_travel", "get_time_travel", "query_at"]
