"""Scheduled functions: `ctx.scheduler` and the task that runs due jobs on the committer.

A job is a document of the `_scheduled_functions` system table, with Convex's
fields: ``name`` ("module:fn"), ``args`` (a one-element list, as in Convex),
``scheduledTime`` (ms), ``completedTime`` (ms, once finished) and ``state``
(``{"kind": "pending" | "inProgress" | "success" | "failed" | "canceled"}``,
plus ``error`` when failed).

Scheduling from a mutation writes the job document inside the mutation's own
transaction, so the job exists exactly when the mutation committed and it is
replayed, restored and streamed with everything else. Scheduling (or
cancelling) from an action commits a small `_system:schedule` record through
the committer.

Execution (`Scheduler`, started only on the committer): due jobs are taken in
`scheduledTime` order from an in-memory heap, rebuilt from the table at start
(so it is right after a restart or a restore) and fed by every applied record.

- A scheduled **mutation** runs through the committer with its job's state
  change (pending → success/failed) written in the same record as its own
  writes: it is applied exactly once, also across a crash at any moment.
- A scheduled **action** is first marked inProgress in a committed record,
  then run, then marked success/failed: it runs at most once. Jobs found
  inProgress at start-up are actions that were running when the server
  stopped: they are marked failed, never retried.

Scheduled functions run with no identity.
"""
from __future__ import annotations

import asyncio
import dataclasses
import heapq
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Coroutine

from engine.db import SCHEDULED_FUNCTIONS, DatabaseWriter
from engine.errors import ArgumentError, EngineError
from engine.functions import FunctionDef
from engine.sweeps import expired_in_creation_order, sweep_periodically
from engine.system_updates import REMOVE
from engine.metrics import SCHEDULER_LATENESS_SECONDS
from values import decode_doc

if TYPE_CHECKING:
    from engine.app import App
    from engine.runtime import Runtime

log = logging.getLogger("tape.scheduler")

SCHEDULE_FUNCTION = "_system:schedule"  # `function` of records written by the scheduler itself
# Mutation paths a replica forwards to the committer when an action schedules or cancels there
# (`Runtime.run_mutation` answers them with `schedule_job` / `cancel_job`; only internal callers may).
SCHEDULE_JOB_PATH = "_system:schedule_job"
CANCEL_JOB_PATH = "_system:cancel_job"
SYSTEM_JOB_PATHS = frozenset({SCHEDULE_JOB_PATH, CANCEL_JOB_PATH})
EXPIRE_JOBS_FUNCTION = "_system:expire_jobs"  # `function` of the records deleting finished jobs past retention
SERVER_STOPPED = "the server stopped while it ran"
FINAL_STATES = frozenset({"success", "failed", "canceled"})
EXPIRY_BATCH = 1000  # most job deletes in one `_system:expire_jobs` record

JobChange = Callable[[dict[str, Any] | None], Any]
"""A conditional job update: the current document (None for an insert) -> the new one, REMOVE to delete it,
or None to skip."""


def now_ms() -> float:
    """Wall-clock time in ms, as `scheduledTime` and `completedTime` use."""
    return time.time() * 1000.0


def function_path(fn: FunctionDef | str) -> str:
    """The "module:fn" path of a function object or path string."""
    if isinstance(fn, FunctionDef):
        if not fn.path:
            raise ArgumentError("scheduler: that function is not registered (is it a public attribute of an app "
                                "module?)")
        return fn.path
    if isinstance(fn, str) and fn:
        return fn
    raise ArgumentError(f"scheduler: expected a function or a 'module:fn' path, got {fn!r}")


def resolve_job(app: "App", fn: FunctionDef | str, args: Any) -> tuple[str, dict[str, Any]]:
    """(path, validated args) of a function to schedule; refuses queries and unknown functions."""
    target = app.function(function_path(fn), allow_internal=True)
    if target.kind == "query":
        raise ArgumentError(f"scheduler: {target.path} is a query; only mutations and actions can be scheduled")
    return target.path, target.validate_args({} if args is None else args)


def check_time(value: Any, what: str) -> float:
    """A finite number of milliseconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ArgumentError(f"scheduler: {what} must be a finite number of milliseconds, got {value!r}")
    return float(value)


def job_fields(path: str, args: dict[str, Any], scheduled_ms: float) -> dict[str, Any]:
    """A new pending job document (without `_id` / `_creationTime`)."""
    return {"name": path, "args": [args], "scheduledTime": scheduled_ms, "state": {"kind": "pending"}}


def finished(doc: dict[str, Any], kind: str, error: str | None = None) -> dict[str, Any]:
    """`doc` in a final state, stamped with `completedTime`."""
    state: dict[str, Any] = {"kind": kind}
    if error is not None:
        state["error"] = error
    return {**doc, "state": state, "completedTime": now_ms()}


def when_state(kind: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> JobChange:
    """A `JobChange` applied only when the job exists and is in state `kind`."""
    def apply(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        if doc is None or doc.get("state", {}).get("kind") != kind:
            return None
        return change(doc)
    return apply


def cancel_change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """Cancel a pending or running job; a finished one is left as it is (as in Convex)."""
    if doc is None or doc.get("state", {}).get("kind") not in ("pending", "inProgress"):
        return None
    return finished(doc, "canceled")


def expire_change(cutoff_ms: float) -> JobChange:
    """Delete a job finished before `cutoff_ms`; anything else (pending, running, newer) is left."""
    def apply(doc: dict[str, Any] | None) -> Any:
        if doc is None or doc.get("state", {}).get("kind") not in FINAL_STATES:
            return None
        return REMOVE if doc.get("completedTime", cutoff_ms) < cutoff_ms else None
    return apply


def _check_job_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or not job_id:
        raise ArgumentError(f"scheduler.cancel: expected a job id, got {job_id!r}")
    return job_id


class MutationScheduler:
    """`ctx.scheduler` in a mutation: jobs are written in the mutation's own transaction."""

    def __init__(self, db: DatabaseWriter, app: "App") -> None:
        self._db = db
        self._app = app

    async def run_after(self, delay_ms: float, fn: FunctionDef | str, args: dict[str, Any] | None = None) -> str:
        """Schedule `fn(args)` `delay_ms` milliseconds after this mutation; returns the job id."""
        return self._schedule(now_ms() + max(0.0, check_time(delay_ms, "delay_ms")), fn, args)

    async def run_at(self, timestamp_ms: float, fn: FunctionDef | str, args: dict[str, Any] | None = None) -> str:
        """Schedule `fn(args)` at `timestamp_ms` (ms since the epoch; a past time runs at once)."""
        return self._schedule(check_time(timestamp_ms, "timestamp_ms"), fn, args)

    def _schedule(self, when: float, fn: FunctionDef | str, args: dict[str, Any] | None) -> str:
        path, checked = resolve_job(self._app, fn, args)
        return self._db.system_insert(SCHEDULED_FUNCTIONS, job_fields(path, checked, when))

    async def cancel(self, job_id: str) -> None:
        """Cancel a job (a running action keeps running; it is recorded as canceled)."""
        doc = self._db.system_load(_check_job_id(job_id))
        new = cancel_change(doc)
        if new is not None:
            self._db.system_replace(job_id, new)


class ActionScheduler:
    """`ctx.scheduler` in an action: each call commits its own `_system:schedule` record.

    On a replica the call is forwarded to the committer (see `Runtime.schedule_job`).
    """

    def __init__(self, runtime: "Runtime",
                 on_server: Callable[[Coroutine[Any, Any, Any]], Awaitable[Any]]) -> None:
        self._runtime = runtime
        self._on_server = on_server

    async def run_after(self, delay_ms: float, fn: FunctionDef | str, args: dict[str, Any] | None = None) -> str:
        """Schedule `fn(args)` `delay_ms` milliseconds from now; returns the job id."""
        return await self._schedule(now_ms() + max(0.0, check_time(delay_ms, "delay_ms")), fn, args)

    async def run_at(self, timestamp_ms: float, fn: FunctionDef | str, args: dict[str, Any] | None = None) -> str:
        """Schedule `fn(args)` at `timestamp_ms` (ms since the epoch)."""
        return await self._schedule(check_time(timestamp_ms, "timestamp_ms"), fn, args)

    async def _schedule(self, when: float, fn: FunctionDef | str, args: dict[str, Any] | None) -> str:
        path, checked = resolve_job(self._runtime.app, fn, args)
        return await self._on_server(self._runtime.schedule_job(path, checked, when))

    async def cancel(self, job_id: str) -> None:
        """Cancel a job (committed on its own)."""
        await self._on_server(self._runtime.cancel_job(_check_job_id(job_id)))


async def commit_schedule(runtime: "Runtime", path: str, args: dict[str, Any], when: float) -> Any:
    """Commit a new pending job on the committer; the outcome's value is the job id."""
    path, checked = resolve_job(runtime.app, path, args)
    fields = job_fields(path, checked, check_time(when, "scheduledTime"))
    outcome = await runtime.committer.system_commit(SCHEDULE_FUNCTION,
                                                    [(SCHEDULED_FUNCTIONS, None, lambda _doc: fields)])
    return dataclasses.replace(outcome, value=outcome.value[0])


async def commit_cancel(runtime: "Runtime", job_id: str) -> Any:
    """Commit the cancel of a job on the committer; the outcome's value is None."""
    outcome = await runtime.committer.system_commit(SCHEDULE_FUNCTION,
                                                    [(SCHEDULED_FUNCTIONS, _check_job_id(job_id), cancel_change)])
    return dataclasses.replace(outcome, value=None)


class Scheduler:
    """Runs due jobs on the committer node (see the module docstring)."""

    def __init__(self, runtime: "Runtime") -> None:
        self._runtime = runtime
        # (scheduledTime, push order, job id, the job as it was pending): the doc saves a read per dispatch;
        # the committer re-checks the state in the transaction that runs or starts the job.
        self._heap: list[tuple[float, int, str, dict[str, Any]]] = []
        self._pushes = 0
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._action_slots: asyncio.Semaphore | None = None
        self._stopping = False
        self._sweeper: asyncio.Task[None] | None = None
        self.completed = 0  # jobs this process finished (any final state)

    async def start(self) -> None:
        """Rebuild the due heap from the table, fail actions a crash interrupted, and start running jobs."""
        if self._task is not None:
            return
        runtime = self._runtime
        self._action_slots = asyncio.Semaphore(max(1, runtime.limits.max_concurrent_actions))
        interrupted: list[str] = []
        for raw in runtime.projection.iter_documents(SCHEDULED_FUNCTIONS):
            doc = decode_doc(raw)
            kind = doc.get("state", {}).get("kind")
            if kind == "pending":
                self._push(doc, raw)
            elif kind == "inProgress":
                interrupted.append(doc["_id"])
        runtime.add_listener(self._on_applied)
        if interrupted:
            log.warning("%d scheduled action(s) were running when the server stopped: marked failed",
                        len(interrupted))
            fail = when_state("inProgress", lambda d: finished(d, "failed", SERVER_STOPPED))
            await runtime.committer.system_update(SCHEDULE_FUNCTION,
                                                  [(SCHEDULED_FUNCTIONS, job_id, fail) for job_id in interrupted])
        runtime.committer.take_due_jobs = self.dispatch_due  # each batch takes the jobs due by then
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="tape-scheduler")
        if runtime.limits.job_retention_seconds is not None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_periodically(),
                                                                   name="tape-scheduler-expiry")

    async def stop(self) -> None:
        """Stop taking jobs and cancel the ones running (a cancelled action is failed at the next start).

        Scheduled mutations still queued in the committer are refused by its stop: they stay pending.
        """
        self._stopping = True
        self._runtime.remove_listener(self._on_applied)
        if self._runtime.committer.take_due_jobs == self.dispatch_due:
            self._runtime.committer.take_due_jobs = None
        tasks = [t for t in [self._task, self._sweeper, *self._tasks] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except BaseException:  # noqa: BLE001 - cancelled or failed: either way it has ended
                pass
        self._task = None
        self._sweeper = None
        self._tasks.clear()

    def _finished_before(self, cutoff_ms: float, start: bytes | None) -> tuple[list[str], bytes | None]:
        """Up to EXPIRY_BATCH ids of jobs finished before `cutoff_ms`, and where to continue (None: done).

        A job finishes after it is created, so the walk follows by_creation_time up to the cutoff.
        """
        def expired(raw: bytes) -> bool:
            doc = decode_doc(raw)
            return doc.get("state", {}).get("kind") in FINAL_STATES and doc.get("completedTime", cutoff_ms) < cutoff_ms

        return expired_in_creation_order(self._runtime.projection, SCHEDULED_FUNCTIONS, cutoff_ms, start,
                                         EXPIRY_BATCH, expired)

    async def expire_finished(self, now: float | None = None) -> int:
        """Delete jobs finished more than `Limits.job_retention_seconds` ago; returns how many.

        Each chunk is one logged `_system:expire_jobs` record (replayed and restored like any other), and
        the delete re-checks the job's state in the committer, so a job changed meanwhile is kept.
        """
        retention = self._runtime.limits.job_retention_seconds
        if retention is None:
            return 0
        cutoff = (now_ms() if now is None else now) - retention * 1000.0
        change = expire_change(cutoff)
        deleted = 0
        start: bytes | None = None
        while True:
            ids, start = self._finished_before(cutoff, start)
            if ids:
                deleted += len(await self._runtime.committer.system_update(
                    EXPIRE_JOBS_FUNCTION, [(SCHEDULED_FUNCTIONS, job_id, change) for job_id in ids]))
            if start is None:
                break
            await asyncio.sleep(0)  # let mutations run between chunks
        if deleted:
            log.info("deleted %d scheduled job(s) finished more than %gs ago", deleted, retention)
        return deleted

    async def _sweep_periodically(self) -> None:
        """Expire finished jobs at start, then every retention / 24 (at most hourly)."""
        await sweep_periodically(self.expire_finished, lambda: self._runtime.limits.job_retention_seconds,
                                 "deleting expired scheduled jobs", log)

    @property
    def pending(self) -> int:
        """Heap entries not yet dispatched (may include stale entries of jobs already finished)."""
        return len(self._heap)

    def _push(self, doc: dict[str, Any], raw: bytes) -> None:
        self._pushes += 1
        heapq.heappush(self._heap, (doc["scheduledTime"], self._pushes, doc["_id"], doc, raw))

    def _on_applied(self, records: list[Any]) -> None:
        """Projection listener: queue every job written as pending."""
        pushed = False
        for record in records:
            for write in record.writes:
                if write.table != SCHEDULED_FUNCTIONS or write.doc is None or write.prev is not None:
                    continue  # jobs are pending only when inserted: later writes only move them on
                doc = decode_doc(write.doc)
                if doc.get("state", {}).get("kind") == "pending":
                    self._push(doc, write.doc)
                    pushed = True
        if pushed:
            self._wake.set()

    def dispatch_due(self) -> None:
        """Start every job due by now, in `scheduledTime` order.

        Called by this scheduler's task when the next job falls due, and by the
        committer before it forms each batch (`Committer.take_due_jobs`): on a
        busy node a due mutation then joins the very next batch.
        """
        heap = self._heap
        if not heap or self._stopping:
            return
        now = now_ms()
        if heap[0][0] > now:
            return
        while heap and heap[0][0] <= now:
            due, _, job_id, doc, raw = heapq.heappop(heap)
            if job_id in self._running:
                continue
            SCHEDULER_LATENESS_SECONDS.observe((now - due) / 1000.0)
            # A job cancelled meanwhile is dropped by the committer's check (mutations) or by the
            # conditional pending -> inProgress update (actions).
            self._running.add(job_id)
            if not self._start_mutation(doc, raw):
                task = asyncio.get_running_loop().create_task(self._run(doc))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _loop(self) -> None:
        """Dispatch due jobs, then sleep until the next falls due or a new one is queued.

        The sleep is a plain timer on the event `_on_applied` sets (no task per wake-up, as `wait_for`
        would make: with a job due every millisecond this loop wakes a thousand times a second).
        """
        heap = self._heap
        loop = asyncio.get_running_loop()
        wake = self._wake
        while True:
            wake.clear()
            self.dispatch_due()
            timer = None
            if heap:
                delay = (heap[0][0] - now_ms()) / 1000.0
                if delay <= 0:
                    await asyncio.sleep(0)
                    continue
                timer = loop.call_later(delay, wake.set)
            try:
                await wake.wait()
            finally:
                if timer is not None:
                    timer.cancel()

    def _start_mutation(self, doc: dict[str, Any], raw: bytes) -> bool:
        """Queue a scheduled mutation straight into the committer (no task per job); False if it is not one.

        `raw` is the job's encoding as it was pending: the committer skips decoding a job still stored so.
        """
        job_id = doc["_id"]
        try:
            fn = self._runtime.app.function(doc["name"], allow_internal=True)
            if fn.kind != "mutation":
                return False
            args = fn.validate_args(doc["args"][0] if doc.get("args") else {})
            future = self._runtime.committer.enqueue_job(fn, args, job_id, (doc, raw))
        except EngineError:
            return False  # `_run` records the failure
        future.add_done_callback(lambda done: self._mutation_done(job_id, done))
        return True

    def _mutation_done(self, job_id: str, done: "asyncio.Future[Any]") -> None:
        self._running.discard(job_id)
        if done.cancelled() or self._stopping:
            return  # not run: the job stays pending for the next start
        exc = done.exception()
        if exc is None:
            self.completed += 1
            return
        # The committer records a mutation's own failure in its job; this is a failure around it
        # (e.g. it was stopped at its time bound off the loop): record it unless it ran after all.
        self._running.add(job_id)
        task = asyncio.get_running_loop().create_task(self._fail_job(job_id, exc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fail_job(self, job_id: str, exc: BaseException) -> None:
        try:
            await self._update(job_id, "pending", lambda d: finished(d, "failed", str(exc)))
            self.completed += 1
        except EngineError:
            log.exception("recording the failure of scheduled job %s failed", job_id)
        finally:
            self._running.discard(job_id)

    async def _run(self, doc: dict[str, Any]) -> None:
        job_id = doc["_id"]
        try:
            try:
                fn = self._runtime.app.function(doc["name"], allow_internal=True)
                args = fn.validate_args(doc["args"][0] if doc.get("args") else {})
            except EngineError as exc:
                await self._update(job_id, "pending", lambda d: finished(d, "failed", str(exc)))
                return
            if fn.kind == "query":
                message = f"{fn.path} is a query: only mutations and actions can be scheduled"
                await self._update(job_id, "pending", lambda d: finished(d, "failed", message))
                return
            if fn.kind == "mutation":  # `_start_mutation` could not queue it: the committer refuses writes
                log.error("scheduled mutation %s (job %s) could not be queued; it stays pending until a restart",
                          fn.path, job_id)
                return
            await self._run_action(job_id, fn, args)
            self.completed += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduled job %s (%s) could not be run", job_id, doc.get("name"))
        finally:
            self._running.discard(job_id)

    async def _update(self, job_id: str, kind: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
        """Apply `change` to the job if it is in state `kind`; True when it was."""
        changed = await self._runtime.committer.system_update(
            SCHEDULE_FUNCTION, [(SCHEDULED_FUNCTIONS, job_id, when_state(kind, change))])
        return bool(changed)

    async def _run_action(self, job_id: str, fn: FunctionDef, args: dict[str, Any]) -> None:
        assert self._action_slots is not None
        async with self._action_slots:
            if not await self._update(job_id, "pending", lambda d: {**d, "state": {"kind": "inProgress"}}):
                return  # cancelled (or run) meanwhile
            try:
                await self._runtime.run_action(fn.path, args, allow_internal=True, identity=None)
            except asyncio.CancelledError:
                raise  # the server is stopping: the next start marks the job failed
            except Exception as exc:
                await self._update(job_id, "inProgress", lambda d: finished(d, "failed", str(exc)))
                return
            await self._update(job_id, "inProgress", lambda d: finished(d, "success"))
