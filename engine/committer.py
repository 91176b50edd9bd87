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

Unknown outcomes: an append the log could not confirm in time
(`LogOutcomeUnknown`, e.g. a stalled Kafka broker) fails its callers with
`OutcomeUnknown` and puts the committer in *recovery* (see `_recover`): it
settles the log's doubt (the records are then committed exactly once), reads
the log's tail into the projection, and resumes, with no restart. Meanwhile a
new client mutation fails at once with `WritesUnavailable` (it did not run),
a repeat of a mutation in doubt waits for the true answer, and scheduled
jobs and system records wait in line.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import orjson

from engine import function_logs
from engine.context import Auth, MutationCtx
from engine.db import DatabaseWriter, Transaction
from engine.errors import EngineError, LimitExceeded, OutcomeUnknown, WritesUnavailable
from engine.metrics import COMMIT_BATCH_RECORDS
from engine.execution import SliceExpired, SlowPaths, run_handler
from engine.preempt import Preempted, worker_deadline
from engine.functions import FunctionDef
from engine.overlay import Overlay
from engine.scheduler import JobChange, MutationScheduler, finished
from engine.storage import MutationStorage
from engine.scan_cache import ScanCache
from engine.sweeps import expired_in_creation_order, sweep_periodically
from engine.system_updates import REMOVE, InsertAt
from values import decode_doc, decode_value, encode_doc, encode_value, new_id, to_wire
from log.errors import LogError, LogOutcomeUnknown
from log.record import Record, Write

if TYPE_CHECKING:
    from engine.runtime import Runtime

log = logging.getLogger("tape.committer")

RECOVERY_WAIT_SECONDS = 20.0  # how long a repeat of a mutation in doubt waits for the committer to recover
RECOVERY_RETRY_MIN, RECOVERY_RETRY_MAX = 0.1, 1.0  # seconds between attempts to reach the log while recovering

REQUESTS_TABLE = "_requests"
JOBS_BESIDE_CLIENTS = 64  # most due scheduled mutations leading a batch while client mutations wait too
EXPIRE_REQUESTS_FUNCTION = "_system:expire_requests"  # `function` of the records that expire `_requests` docs
# Token claims that change when the same caller refreshes its token: not part of who the caller is.
_VOLATILE_CLAIMS = frozenset({"iat", "exp", "nbf", "auth_time", "jti"})
# Estimated memory of one entry of the writer's document cache beyond the document's bytes: the id str,
# the bytes object's header and the dict slot (sys.getsizeof on CPython 3.11).
DOCUMENT_ENTRY_OVERHEAD = 200


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


@dataclass
class MutationOutcome:
    """A committed mutation: its return value, commit timestamp and log offset."""

    value: Any
    ts: int
    offset: int
    replayed: bool = False
    log_lines: list[str] = field(default_factory=list)  # what the mutation printed or logged (Convex format)


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
    job: tuple[dict[str, Any], bytes] | None = None  # that job as it was pending (document, encoding)


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
    logs: dict[int, list[str]] = field(default_factory=dict)  # record index -> its mutation's log lines


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
        # Due scheduled mutations: they lead the next batch (see `_next_batch`), in the order they fell due.
        self._jobs: list[_QueuedMutation] = []
        #: Called before each batch is formed (the scheduler sets it): queues the jobs due by now, so a due
        #: job waits for at most the batch executing, not for the scheduler's task to get a turn.
        self.take_due_jobs: Callable[[], None] | None = None
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
        # Bounded by `Limits.document_cache_bytes`: entries × (overhead + the mean size of written documents).
        self._document_mean = 256.0
        self.document_cache_clears = 0
        # Small committed index scans, dropped per table when its keys change; bounded by bytes too.
        self._scans = ScanCache(runtime.limits.scan_cache_bytes)
        self._app_seen: object = None  # the app the caches were filled under (a reload empties them)
        self._owner_loop: asyncio.AbstractEventLoop | None = None  # the loop `start` ran on
        self._expiry_task: asyncio.Task[None] | None = None
        self._expiry_lock = asyncio.Lock()  # one expiry sweep at a time (so no id is deleted twice)
        self.slow_mutations = SlowPaths()  # functions that outran their slice on the loop (for a while)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="tape-writer")  # runs them, one at a time
        self._running_slow = False
        self.batches = 0
        self.committed = 0
        # Recovery from an append with an unknown outcome (see the module docstring).
        self._recovering: str | None = None  # why writes are paused, while recovering
        self._recovered = asyncio.Event()
        self._recovered.set()
        self._recovery_task: asyncio.Task[None] | None = None
        self._in_doubt: set[tuple[str, int]] = set()  # (session, request) of the mutations in doubt
        self._held: list[_Queued] = []  # scheduled jobs and system records waiting for the recovery
        self.recoveries = 0

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
        while (self._queue or self._jobs) and loop.time() < give_up:
            await asyncio.sleep(0.001)
        if self._recovery_task is not None:
            self._recovery_task.cancel()
            await asyncio.gather(self._recovery_task, return_exceptions=True)
            self._recovery_task = None
            self._recovered.set()  # repeats waiting for it are told the outcome is still unknown
        if self._queue or self._jobs or self._held:
            queued: list[_Queued] = [*self._jobs, *self._queue, *self._held]
            self._queue, self._jobs, self._held = [], [], []
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
        if self._recovering is not None:
            await self._wait_recovered(session_id, request_id)
        assert self._owner_loop is not None
        pending = _QueuedMutation(fn, args, identity, session_id, request_id, self._owner_loop.create_future())
        if session_id is not None and request_id is not None:
            pending.fingerprint = request_fingerprint(fn.path, args, identity)
        self._queue.append(pending)
        self._wakeup.set()
        return await pending.future

    @property
    def document_cache_bytes(self) -> int:
        """Estimated memory held by the cache of committed documents (bounded by `Limits.document_cache_bytes`)."""
        return int(len(self._documents) * (DOCUMENT_ENTRY_OVERHEAD + self._document_mean))

    def enqueue_job(self, fn: FunctionDef, args: dict[str, Any], job_id: str,
                    job: tuple[dict[str, Any], bytes] | None = None) -> asyncio.Future[MutationOutcome]:
        """Queue a scheduled mutation whose job is pending; its job's new state joins its record.

        A job no longer pending (cancelled, or already run) is skipped: the outcome's value is None.
        Returns the future of the outcome (the scheduler attaches a callback rather than a task per job).
        """
        if self._task is None:
            raise EngineError("the committer is not running on this node")
        if self._broken is not None:
            raise EngineError(self._broken)
        assert self._owner_loop is not None
        pending = _QueuedMutation(fn, args, None, None, None, self._owner_loop.create_future(), job_id=job_id,
                                  job=job)
        self._jobs.append(pending)
        self._wakeup.set()
        return pending.future

    async def system_update(self, function: str, updates: list[tuple[str, str | None, JobChange]]) -> list[str]:
        """Commit conditional updates of system documents in one `function` record; returns the ids written.

        Each update is (table, id or None for a new document, change); see `engine.scheduler.JobChange`.
        """
        return (await self.system_commit(function, updates)).value

    async def system_commit(self, function: str,
                            updates: list[tuple[str, str | None, JobChange]]) -> MutationOutcome:
        """`system_update`, answered with the whole outcome (the ids written, commit ts and offset)."""
        if self._task is None:
            raise EngineError("the committer is not running on this node")
        if self._broken is not None:
            raise EngineError(self._broken)
        assert self._owner_loop is not None
        task = _SystemTask(function, updates, self._owner_loop.create_future())
        self._queue.append(task)
        self._wakeup.set()
        return await task.future

    def _next_batch(self) -> list[_Queued]:
        """Up to `max_batch` queued items: due jobs first (at most `JOBS_BESIDE_CLIENTS` while clients wait)."""
        room = self._max_batch
        batch: list[_Queued] = []
        if self._jobs:
            share = min(room, JOBS_BESIDE_CLIENTS) if self._queue else room
            batch = [*self._jobs[:share]]
            del self._jobs[:share]
            room -= len(batch)
        if room and self._queue:
            batch += self._queue[:room]
            del self._queue[:room]
        return batch

    def _requeue_first(self, items: list[_Queued]) -> None:
        """Put `items` back at the head of their queues, in their order (they go first next round)."""
        jobs = [p for p in items if isinstance(p, _QueuedMutation) and p.job_id is not None]
        if jobs:
            self._jobs[:0] = jobs
        if len(jobs) != len(items):
            self._queue[:0] = [p for p in items if not (isinstance(p, _QueuedMutation) and p.job_id is not None)]

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while True:
                if self.take_due_jobs is not None:
                    self.take_due_jobs()
                if not (self._jobs or self._queue):
                    break
                batch = self._next_batch()
                if self._broken is not None:
                    self._fail(batch, EngineError(self._broken))
                    continue
                if self._recovering is not None:
                    self._hold(batch)
                    continue
                try:
                    staged, rest, slow = self._execute(batch)
                except Exception as exc:  # never let the writer die silently
                    log.exception("executing a batch failed")
                    self._fail(batch, EngineError(f"commit failed: {exc}"))
                    continue
                self._requeue_first(rest)  # what the slice had no time for goes first next round
                if self._inflight is not None:
                    await self._inflight
                    self._inflight = None
                if staged is not None:
                    if staged.generation != self._generation:
                        # The batch below it failed to append: its execution is void. Run it again.
                        self._requeue_first([p for group in staged.owners for p in group])
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
        if self._recovering is not None:
            self._hold([p])
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
        if len(documents) * (DOCUMENT_ENTRY_OVERHEAD + self._document_mean) > limits.document_cache_bytes:
            documents.clear()
            self.document_cache_clears += 1
        if runtime.app is not self._app_seen:
            self._scans.clear()
            self._app_seen = runtime.app
        changed_tables: set[str] = set()
        self._seq += 1
        seq = self._seq
        records: list[Record] = []
        owners: list[list[_Queued]] = []
        values: list[Any] = []
        logs: dict[int, list[str]] = {}  # record index -> log lines of its mutation
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
            job = self._pending_job(p.job_id, p.job) if p.job_id is not None else None
            if p.job_id is not None and job is None:
                p.future.set_result(MutationOutcome(None, self._last_ts, self._next_offset - 1))
                continue
            mark = overlay.mark()
            tx = Transaction(projection, runtime.app.schema, limits, overlay, writable=True, batch=seq,
                             loaded=documents, scans=self._scans, changed_tables=changed_tables,
                             cursors=runtime.cursors)
            db = DatabaseWriter(tx, self._creation_clock)
            ctx = MutationCtx(db, Auth(p.identity), MutationScheduler(db, runtime.app), runtime.app,
                              MutationStorage(runtime.storage, db))
            flog, token = function_logs.begin(p.fn.path, "mutation")
            try:
                try:
                    value = p.fn.check_returns(run_handler(p.fn.handler(ctx, **p.args), p.fn.path,
                                                           limits.max_seconds, slice_seconds))
                    result = encode_value(value)
                finally:
                    function_logs.end(flog, token)
                if job is not None:
                    self._finish_job(db, tx, job, "success")
            except SliceExpired:  # (its log is dropped: it runs again)
                overlay.rollback(mark)
                log.info("mutation %s outran its %.0f ms slice on the event loop: it runs on a worker thread "
                         "from now on", p.fn.path, limits.loop_slice_seconds * 1000)
                self.slow_mutations.add(p.fn.path)
                slow, rest = p, batch[i + 1:]
                break
            except Exception as exc:
                overlay.rollback(mark)
                if flog is not None:
                    function_logs.attach(exc, flog.lines)
                    function_logs.publish(flog, runtime.function_logs, exc)
                    flog = None
                if job is not None:
                    # A failed scheduled mutation commits only its job's new state (failed, with the error).
                    tx = Transaction(projection, runtime.app.schema, limits, overlay, writable=True, batch=seq,
                                     loaded=documents, scans=self._scans, changed_tables=changed_tables,
                                     cursors=runtime.cursors)
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
            if flog is not None:
                function_logs.publish(flog, runtime.function_logs)
                if flog.lines:
                    logs[len(records) - 1] = flog.lines
        if not records:
            return None, rest, slow
        first_offset = self._next_offset
        self._next_offset += len(records)
        return (_Staged(seq, self._generation, records, owners, values, changed_tables, overlay.mark(), keys,
                        first_offset, logs), rest, slow)

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
            if isinstance(exc, LogOutcomeUnknown):
                self._in_doubt.update(staged.keys)
                self._begin_recovery(exc)
                error: EngineError = OutcomeUnknown(
                    f"the outcome of this mutation is unknown: {exc} The committer recovers by itself once the "
                    "log answers; retry with the same request id (the official clients resend it after a "
                    "reconnect) to get the true answer.")
            else:
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
            written = size = 0
            for record in staged.records:
                for w in record.writes:
                    documents[w.id] = w.doc
                    if w.doc is not None:
                        written += 1
                        size += len(w.doc)
            if written:  # a slowly moving mean of document sizes prices the cache's entries
                self._document_mean += (size / written - self._document_mean) * min(1.0, written / 1000.0)
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
        COMMIT_BATCH_RECORDS.observe(len(staged.records))
        for i, (record, group, value) in enumerate(zip(staged.records, staged.owners, staged.values)):
            outcome = MutationOutcome(value, record.ts, record.offset, log_lines=staged.logs.get(i, []))
            for p in group:
                if not p.future.done():
                    p.future.set_result(outcome)
        return True

    # -- recovery from an unknown outcome ----------------------------------------------
    def health(self) -> dict[str, Any]:
        """The writer's state for health checks: ``{"state": "ok"|"recovering"|"broken", "reason"?}``."""
        if self._broken is not None:
            return {"state": "broken", "reason": self._broken}
        if self._recovering is not None:
            return {"state": "recovering", "reason": self._recovering, "in_doubt": len(self._in_doubt)}
        return {"state": "ok"}

    def _unavailable(self) -> WritesUnavailable:
        return WritesUnavailable(f"writes are paused while the committer recovers ({self._recovering}); this "
                                 "mutation did not run: retry it")

    async def _wait_recovered(self, session_id: str | None, request_id: int | None) -> None:
        """While recovering: a repeat of a mutation in doubt waits for the answer; anything else is refused."""
        if session_id is None or request_id is None or (session_id, request_id) not in self._in_doubt:
            raise self._unavailable()
        try:
            await asyncio.wait_for(asyncio.shield(self._recovered.wait()), RECOVERY_WAIT_SECONDS)
        except asyncio.TimeoutError:
            raise OutcomeUnknown(f"the outcome of this mutation is still unknown: the committer has not reached "
                                 f"the log for {RECOVERY_WAIT_SECONDS:g}s ({self._recovering}); retry with the "
                                 "same request id later") from None
        if self._broken is not None:
            raise EngineError(self._broken)
        if self._recovering is not None:  # the server is stopping before the recovery finished
            raise OutcomeUnknown("the outcome of this mutation is still unknown: the server is shutting down; "
                                 "retry with the same request id once it is back")

    def _hold(self, batch: list[_Queued]) -> None:
        """While recovering: refuse client mutations (they did not run); keep jobs and system records for later."""
        for p in batch:
            if isinstance(p, _QueuedMutation) and p.job_id is None:
                key = (p.session_id, p.request_id)
                if key in self._in_doubt:
                    self._fail([p], OutcomeUnknown("the outcome of this mutation is unknown while the committer "
                                                   f"recovers ({self._recovering}); retry with the same request id"))
                else:
                    self._fail([p], self._unavailable())
            else:
                self._held.append(p)

    def _begin_recovery(self, cause: Exception) -> None:
        if self._recovering is None:
            log.warning("an append's outcome is unknown (%s): writes pause until the log answers", cause)
        self._recovering = f"an append's outcome is unknown: {cause}"
        self._recovered.clear()
        if self._recovery_task is None or self._recovery_task.done():
            self._recovery_task = asyncio.get_running_loop().create_task(self._recover(), name="tape-recovery")

    async def _recover(self) -> None:
        """Settle the log's doubt, apply what reached the log, then resume writing (no restart)."""
        log_ = self._runtime.log
        started = time.monotonic()
        delay = RECOVERY_RETRY_MIN
        applied = 0
        while True:
            try:
                settle = getattr(log_, "settle", None)
                if settle is not None:
                    await settle()
                applied = await self._catch_up()
                break
            except asyncio.CancelledError:
                raise
            except LogError as exc:
                fenced = getattr(log_, "fenced", None)
                if fenced:
                    self._broken = f"writes are refused: {fenced}"
                    break
                self._recovering = f"the commit log does not answer yet ({exc})"
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECOVERY_RETRY_MAX)
            except Exception as exc:
                log.exception("recovering from an unknown append outcome failed")
                self._broken = (f"writes are refused until the server restarts: recovering from a log failure "
                                f"failed ({exc}); the log has every committed record and a restart replays them")
                break
        self._documents.clear()
        self._scans.clear()
        self._overlay.clear()
        self._generation += 1
        self._resync()
        self._in_doubt.clear()
        self._recovering = None
        self._recovered.set()
        self.recoveries += 1
        if self._held:
            held, self._held = self._held, []
            self._requeue_first(held)
            self._wakeup.set()
        if self._broken is None:
            log.warning("the committer writes again after %.1fs: applied %d record(s) from the log (offset %d)",
                        time.monotonic() - started, applied, self._runtime.projection.applied_offset)

    async def _catch_up(self) -> int:
        """Apply to the projection what the log holds past it (records this node wrote but did not see acknowledged)."""
        runtime = self._runtime
        projection = runtime.projection
        applied = 0
        if projection.applied_offset + 1 < runtime.log.next_offset():
            async for batch in runtime.log.read(projection.applied_offset + 1):
                fresh = [r for r in batch if r.offset > projection.applied_offset and r.ts > projection.applied_ts]
                if fresh:
                    runtime.apply_committed(fresh)
                    applied += len(fresh)
        return applied

    # -- scheduled jobs and system records ---------------------------------------------
    def _current(self, doc_id: str) -> bytes | None:
        """A document as the writer sees it: pending (overlay) state first, then the projection."""
        entry = self._overlay.get(doc_id)
        if entry is not None:
            return entry.doc
        return self._runtime.projection.get(doc_id)

    def _pending_job(self, job_id: str, known: tuple[dict[str, Any], bytes] | None = None
                     ) -> tuple[dict[str, Any], bytes] | None:
        """The job document and its encoding, if it is still pending (`known`: as it was when pending)."""
        raw = self._current(job_id)
        if raw is None:
            return None
        if known is not None and raw == known[1]:
            return known  # unchanged since it was pending: no decoding
        doc = decode_doc(raw)
        return (doc, raw) if doc.get("state", {}).get("kind") == "pending" else None

    @staticmethod
    def _finish_job(db: DatabaseWriter, tx: Transaction, job: tuple[dict[str, Any], bytes], kind: str,
                    error: str | None = None) -> None:
        """Write a scheduled mutation's final state into its own transaction."""
        doc, raw = job
        job_id = doc["_id"]
        if job_id in tx.touched:  # the mutation changed its own job (cancelled it, say): start from that
            current = db.system_load(job_id)
            if current is None:
                return
            db.system_replace(job_id, finished(current, kind, error))
            return
        db.system_replace(job_id, finished(doc, kind, error), before=raw)

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
        def expired(raw: bytes) -> bool | None:
            memo = decode_value(raw)
            if memo.get("ts", 0) < cutoff_ns:
                return True
            return None if "_creationTime" in memo else False  # a dated memo this new: the rest is newer

        return expired_in_creation_order(self._runtime.projection, REQUESTS_TABLE, cutoff_ns / 1e6, start, limit,
                                         expired)

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
        await sweep_periodically(self.expire_requests, lambda: self._runtime.limits.request_retention_seconds,
                                 f"expiring {REQUESTS_TABLE} entries", log)
