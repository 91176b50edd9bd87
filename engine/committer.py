"""The single writer: serial mutation execution with group commit.

Mutations queue up while the previous batch is being made durable. Each
batch runs its mutations one at a time against the latest state plus the
writes of earlier, not yet applied mutations (an `Overlay`), appends one log
record per successful mutation in a single group commit, applies them to the
projection, and only then answers the callers. Serial execution makes every
mutation serializable with no conflicts and no retries, however hot the keys.

Exactly-once: a mutation sent with a (session id, request id) stores its
answer in a `_requests` document written in the same record, together with a
fingerprint of the call (`request_fingerprint`: path, arguments, caller). A
repeat with the same fingerprint is answered from it without running again; a
repeat with a different one is refused. Answers are kept for
`Limits.request_retention_seconds` (24 h): the committer then deletes them with
logged `_system:expire_requests` records, and a repeat arriving after that runs
the mutation again.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from engine.context import Auth, MutationCtx
from engine.db import DatabaseWriter, Transaction
from engine.errors import EngineError, LimitExceeded
from engine.execution import SliceExpired, SlowPaths, run_handler
from engine.preempt import Preempted, worker_deadline
from engine.functions import FunctionDef
from engine.overlay import Overlay
from engine.scheduler import JobChange, MutationScheduler, finished
from engine.storage import MutationStorage
from engine.scan_cache import ScanCache
from engine.system_updates import REMOVE, InsertAt
from values import decode_doc, decode_value, encode_doc, encode_value, new_id, to_wire
from log.errors import LogError
from log.record import Record, Write

if TYPE_CHECKING:
    from engine.runtime import Runtime

log = logging.getLogger("tape.committer")

REQUESTS_TABLE = "_requests"
EXPIRE_REQUESTS_FUNCTION = "_system:expire_requests"  # `function` of the records that expire `_requests` docs
EXPIRY_INTERVAL_MAX = 3600.0  # seconds between expiry sweeps at most (retention / 24 when shorter)
# Token claims that change when the same caller refreshes its token: not part of who the caller is.
_VOLATILE_CLAIMS = frozenset({"iat", "exp", "nbf", "auth_time", "jti"})
_DOCUMENT_CACHE_MAX = 1 << 18  # committed documents (encoded) the writer keeps in memory; cleared beyond


def request_doc_id(session_id: str, request_id: int) -> str:
    """Id of the system document that remembers a committed client request."""
    return f"{REQUESTS_TABLE}:{session_id}:{request_id}"


def _caller(identity: dict[str, Any] | None) -> Any:
    """The stable part of an identity: its tokenIdentifier, else the claims that do not change on refresh."""
    if identity is None:
        return None
    token = identity.get("tokenIdentifier")
    if token is not None:
        return {"tokenIdentifier": token}
    return {k: v for k, v in identity.items() if k not in _VOLATILE_CLAIMS}


def request_fingerprint(path: str, args: dict[str, Any], identity: dict[str, Any] | None) -> str:
    """sha256 (hex) of the canonical JSON of (function path, validated arguments in Convex JSON, caller).

    A repeated (session id, request id) is the same call only when this matches.
    """
    canonical = orjson.dumps([path, to_wire(args), _caller(identity)], option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(canonical).hexdigest()


def request_reused_error(request_id: int) -> EngineError:
    """The refusal of a (session, request id) repeated for a different call."""
    return EngineError(f"requestId {request_id} of this session was already used for a different call "
                       "(path or arguments or caller differ)")


def expiry_interval(retention_seconds: float) -> float:
    """Seconds between `_requests` expiry sweeps: retention / 24, at most an hour."""
    return max(min(retention_seconds / 24.0, EXPIRY_INTERVAL_MAX), 0.01)


@dataclass
class MutationOutcome:
    """A committed mutation: its return value, commit timestamp and log offset."""

    value: Any
    ts: int
    offset: int
    replayed: bool = False


@dataclass
class _QueuedMutation:
    fn: FunctionDef
    args: dict[str, Any]
    identity: dict[str, Any] | None
    session_id: str | None
    request_id: int | None
    future: asyncio.Future[MutationOutcome]
    fingerprint: str | None = None  # set when session_id and request_id are (see `request_fingerprint`)
    job_id: str | None = None  # a scheduled mutation: its `_scheduled_functions` job, updated in its record


@dataclass
class _ExpiryTask:
    """Delete these expired `_requests` documents in one system record, in line with mutations."""

    ids: list[str]
    future: asyncio.Future[MutationOutcome]


@dataclass
class _SystemTask:
    """Conditional updates of system documents, committed as one record in line with mutations.

    Each update is (table, document id or None to insert a new document, `JobChange`). The record's
    value is the list of ids actually written.
    """

    function: str
    updates: list[tuple[str, str | None, JobChange]]
    future: asyncio.Future[MutationOutcome]


_Queued = _QueuedMutation | _ExpiryTask | _SystemTask


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
    owners: list[list[_Queued]]
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
        self._queue: list[_Queued] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._max_batch = max_batch
        self._last_ts = 0
        self._next_offset = 0
        self._seq = 0
        self._generation = 0
        self._overlay = Overlay()
        self._pending_requests: dict[tuple[str, int], list[_Queued]] = {}
        self._broken: str | None = None  # set when committed records could not be applied here
        self._creation_clock = CreationClock()
        # Committed documents by id, as the projection holds them: read through, updated on every apply.
        self._documents: dict[str, bytes | None] = {}
        self._scans = ScanCache()  # small committed index scans, dropped per table when its keys change
        self._app_seen: object = None  # the app the caches were filled under (a reload empties them)
        self._owner_loop: asyncio.AbstractEventLoop | None = None  # the loop `start` ran on
        self._expiry_task: asyncio.Task[None] | None = None
        self._expiry_lock = asyncio.Lock()  # one expiry sweep at a time (so no id is deleted twice)
        self.slow_mutations = SlowPaths()  # functions that outran their slice on the loop (for a while)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="tape-writer")  # runs them, one at a time
        self._running_slow = False
        self.batches = 0
        self.committed = 0

    def start(self) -> None:
        if self._task is None:
            self._resync()
            self._owner_loop = asyncio.get_running_loop()
            self._task = self._owner_loop.create_task(self._loop(), name="tape-committer")
            self._expiry_task = self._owner_loop.create_task(self._expire_periodically(),
                                                             name="tape-request-expiry")

    def _resync(self) -> None:
        log_ = self._runtime.log
        self._last_ts = max(log_.last_ts(), self._runtime.projection.applied_ts)
        self._next_offset = log_.next_offset()

    async def stop(self, drain_seconds: float = 0.5) -> None:
        """Stop: finish what is queued for up to `drain_seconds`, then refuse the rest, never half-run.

        A mutation still queued at the end is failed with a clear error (it did
        not run, so a client retry is safe); one executing is let finish (its
        time bound caps the wait).
        """
        if self._task is None:
            return
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            try:
                await self._expiry_task
            except asyncio.CancelledError:
                pass
            self._expiry_task = None
        loop = asyncio.get_running_loop()
        give_up = loop.time() + drain_seconds
        while self._queue and loop.time() < give_up:
            await asyncio.sleep(0.001)
        if self._queue:
            queued, self._queue = self._queue, []
            self._fail(queued, EngineError("the server is shutting down; this mutation did not run (retry it)"))
        while self._running_slow or (self._inflight is not None and not self._inflight.done()):
            await asyncio.sleep(0.001)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        self._worker.shutdown(wait=False)

    async def submit(self, fn: FunctionDef, args: dict[str, Any], identity: dict[str, Any] | None,
                     session_id: str | None, request_id: int | None) -> MutationOutcome:
        """Queue a validated mutation; resolves once its transaction is durable and applied."""
        if self._task is None:
            raise EngineError("the committer is not running on this node")
        if self._broken is not None:
            raise EngineError(self._broken)
        assert self._owner_loop is not None
        pending = _QueuedMutation(fn, args, identity, session_id, request_id, self._owner_loop.create_future())
        if session_id is not None and request_id is not None:
            pending.fingerprint = request_fingerprint(fn.path, args, identity)
        self._queue.append(pending)
        self._wakeup.set()
        return await pending.future

    def enqueue_job(self, fn: FunctionDef, args: dict[str, Any], job_id: str) -> asyncio.Future[MutationOutcome]:
        """Queue a scheduled mutation whose job is pending; its job's new state joins its record.

        A job no longer pending (cancelled, or already run) is skipped: the outcome's value is None.
        Returns the future of the outcome (the scheduler attaches a callback rather than a task per job).
        """
        if self._task is None:
            raise EngineError("the committer is not running on this node")
        if self._broken is not None:
            raise EngineError(self._broken)
        assert self._owner_loop is not None
        pending = _QueuedMutation(fn, args, None, None, None, self._owner_loop.create_future(), job_id=job_id)
        self._queue.append(pending)
        self._wakeup.set()
        return pending.future

    async def system_update(self, function: str, updates: list[tuple[str, str | None, JobChange]]) -> list[str]:
        """Commit conditional updates of system documents in one `function` record; returns the ids written.

        Each update is (table, id or None for a new document, change); see `engine.scheduler.JobChange`.
        """
        if self._task is None:
            raise EngineError("the committer is not running on this node")
        if self._broken is not None:
            raise EngineError(self._broken)
        assert self._owner_loop is not None
        task = _SystemTask(function, updates, self._owner_loop.create_future())
        self._queue.append(task)
        self._wakeup.set()
        return (await task.future).value

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
                    staged, rest, slow = self._execute(batch)
                except Exception as exc:  # never let the writer die silently
                    log.exception("executing a batch failed")
                    self._fail(batch, EngineError(f"commit failed: {exc}"))
                    continue
                self._queue[:0] = rest  # what the slice had no time for goes first next round
                if self._inflight is not None:
                    await self._inflight
                    self._inflight = None
                if staged is not None:
                    if staged.generation != self._generation:
                        # The batch below it failed to append: its execution is void. Run it again.
                        self._queue[:0] = [p for group in staged.owners for p in group]
                        continue
                    self._inflight = asyncio.get_running_loop().create_task(self._finish(staged))
                if slow is not None:
                    await self._run_slow(slow)
                else:
                    await asyncio.sleep(0)  # a slice ended: let the loop serve I/O before the next one

    async def _run_slow(self, p: _QueuedMutation) -> None:
        """Run a mutation that outran its slice on a worker thread, with nothing else pending.

        The writer stays serial: every earlier batch is durable and applied
        first, and later mutations wait in the queue. Only this mutation's
        caller waits for it; the event loop goes on serving everyone else.
        """
        if self._inflight is not None:
            await self._inflight
            self._inflight = None
        if self._broken is not None:
            self._fail([p], EngineError(self._broken))
            return
        loop = asyncio.get_running_loop()
        self._running_slow = True
        try:
            staged = await loop.run_in_executor(self._worker, self._execute_on_worker, p)
        except Exception as exc:
            log.exception("executing a mutation off the loop failed")
            self._fail([p], EngineError(f"commit failed: {exc}"))
            return
        finally:
            self._running_slow = False
        if staged is not None:
            self._inflight = loop.create_task(self._finish(staged))

    def _execute_on_worker(self, p: _QueuedMutation) -> _Staged | None:
        limits = self._runtime.limits
        try:
            with worker_deadline(limits.max_seconds):
                staged, _rest, _slow = self._execute([p], off_loop=True)
            return staged
        except Preempted:
            # The interrupt may have landed anywhere in the writer's state: nothing else is pending
            # (see `_run_slow`), so drop it all rather than trust a half-made update.
            self._overlay.clear()
            self._documents.clear()
            self._scans.clear()
            for key in [k for k, group in self._pending_requests.items() if p in group]:
                del self._pending_requests[key]
            self._owner_loop.call_soon_threadsafe(  # type: ignore[union-attr]
                self._fail, [p], LimitExceeded(f"{p.fn.path} ran longer than {limits.max_seconds:g}s"))
            return None

    @staticmethod
    def _fail(batch: list[_Queued], error: Exception) -> None:
        for p in batch:
            if not p.future.done():
                p.future.set_exception(error)

    def _next_ts(self) -> int:
        ts = max(time.time_ns(), self._last_ts + 1)
        self._last_ts = ts
        return ts

    def _previous_answer(self, session_id: str, request_id: int, fingerprint: str | None) -> MutationOutcome | None:
        """The stored answer of a committed request; refuses one stored for a different call.

        Memos written before fingerprints existed have none and answer any repeat.
        """
        raw = self._runtime.projection.get(request_doc_id(session_id, request_id))
        if raw is None:
            return None
        saved = decode_value(raw)
        stored = saved.get("fingerprint")
        if stored is not None and stored != fingerprint:
            raise request_reused_error(request_id)
        return MutationOutcome(saved["result"], saved["ts"], saved["offset"], replayed=True)

    def _execute(self, batch: list[_Queued], off_loop: bool = False
                 ) -> tuple[_Staged | None, list[_Queued], _QueuedMutation | None]:
        """Run a batch serially on top of every pending write.

        Returns the records to append, the mutations the slice had no time for,
        and a mutation that must run off the loop (it outran its slice, or its
        function is known to). On the loop, a batch stops after
        `Limits.loop_slice_seconds` of execution so readers are served.
        """
        runtime = self._runtime
        limits = runtime.limits
        slice_seconds = None if off_loop else limits.loop_slice_seconds
        slice_end = time.monotonic() + limits.loop_slice_seconds
        rest: list[_Queued] = []
        slow: _QueuedMutation | None = None
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
        owners: list[list[_Queued]] = []
        values: list[Any] = []
        keys: list[tuple[str, int]] = []
        for i, p in enumerate(batch):
            if not off_loop and (records or i) and time.monotonic() > slice_end:
                rest = batch[i:]
                break
            if isinstance(p, _ExpiryTask):
                if self._stage_expiry(p, records, owners, values):
                    changed_tables.add(REQUESTS_TABLE)
                continue
            if isinstance(p, _SystemTask):
                if self._stage_system(p, seq, records, owners, values):
                    changed_tables.update(table for table, _id, _change in p.updates)
                continue
            key = None
            if p.session_id is not None and p.request_id is not None:
                key = (p.session_id, p.request_id)
            if key is not None and not off_loop:  # (off the loop: already checked on it)
                waiting = self._pending_requests.get(key)
                if waiting is not None:
                    first = waiting[0]
                    if not isinstance(first, _QueuedMutation) or first.fingerprint != p.fingerprint:
                        p.future.set_exception(request_reused_error(p.request_id))
                        continue
                    waiting.append(p)  # the same request is already executed: share its answer
                    continue
                try:
                    previous = self._previous_answer(p.session_id, p.request_id, p.fingerprint)
                except EngineError as exc:
                    p.future.set_exception(exc)
                    continue
                if previous is not None:
                    p.future.set_result(previous)
                    continue
            if not off_loop and p.fn.path in self.slow_mutations:
                slow, rest = p, batch[i + 1:]
                break
            job = self._pending_job(p.job_id) if p.job_id is not None else None
            if p.job_id is not None and job is None:
                p.future.set_result(MutationOutcome(None, self._last_ts, self._next_offset - 1))
                continue
            mark = overlay.mark()
            tx = Transaction(projection, runtime.app.schema, limits, overlay, writable=True, batch=seq,
                             loaded=documents, scans=self._scans, changed_tables=changed_tables)
            db = DatabaseWriter(tx, self._creation_clock)
            ctx = MutationCtx(db, Auth(p.identity), MutationScheduler(db, runtime.app), runtime.app,
                              MutationStorage(runtime.storage, db))
            try:
                value = run_handler(p.fn.handler(ctx, **p.args), p.fn.path, limits.max_seconds, slice_seconds)
                result = encode_value(value)
                if job is not None:
                    self._finish_job(db, tx, job, "success")
            except SliceExpired:
                overlay.rollback(mark)
                log.info("mutation %s outran its %.0f ms slice on the event loop: it runs on a worker thread "
                         "from now on", p.fn.path, limits.loop_slice_seconds * 1000)
                self.slow_mutations.add(p.fn.path)
                slow, rest = p, batch[i + 1:]
                break
            except Exception as exc:
                overlay.rollback(mark)
                if job is not None:
                    # A failed scheduled mutation commits only its job's new state (failed, with the error).
                    tx = Transaction(projection, runtime.app.schema, limits, overlay, writable=True, batch=seq,
                                     loaded=documents, scans=self._scans, changed_tables=changed_tables)
                    self._finish_job(DatabaseWriter(tx, self._creation_clock), tx, job, "failed", str(exc))
                    value, result = None, encode_value(None)
                elif off_loop:
                    self._owner_loop.call_soon_threadsafe(self._fail, [p], exc)  # type: ignore[union-attr]
                    continue
                else:
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
            group: list[_Queued] = [p]
            if key is not None:
                # Remember the answer durably, inside the same transaction (exactly-once across crashes),
                # with the call it answers and its commit time (`_creationTime`, ms: the by_creation_time
                # index then lists memos oldest first for expiry).
                memo = {"result": value, "ts": record.ts, "offset": offset, "fingerprint": p.fingerprint,
                        "_creationTime": record.ts / 1e6}
                record.writes.append(Write(REQUESTS_TABLE, request_doc_id(*key), encode_value(memo), None))
                self._pending_requests[key] = group
                keys.append(key)
                changed_tables.add(REQUESTS_TABLE)
            records.append(record)
            owners.append(group)
            values.append(value)
        if not records:
            return None, rest, slow
        first_offset = self._next_offset
        self._next_offset += len(records)
        return (_Staged(seq, self._generation, records, owners, values, changed_tables, overlay.mark(), keys,
                        first_offset), rest, slow)

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

    # -- scheduled jobs and system records ---------------------------------------------
    def _current(self, doc_id: str) -> bytes | None:
        """A document as the writer sees it: pending (overlay) state first, then the projection."""
        entry = self._overlay.get(doc_id)
        if entry is not None:
            return entry.doc
        return self._runtime.projection.get(doc_id)

    def _pending_job(self, job_id: str) -> dict[str, Any] | None:
        """The job document, if it is still pending."""
        raw = self._current(job_id)
        if raw is None:
            return None
        doc = decode_doc(raw)
        return doc if doc.get("state", {}).get("kind") == "pending" else None

    @staticmethod
    def _finish_job(db: DatabaseWriter, tx: Transaction, job: dict[str, Any], kind: str,
                    error: str | None = None) -> None:
        """Write a scheduled mutation's final state into its own transaction."""
        job_id = job["_id"]
        if job_id in tx.touched:  # the mutation changed its own job (cancelled it, say): start from that
            current = db.system_load(job_id)
            if current is None:
                return
            job = current
        db.system_replace(job_id, finished(job, kind, error))

    def _stage_system(self, task: _SystemTask, seq: int, records: list[Record], owners: list[list[_Queued]],
                      values: list[Any]) -> bool:
        """Add `task`'s record to the batch (its writes go to the overlay); False (answered) when it writes nothing."""
        if task.future.done():
            return False
        projection = self._runtime.projection
        writes: list[Write] = []
        written: list[str] = []
        mark = self._overlay.mark()
        for table, doc_id, change in task.updates:
            prev = self._current(doc_id) if doc_id is not None else None
            if doc_id is not None and prev is None and not isinstance(change, InsertAt):
                continue
            try:
                new = change(decode_doc(prev) if prev is not None else None)
            except Exception as exc:  # a bug in the engine's own change: never let it stop the writer
                self._overlay.rollback(mark)
                log.exception("system update %s failed", task.function)
                task.future.set_exception(EngineError(f"{task.function} failed: {exc}"))
                return False
            if new is None:
                continue
            if new is REMOVE:
                assert doc_id is not None and prev is not None
                self._overlay.put(doc_id, table, None, [], seq)
                writes.append(Write(table, doc_id, None, prev))
                written.append(doc_id)
                continue
            if prev is None:
                doc_id = doc_id if doc_id is not None else new_id(table)
                new = {**new, "_id": doc_id, "_creationTime": self._creation_clock()}
            raw = encode_doc(new)
            # An update keeps `_id` and `_creationTime`, so a system document's index keys (by_id,
            # by_creation_time) stay the projection's: no keys (see Overlay).
            self._overlay.put(doc_id, table, raw, projection.index_keys(table, new) if prev is None else None, seq)
            writes.append(Write(table, doc_id, raw, prev, prev is not None))
            written.append(doc_id)
        if not writes:
            task.future.set_result(MutationOutcome([], self._last_ts, self._next_offset - 1))
            return False
        records.append(Record(writes=writes, ts=self._next_ts(), function=task.function,
                              result=encode_value(written)))
        owners.append([task])
        values.append(written)
        return True

    # -- expiry of `_requests` memos ---------------------------------------------------
    def _stage_expiry(self, task: _ExpiryTask, records: list[Record], owners: list[list[_Queued]],
                      values: list[Any]) -> bool:
        """Add the system record deleting `task.ids` to the batch; False (and answered) when none exists."""
        if task.future.done():  # its sweep was cancelled (the committer is stopping)
            return False
        projection = self._runtime.projection
        writes = []
        for doc_id in task.ids:
            prev = projection.get(doc_id)
            if prev is not None:
                writes.append(Write(REQUESTS_TABLE, doc_id, None, prev))
        if not writes:
            task.future.set_result(MutationOutcome(0, self._last_ts, self._next_offset - 1))
            return False
        records.append(Record(writes=writes, ts=self._next_ts(), function=EXPIRE_REQUESTS_FUNCTION,
                              result=encode_value(len(writes))))
        owners.append([task])
        values.append(len(writes))
        return True

    def _expired_requests(self, cutoff_ns: int, start: bytes | None, limit: int) -> tuple[list[str], bytes | None]:
        """Ids of up to `limit` `_requests` memos committed before `cutoff_ns`, oldest first.

        Walks the projection's by_creation_time index of `_requests` (memos carry their commit time
        as `_creationTime`), so only expired entries are visited, plus memos written before they had
        one (those sort first, by id; their `ts` decides). Returns where to continue, or None when
        every expired memo has been listed.
        """
        projection = self._runtime.projection
        lo, hi = projection.index_range(REQUESTS_TABLE, "by_creation_time", upper=(cutoff_ns / 1e6, True))
        if start is not None:
            lo = max(lo, start)
        ids: list[str] = []
        visited = 0
        for key, doc_id in projection.scan(lo, hi):
            raw = projection.get(doc_id)
            if raw is not None:
                memo = decode_value(raw)
                if memo.get("ts", 0) < cutoff_ns:
                    ids.append(doc_id)
                elif "_creationTime" in memo:
                    return ids, None  # the rest of the index is newer
            visited += 1
            if len(ids) >= limit or visited >= 4 * limit:
                return ids, key + b"\x00"  # index keys are prefix-free: every later key sorts at or after this
        return ids, None

    async def expire_requests(self, now_ns: int | None = None) -> int:
        """Delete the `_requests` memos older than the retention; returns how many were deleted.

        Each chunk of at most `Limits.request_expiry_batch` deletes is one `_system:expire_requests`
        record, executed in line with mutations (ordered with them, durable before it counts, and
        replayed, restored and streamed like any record). A request repeated after its memo is
        deleted runs again: that is what the retention means.
        """
        limits = self._runtime.limits
        retention = limits.request_retention_seconds
        if retention is None:
            return 0
        if self._task is None:
            raise EngineError("the committer is not running on this node")
        assert self._owner_loop is not None
        cutoff = (time.time_ns() if now_ns is None else now_ns) - int(retention * 1e9)
        limit = max(1, limits.request_expiry_batch)
        total = 0
        async with self._expiry_lock:
            start: bytes | None = None
            while True:
                ids, start = self._expired_requests(cutoff, start, limit)
                if ids:
                    if self._broken is not None:
                        raise EngineError(self._broken)
                    task = _ExpiryTask(ids, self._owner_loop.create_future())
                    self._queue.append(task)
                    self._wakeup.set()
                    total += (await task.future).value
                if start is None:
                    break
                await asyncio.sleep(0)  # let mutations run between chunks
        if total:
            log.info("expired %d %s entries committed more than %gs ago", total, REQUESTS_TABLE, retention)
        return total

    async def _expire_periodically(self) -> None:
        """Expire old `_requests` memos at start, then every `expiry_interval(retention)` seconds."""
        while True:
            retention = self._runtime.limits.request_retention_seconds
            if retention is None:
                return
            try:
                await self.expire_requests()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retried at the next sweep
                log.warning("expiring %s entries failed (%s: %s); retrying in %gs", REQUESTS_TABLE,
                            type(exc).__name__, exc, expiry_interval(retention))
            await asyncio.sleep(expiry_interval(retention))
