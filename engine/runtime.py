"""The function runtime: runs queries, mutations and actions of a loaded app."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable

from engine.app import App
from engine.committer import Committer, MutationOutcome
from engine.context import ActionCtx, Auth, QueryCtx
from engine.db import DatabaseReader, Transaction
from engine.errors import AppError, EngineError, InternalFunctionError, SchemaViolation
from engine.execution import check_result, run_handler
from engine.limits import DEFAULT_LIMITS, Limits
from engine.readset import ReadSet
from values import decode_doc
from log.record import Record

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


class Runtime:
    """Binds an app to a log and a projection. The committer role also owns the write path."""

    def __init__(self, app: App, log_: Any, projection: Any, limits: Limits = DEFAULT_LIMITS,
                 role: str = "committer") -> None:
        self.app = app
        self.log = log_
        self.projection = projection
        self.limits = limits
        self.role = role
        self.committer = Committer(self)
        self._listeners: list[AppliedListener] = []
        self.mutation_forwarder: Callable[..., Any] | None = None

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
            self.committer.start()

    async def catch_up(self) -> None:
        """Apply log records the projection has not seen (after a crash, or on a fresh projection).

        Runs at start-up, before anyone subscribes, so it uses the projection's fast replay path.
        """
        from projections.rebuild import catch_up
        if self.projection.applied_offset + 1 < self.log.next_offset():
            await catch_up(self.projection, self.log)

    async def stop(self) -> None:
        await self.committer.stop()

    def install_app(self, app: App) -> None:
        """Switch to `app` (e.g. after a reload), refusing a schema that existing data violates."""
        bad: list[str] = []
        problems: list[str] = []
        for table, definition in app.schema.tables.items():
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
        self.projection.set_indexes(app.schema.index_catalog())
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
                       identity: dict[str, Any] | None = None) -> QueryResult:
        """Run a query synchronously (so it sees one snapshot); errors are returned with the read set."""
        tx = Transaction(self.projection, self.app.schema, self.limits, None, writable=False)
        offset, ts = self.projection.applied_offset, self.projection.applied_ts
        try:
            fn = self.app.function(path, allow_internal=allow_internal)
            if fn.kind != "query":
                raise EngineError(f"{fn.path} is a {fn.kind}, not a query")
            checked = fn.validate_args(args)
            ctx = QueryCtx(DatabaseReader(tx), Auth(identity))
            value = run_handler(fn.handler(ctx, **checked), fn.path, self.limits.max_seconds)
        except (AppError, EngineError) as exc:
            return QueryResult(None, tx.read_set, offset, ts, exc)
        return QueryResult(value, tx.read_set, offset, ts)

    async def run_mutation(self, path: str, args: Any, *, allow_internal: bool = False,
                           identity: dict[str, Any] | None = None, session_id: str | None = None,
                           request_id: int | None = None) -> MutationOutcome:
        """Run a mutation; resolves when it is durable and applied here."""
        fn = self.app.function(path, allow_internal=allow_internal)
        if fn.kind != "mutation":
            raise EngineError(f"{fn.path} is a {fn.kind}, not a mutation")
        checked = fn.validate_args(args)
        if self.role != "committer":
            if self.mutation_forwarder is None:
                raise EngineError("this node is a replica without a committer address")
            return await self.mutation_forwarder(fn.path, checked, identity, session_id, request_id)
        return await self.committer.submit(fn, checked, identity, session_id, request_id)

    async def run_action(self, path: str, args: Any, *, allow_internal: bool = False,
                         identity: dict[str, Any] | None = None) -> Any:
        """Run an action: ordinary async code that may do I/O and call other functions."""
        fn = self.app.function(path, allow_internal=allow_internal)
        if fn.kind != "action":
            raise EngineError(f"{fn.path} is a {fn.kind}, not an action")
        checked = fn.validate_args(args)
        try:
            result = await asyncio.wait_for(fn.handler(ActionCtx(self, Auth(identity)), **checked),
                                            self.limits.max_action_seconds)
        except (AppError, EngineError):
            raise
        except asyncio.TimeoutError:
            raise EngineError(f"{fn.path} ran longer than {self.limits.max_action_seconds:g}s") from None
        except Exception as exc:
            error = InternalFunctionError(fn.path)
            log.error("uncaught exception in %s (request %s)", fn.path, error.request_id, exc_info=exc)
            raise error from None
        check_result(result, fn.path)
        return result
