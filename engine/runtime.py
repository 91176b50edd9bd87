"""The function runtime: runs queries, mutations and actions of a loaded app."""
from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.action_workers import ActionWorkers
from engine.app import App
from engine.committer import Committer, MutationOutcome
from engine.context import ActionCtx, Auth, QueryCtx
from engine.crons import CronRunner
from engine.cursors import DEFAULT_SEALER, CursorSealer
from engine.db import DatabaseReader, Transaction
from engine.errors import AppError, EngineError, InternalFunctionError, LimitExceeded, SchemaViolation
from engine.execution import SliceExpired, SlowPaths, check_result, run_handler
from engine import function_logs
from engine.limits import DEFAULT_LIMITS, Limits
from engine.metrics import APP_ERROR, ERROR, SUCCESS, TIMEOUT, observe_function
from engine.preempt import Preempted, expire_workers, worker_deadline
from engine.schema_check import checked_fingerprint, mark_checked, schema_fingerprint
from engine.readset import ReadSet
from engine.scheduler import (CANCEL_JOB_PATH, SCHEDULE_JOB_PATH, SYSTEM_JOB_PATHS, Scheduler, commit_cancel,
                              commit_schedule)
from engine.storage import FileStorage, QueryStorage
from values import decode_doc
from log.base import Log
from log.record import Record
from projections.rebuild import catch_up
from projections.snapshot import SnapshotJournal
from projections.vectors import VectorIndexes
from projections.types import DocumentReader, ProjectionStore, SnapshotReader

log = logging.getLogger("tape.runtime")

AppliedListener = Callable[[list[Record]], None]


@dataclass
class QueryResult:
    """A query's value with the read set and log position it was computed at."""

    value: Any
    read_set: ReadSet
    offset: int
    ts: int
    error: Exception | None = None
    #: the query journal this run leaves (a paginated query's page end: see engine.db paginate), or None
    journal: str | None = None
    log_lines: list[str] = field(default_factory=list)  # what the query printed or logged (Convex format)


@dataclass
class ActionOutcome:
    """An action's return value and the log lines it printed or logged."""

    value: Any
    log_lines: list[str]


class Runtime:
    """Binds an app to a log and a projection. The committer role also owns the write path."""

    def __init__(self, app: App, log_: Log, projection: ProjectionStore, limits: Limits = DEFAULT_LIMITS,
                 role: str = "committer", vector_dir: str | os.PathLike[str] | None = None) -> None:
        self.app = app
        self.log = log_
        self.projection = projection
        self.limits = limits
        self.role = role
        self.committer = Committer(self)
        self.scheduler = Scheduler(self)  # runs due `_scheduled_functions` jobs; started on the committer only
        self.crons = CronRunner(self)  # starts `crons.py` runs; committer only
        self.actions = ActionWorkers(limits.max_concurrent_actions)
        self.query_workers = ThreadPoolExecutor(limits.query_workers, thread_name_prefix="tape-query")
        self.slow_queries = SlowPaths()  # query paths that outran their slice on the loop (for a while)
        self.snapshots = SnapshotJournal()  # read views for queries running off the loop
        self._listeners: list[AppliedListener] = []
        # vector indexes: in memory, saved to `vector_dir` at stop, loaded (or built from the projection) at start
        self.vectors = VectorIndexes(projection, vector_dir)
        self._listeners.append(self.vectors.apply)
        self.mutation_forwarder: Callable[..., Any] | None = None
        #: seals pagination cursors; a node installs one keyed by its deployment secret (gateway.node)
        self.cursors: CursorSealer = DEFAULT_SEALER
        self.function_logs = function_logs.LogStream()  # finished calls' logs, for /api/admin/logs
        function_logs.install()
        self.storage: FileStorage | None = None  # `ctx.storage`'s files: set by the node serving this runtime

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        """Install the app's schema (checking existing data) and start the committer."""
        if self.projection.applied_offset >= self.log.next_offset():
            raise EngineError(
                f"the projection has applied up to offset {self.projection.applied_offset} but the log ends at "
                f"offset {self.log.next_offset() - 1}: the log was lost, truncated or replaced. Refusing to "
                "start a new history over it; restore the log, or rebuild the projection from the log "
                "(tape doctor --rebuild-projection)")
        self.install_app(self.app)
        if self.role == "committer":
            await self.catch_up()
        await self.vectors.load_saved(self.log)
        self.vectors.start()  # builds the rest from the caught-up projection, in the background
        if self.role == "committer":
            self.committer.start()
            await self.scheduler.start()
            self.crons.start()

    async def catch_up(self) -> None:
        """Apply log records the projection has not seen (after a crash, or on a fresh projection).

        Runs at start-up, before anyone subscribes, so it uses the projection's fast replay path.
        """
        if self.projection.applied_offset + 1 < self.log.next_offset():
            await catch_up(self.projection, self.log)

    async def stop(self) -> None:
        """Stop promptly: queued mutations are refused, user code still running anywhere is interrupted."""
        expire_workers()  # slow queries and mutations on worker threads: their results are not needed now
        await self.crons.stop()
        await self.scheduler.stop()
        await self.committer.stop(drain_seconds=0.0)
        self.actions.close()
        self.vectors.close()
        try:
            self.vectors.save()  # the next start loads them instead of building them again
        except Exception:
            log.exception("saving the vector indexes failed; the next start builds them from the projection")
        self.query_workers.shutdown(wait=False, cancel_futures=True)

    def install_app(self, app: App) -> None:
        """Switch to `app` (e.g. after a reload), refusing a schema that existing data violates."""
        bad: list[str] = []
        problems: list[str] = []
        fingerprint = schema_fingerprint(app.schema)
        checked = checked_fingerprint(self.projection.path) == fingerprint  # see engine.schema_check
        for table, definition in app.schema.tables.items():
            if checked:
                break
            if definition.validator is None:
                continue
            for raw in self.projection.iter_documents(table):
                doc = decode_doc(raw)
                try:
                    definition.validate(table, doc)
                except EngineError as exc:
                    bad.append(doc["_id"])
                    if len(problems) < 5:
                        problems.append(f"{doc['_id']}: {exc}")
                    if len(bad) >= 100:
                        break
        if bad:
            raise SchemaViolation("schema.py does not match existing documents: " + "; ".join(problems), bad)
        if not checked:
            mark_checked(self.projection.path, fingerprint)
        self.projection.set_indexes(app.schema.index_catalog())
        if app._package:
            function_logs.enable_app_logging(app._package)
        self.vectors.install(app.schema.vector_catalog())
        self.app = app

    # -- projection feed -------------------------------------------------------
    def add_listener(self, listener: AppliedListener) -> None:
        """Call `listener(records)` after every batch of records is applied to the projection."""
        self._listeners.append(listener)

    def remove_listener(self, listener: AppliedListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def apply_committed(self, records: list[Record]) -> None:
        """Apply durable records to the projection and notify listeners."""
        self.snapshots.record(records)  # before the projection has them: see projections.snapshot
        self.projection.apply(records)
        for listener in list(self._listeners):
            try:
                listener(records)
            except Exception:
                log.exception("projection listener failed")

    # -- functions -------------------------------------------------------------
    def run_query(self, path: str, args: Any, *, allow_internal: bool = False,
                  identity: dict[str, Any] | None = None) -> QueryResult:
        """Run a query at the current projection state; raises the query's error."""
        result = self.evaluate_query(path, args, allow_internal=allow_internal, identity=identity)
        if result.error is not None:
            raise result.error
        return result

    def evaluate_query(self, path: str, args: Any, *, allow_internal: bool = False,
                       identity: dict[str, Any] | None = None, reader: DocumentReader | None = None,
                       slice_seconds: float | None = None, journal: str | None = None) -> QueryResult:
        """Run a query synchronously (so it sees one snapshot); errors are returned with the read set.

        `reader` is the state to read (default: the live projection). With
        `slice_seconds`, a query still running after that long raises
        `SliceExpired` instead (see `query`, which then runs it off the loop).
        `journal` is the journal of an earlier run of this subscription (it keeps a page's end).
        """
        source = reader if reader is not None else self.projection
        tx = Transaction(source, self.app.schema, self.limits, None, writable=False, cursors=self.cursors,
                         journal=journal)
        offset, ts = source.applied_offset, source.applied_ts
        flog, token = function_logs.begin(path, "query")  # (not a with-block: this runs for every query)
        try:
            fn = self.app.function(path, allow_internal=allow_internal)
            if fn.kind != "query":
                raise EngineError(f"{fn.path} is a {fn.kind}, not a query")
            checked = fn.validate_args(args)
            db = DatabaseReader(tx)
            ctx = QueryCtx(db, Auth(identity), QueryStorage(self.storage, db))
            value = fn.check_returns(run_handler(fn.handler(ctx, **checked), fn.path, self.limits.max_seconds,
                                                 slice_seconds))
        except (AppError, EngineError) as exc:
            error: Exception | None = exc
            value = None
        else:
            error = None
        finally:
            function_logs.end(flog, token)
        lines = flog.lines if flog is not None else []
        if flog is not None:
            if error is not None:
                function_logs.attach(error, lines)
            function_logs.publish(flog, self.function_logs, error)
        return QueryResult(value, tx.read_set, offset, ts, error, journal if error is not None else tx.journal_out,
                           lines)

    # -- keeping user code off the event loop -------------------------------------
    def is_slow(self, path: str) -> bool:
        """Whether `path` once outran its slice on the loop (it then always runs on a query worker)."""
        return path in self.slow_queries

    def try_on_loop(self, path: str, args: Any, *, allow_internal: bool = False,
                    identity: dict[str, Any] | None = None, journal: str | None = None) -> QueryResult | None:
        """Evaluate on the event loop within one slice; None if the query is (now known to be) slow."""
        if path in self.slow_queries:
            return None
        try:
            return self.evaluate_query(path, args, allow_internal=allow_internal, identity=identity,
                                       slice_seconds=self.limits.loop_slice_seconds, journal=journal)
        except SliceExpired:
            log.info("query %s outran its %.0f ms slice on the event loop: it runs on query workers from now on",
                     path, self.limits.loop_slice_seconds * 1000)
            self.slow_queries.add(path)
            return None

    async def query(self, path: str, args: Any, *, allow_internal: bool = False,
                    identity: dict[str, Any] | None = None, journal: str | None = None) -> QueryResult:
        """Evaluate a query without holding the event loop longer than one slice.

        A query runs on the loop first; one that outruns the slice (or is
        known to) runs again on a query worker thread, against a snapshot of
        the projection taken now, with the full time bound.
        """
        result = self.try_on_loop(path, args, allow_internal=allow_internal, identity=identity, journal=journal)
        if result is not None:
            return result
        reader = self.snapshots.open(self.projection)
        return await self.query_at(reader, path, args, allow_internal=allow_internal, identity=identity,
                                   journal=journal)

    async def query_at(self, reader: SnapshotReader, path: str, args: Any, *, allow_internal: bool = False,
                       identity: dict[str, Any] | None = None, journal: str | None = None) -> QueryResult:
        """Evaluate a query on a query worker against `reader` (a snapshot, which this closes)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.query_workers, self._evaluate_on_worker, reader, path, args,
                                              allow_internal, identity, journal)
        finally:
            reader.close()

    async def query_many_at(self, reader: SnapshotReader, calls: list[tuple[str, Any]], *,
                            identity: dict[str, Any] | None = None,
                            journals: list[str | None] | None = None) -> list[QueryResult]:
        """Evaluate several queries in turn on one query worker, all against `reader` (left open).

        `journals[i]`, when given, is the journal of `calls[i]`'s subscription."""
        def run_all() -> list[QueryResult]:
            return [self._evaluate_on_worker(reader, path, args, False, identity,
                                             journals[i] if journals is not None else None)
                    for i, (path, args) in enumerate(calls)]
        return await asyncio.get_running_loop().run_in_executor(self.query_workers, run_all)

    def _evaluate_on_worker(self, reader: SnapshotReader, path: str, args: Any, allow_internal: bool,
                            identity: dict[str, Any] | None, journal: str | None = None) -> QueryResult:
        error = LimitExceeded(f"{path} ran longer than {self.limits.max_seconds:g}s")
        try:
            with worker_deadline(self.limits.max_seconds):
                return self.evaluate_query(path, args, allow_internal=allow_internal, identity=identity,
                                           reader=reader, journal=journal)
        except Preempted:
            return QueryResult(None, ReadSet(), reader.applied_offset, reader.applied_ts, error, journal)

    async def run_mutation(self, path: str, args: Any, *, allow_internal: bool = False,
                           identity: dict[str, Any] | None = None, session_id: str | None = None,
                           request_id: int | None = None) -> MutationOutcome:
        """Run a mutation; resolves when it is durable and applied here."""
        if allow_internal and path in SYSTEM_JOB_PATHS:  # a replica's action scheduled or cancelled a job
            if not isinstance(args, dict):
                raise EngineError(f"{path}: expected an object of arguments")
            if path == SCHEDULE_JOB_PATH:
                return await self._job_call(path, args.get("name"), args.get("args"), args.get("scheduledTime"))
            return await self._job_call(path, args.get("id"))
        fn = self.app.function(path, allow_internal=allow_internal)
        if fn.kind != "mutation":
            raise EngineError(f"{fn.path} is a {fn.kind}, not a mutation")
        checked = fn.validate_args(args)
        if self.role != "committer":
            if self.mutation_forwarder is None:
                raise EngineError("this node is a replica without a committer address")
            return await self.mutation_forwarder(fn.path, checked, identity, session_id, request_id)
        return await self.committer.submit(fn, checked, identity, session_id, request_id)

    async def schedule_job(self, path: str, args: dict[str, Any], when_ms: float) -> str:
        """Commit a pending job for `path(args)` due at `when_ms`; returns its id (forwarded on a replica)."""
        return (await self._job_call(SCHEDULE_JOB_PATH, path, args, when_ms)).value

    async def cancel_job(self, job_id: str) -> None:
        """Cancel a job (forwarded on a replica)."""
        await self._job_call(CANCEL_JOB_PATH, job_id)

    async def _job_call(self, path: str, *args: Any) -> MutationOutcome:
        if self.role != "committer":
            if self.mutation_forwarder is None:
                raise EngineError("this node is a replica without a committer address")
            body = ({"name": args[0], "args": args[1], "scheduledTime": args[2]} if path == SCHEDULE_JOB_PATH
                    else {"id": args[0]})
            return await self.mutation_forwarder(path, body, None, None, None)
        if path == SCHEDULE_JOB_PATH:
            return await commit_schedule(self, *args)
        return await commit_cancel(self, *args)

    async def run_action(self, path: str, args: Any, *, allow_internal: bool = False,
                         identity: dict[str, Any] | None = None) -> Any:
        """Run an action: ordinary async code that may do I/O and call other functions."""
        return (await self.call_action(path, args, allow_internal=allow_internal, identity=identity)).value

    async def call_action(self, path: str, args: Any, *, allow_internal: bool = False,
                          identity: dict[str, Any] | None = None) -> ActionOutcome:
        """`run_action`, also returning the log lines the action printed (a failure carries them too:
        `function_logs.lines_of(error)`)."""
        fn = self.app.function(path, allow_internal=allow_internal)
        if fn.kind != "action":
            raise EngineError(f"{fn.path} is a {fn.kind}, not an action")
        checked = fn.validate_args(args)
        ctx = ActionCtx(self, Auth(identity), asyncio.get_running_loop())
        logs: list[function_logs.FunctionLog] = []

        async def logged() -> Any:  # runs on the action's worker, in its own task (its own context)
            with function_logs.capture(fn.path, "action") as flog:
                if flog is not None:
                    logs.append(flog)
                return await fn.handler(ctx, **checked)

        def request_id() -> str | None:
            return logs[0].request_id if logs else None
        started = time.monotonic()
        try:
            try:
                result = await self.actions.run(logged, self.limits.max_action_seconds, fn.path)
            except (Preempted, asyncio.TimeoutError):
                observe_function(fn.path, TIMEOUT, started)
                raise EngineError(f"{fn.path} ran longer than {self.limits.max_action_seconds:g}s") from None
            except AppError:
                observe_function(fn.path, APP_ERROR, started)
                raise
            except EngineError:
                observe_function(fn.path, ERROR, started)
                raise
            except Exception as exc:
                observe_function(fn.path, ERROR, started)
                error = InternalFunctionError(fn.path, request_id())
                log.error("uncaught exception in %s (request %s)", fn.path, error.request_id, exc_info=exc,
                          extra={"request_id": error.request_id, "path": fn.path})
                raise error from None
            try:
                check_result(result, fn.path)
                result = fn.check_returns(result)
            except EngineError:
                observe_function(fn.path, ERROR, started)
                raise
        except (AppError, EngineError) as exc:
            if logs:
                function_logs.attach(exc, logs[0].lines)
                function_logs.publish(logs[0], self.function_logs, exc)
            raise
        observe_function(fn.path, SUCCESS, started)
        lines = logs[0].lines if logs else []
        if logs:
            function_logs.publish(logs[0], self.function_logs)
        return ActionOutcome(result, lines)
