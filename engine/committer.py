"""The single writer: serial mutation execution with group commit.

Mutations queue up while the previous batch is being made durable. Each
batch runs its mutations one at a time against the latest state plus the
writes of earlier, not yet applied mutations (an `Overlay`), appends one log
record per successful mutation in a single group commit, applies them to the
projection, and only then answers the callers. Serial execution makes every
mutation serializable with no conflicts and no retries, however hot the keys.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.context import Auth, MutationCtx
from engine.db import DatabaseWriter, Transaction
from engine.errors import EngineError
from engine.execution import run_handler
from engine.functions import FunctionDef
from engine.overlay import Overlay
from engine.scan_cache import ScanCache
from values import decode_value, encode_value
from log.errors import LogError
from log.record import Record, Write

if TYPE_CHECKING:
    from engine.runtime import Runtime

log = logging.getLogger("tape.committer")

REQUESTS_TABLE = "_requests"
_DOCUMENT_CACHE_MAX = 1 << 18  # committed documents (encoded) the writer keeps in memory; cleared beyond


def request_doc_id(session_id: str, request_id: int) -> str:
    """Id of the system document that remembers a committed client request."""
    return f"{REQUESTS_TABLE}:{session_id}:{request_id}"


@dataclass
class MutationOutcome:
    """A committed mutation: its return value, commit timestamp and log offset."""

    value: Any
    ts: int
    offset: int
    replayed: bool = False


@dataclass
class _Pending:
    fn: FunctionDef
    args: dict[str, Any]
    identity: dict[str, Any] | None
    session_id: str | None
    request_id: int | None
    future: asyncio.Future[MutationOutcome]


class CreationClock:
    """Strictly increasing `_creationTime` values in float milliseconds."""

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self) -> float:
        now = time.time() * 1000.0
        if now <= self._last:
            now = self._last + 0.001
            if now <= self._last:  # float resolution exhausted: step to the next representable value
                import math
                now = math.nextafter(self._last, float("inf"))
        self._last = now
        return now


@dataclass
class _Staged:
    """An executed batch waiting to be made durable."""

    seq: int
    generation: int
    records: list[Record]
    owners: list[list[_Pending]]
    values: list[Any]  # each record's return value, as the handler returned it
    changed_tables: set[str]  # tables whose index keys the batch changes
    end_mark: int
    keys: list[tuple[str, int]]
    first_offset: int


class Committer:
    """Owns the write path of one deployment (the committer role).

    Execution is pipelined with durability: while batch N is being appended
    (fsync), batch N+1 executes on top of N's writes in the overlay. N+1 is
    appended only after N is durable; if N's append fails, everything
    executed on top of it is undone and re-queued, so nothing ever depends
    on a write that did not become durable.
    """

    def __init__(self, runtime: "Runtime", max_batch: int = 1024) -> None:
        self._runtime = runtime
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._max_batch = max_batch
        self._last_ts = 0
        self._next_offset = 0
        self._seq = 0
        self._generation = 0
        self._overlay = Overlay()
        self._pending_requests: dict[tuple[str, int], list[_Pending]] = {}
        self._broken: str | None = None  # set when committed records could not be applied here
        self._creation_clock = CreationClock()
        # Committed documents by id, as the projection holds them: read through, updated on every apply.
        self._documents: dict[str, bytes | None] = {}
        self._scans = ScanCache()  # small committed index scans, dropped per table when its keys change
        self._app_seen: object = None  # the app the caches were filled under (a reload empties them)
        self._loop_: asyncio.AbstractEventLoop | None = None  # the loop `start` ran on
        self.batches = 0
        self.committed = 0

    def start(self) -> None:
        if self._task is None:
            self._resync()
            self._loop_ = asyncio.get_running_loop()
            self._task = self._loop_.create_task(self._loop(), name="tape-committer")

    def _resync(self) -> None:
        log_ = self._runtime.log
        self._last_ts = max(log_.last_ts(), self._runtime.projection.applied_ts)
        self._next_offset = log_.next_offset()

    async def stop(self) -> None:
        """Finish queued mutations, then stop."""
        if self._task is None:
            return
        while self._queue or (self._inflight is not None and not self._inflight.done()):
            await asyncio.sleep(0.001)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def submit(self, fn: FunctionDef, args: dict[str, Any], identity: dict[str, Any] | None,
                     session_id: str | None, request_id: int | None) -> MutationOutcome:
        """Queue a validated mutation; resolves once its transaction is durable and applied."""
        if self._task is None:
            raise EngineError("the committer is not running on this node")
        if self._broken is not None:
            raise EngineError(self._broken)
        assert self._loop_ is not None
        pending = _Pending(fn, args, identity, session_id, request_id, self._loop_.create_future())
        self._queue.append(pending)
        self._wakeup.set()
        return await pending.future

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
                if self._broken is not None:
                    self._fail(batch, EngineError(self._broken))
                    continue
                try:
                    staged = self._execute(batch)
                except Exception as exc:  # never let the writer die silently
                    log.exception("executing a batch failed")
                    self._fail(batch, EngineError(f"commit failed: {exc}"))
                    continue
                if self._inflight is not None:
                    await self._inflight
                    self._inflight = None
                if staged is None:
                    continue
                if staged.generation != self._generation:
                    # The batch below it failed to append: its execution is void. Run it again.
                    self._queue[:0] = [p for group in staged.owners for p in group]
                    continue
                self._inflight = asyncio.get_running_loop().create_task(self._finish(staged))

    @staticmethod
    def _fail(batch: list[_Pending], error: Exception) -> None:
        for p in batch:
            if not p.future.done():
                p.future.set_exception(error)

    def _next_ts(self) -> int:
        ts = max(time.time_ns(), self._last_ts + 1)
        self._last_ts = ts
        return ts

    def _previous_answer(self, session_id: str, request_id: int) -> MutationOutcome | None:
        raw = self._runtime.projection.get(request_doc_id(session_id, request_id))
        if raw is None:
            return None
        saved = decode_value(raw)
        return MutationOutcome(saved["result"], saved["ts"], saved["offset"], replayed=True)

    def _execute(self, batch: list[_Pending]) -> _Staged | None:
        """Run a batch serially on top of every pending write; returns the records to append."""
        runtime = self._runtime
        projection = runtime.projection
        overlay = self._overlay
        documents = self._documents
        if len(documents) > _DOCUMENT_CACHE_MAX:
            documents.clear()
        if runtime.app is not self._app_seen:
            self._scans.clear()
            self._app_seen = runtime.app
        changed_tables: set[str] = set()
        self._seq += 1
        seq = self._seq
        records: list[Record] = []
        owners: list[list[_Pending]] = []
        values: list[Any] = []
        keys: list[tuple[str, int]] = []
        for p in batch:
            key = None
            if p.session_id is not None and p.request_id is not None:
                key = (p.session_id, p.request_id)
                waiting = self._pending_requests.get(key)
                if waiting is not None:
                    waiting.append(p)  # the same request is already executed: share its answer
                    continue
                previous = self._previous_answer(*key)
                if previous is not None:
                    p.future.set_result(previous)
                    continue
            mark = overlay.mark()
            tx = Transaction(projection, runtime.app.schema, runtime.limits, overlay, writable=True, batch=seq,
                             loaded=documents, scans=self._scans, changed_tables=changed_tables)
            ctx = MutationCtx(DatabaseWriter(tx, self._creation_clock), Auth(p.identity))
            try:
                value = run_handler(p.fn.handler(ctx, **p.args), p.fn.path, runtime.limits.max_seconds)
                result = encode_value(value)
            except Exception as exc:
                overlay.rollback(mark)
                p.future.set_exception(exc)
                continue
            writes = []
            for doc_id, (table, prev) in tx.touched.items():
                entry = overlay.get(doc_id)
                doc = entry.doc if entry is not None else None
                if doc is None and prev is None:
                    continue  # inserted and deleted inside one transaction
                # keys None: the document keeps the index keys the projection has for it (see Overlay)
                same_keys = entry is not None and entry.keys is None and doc is not None and prev is not None
                writes.append(Write(table, doc_id, doc, prev, same_keys))
            offset = self._next_offset + len(records)
            record = Record(writes=writes, ts=self._next_ts(), session_id=p.session_id, request_id=p.request_id,
                            function=p.fn.path, result=result)
            group = [p]
            if key is not None:
                # Remember the answer durably, inside the same transaction (exactly-once across crashes).
                memo = {"result": value, "ts": record.ts, "offset": offset}
                record.writes.append(Write(REQUESTS_TABLE, request_doc_id(*key), encode_value(memo), None))
                self._pending_requests[key] = group
                keys.append(key)
                changed_tables.add(REQUESTS_TABLE)
            records.append(record)
            owners.append(group)
            values.append(value)
        if not records:
            return None
        first_offset = self._next_offset
        self._next_offset += len(records)
        return _Staged(seq, self._generation, records, owners, values, changed_tables, overlay.mark(), keys,
                       first_offset)

    async def _finish(self, staged: _Staged) -> bool:
        """Append a staged batch, apply it and answer its callers; undo everything on failure."""
        runtime = self._runtime
        try:
            await runtime.log.append(staged.records)
        except LogError as exc:
            # Every earlier batch is applied, so the overlay holds only this batch and whatever
            # executed on top of it (the loop re-queues that): drop it all.
            self._overlay.clear()
            self._generation += 1
            for key in list(self._pending_requests):
                del self._pending_requests[key]
            self._resync()
            error = EngineError(f"commit failed: {exc}")
            for group in staged.owners:
                self._fail(group, error)
            return False
        # Offsets come from the log (a Kafka log may skip a duplicate's offset): follow it.
        self._next_offset += staged.records[-1].offset + 1 - (staged.first_offset + len(staged.records))
        try:
            runtime.apply_committed(staged.records)
            documents = self._documents
            for record in staged.records:
                for w in record.writes:
                    documents[w.id] = w.doc
            self._scans.invalidate(staged.changed_tables)
        except Exception as exc:
            self._documents.clear()
            self._scans.clear()
            # The batch is durable in the log (it is committed and a restart replays it), but this
            # node's projection does not have it: no later mutation may execute on top of that.
            log.exception("applying committed records %d..%d to the projection failed",
                          staged.records[0].offset, staged.records[-1].offset)
            self._broken = (f"writes are refused until the server restarts: applying committed records to the "
                            f"projection failed ({exc}); the log has them and a restart replays them")
            self._overlay.clear()
            self._generation += 1
            self._pending_requests.clear()
        self._overlay.forget((w.id for r in staged.records for w in r.writes), staged.seq)
        self._overlay.trim(staged.end_mark)
        for key in staged.keys:
            self._pending_requests.pop(key, None)
        self.batches += 1
        self.committed += len(staged.records)
        for record, group, value in zip(staged.records, staged.owners, staged.values):
            outcome = MutationOutcome(value, record.ts, record.offset)
            for p in group:
                if not p.future.done():
                    p.future.set_result(outcome)
        return True
