"""The single writer: serial mutation execution with group commit.

Mutations queue up while the previous batch is being made durable. Each
batch runs its mutations one at a time against the latest state plus the
writes of earlier mutations in the batch (an `Overlay`), appends one log
record per successful mutation in a single group commit, applies them to the
projection, and only then answers the callers. Serial execution makes every
mutation serializable with no conflicts and no retries, however hot the keys.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.context import Auth, MutationCtx
from engine.db import DatabaseWriter, Transaction
from engine.errors import EngineError
from engine.execution import run_handler
from engine.functions import FunctionDef
from engine.overlay import Overlay
from engine.values import decode_value, encode_value
from log.errors import LogError
from log.record import Record, Write

if TYPE_CHECKING:
    from engine.runtime import Runtime

log = logging.getLogger("tape.committer")

REQUESTS_TABLE = "_requests"


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
    future: asyncio.Future[MutationOutcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


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


class Committer:
    """Owns the write path of one deployment (the committer role)."""

    def __init__(self, runtime: "Runtime", max_batch: int = 1024) -> None:
        self._runtime = runtime
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._max_batch = max_batch
        self._last_ts = 0
        self._creation_clock = CreationClock()
        self.batches = 0
        self.committed = 0

    def start(self) -> None:
        if self._task is None:
            self._last_ts = max(self._runtime.log.last_ts(), self._runtime.projection.applied_ts)
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="tape-committer")

    async def stop(self) -> None:
        """Finish queued mutations, then stop."""
        if self._task is None:
            return
        while self._queue:
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
        pending = _Pending(fn, args, identity, session_id, request_id)
        self._queue.append(pending)
        self._wakeup.set()
        return await pending.future

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
                try:
                    await self._commit_batch(batch)
                except Exception as exc:  # never let the writer die silently
                    log.exception("commit batch failed")
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(EngineError(f"commit failed: {exc}"))

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

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        runtime = self._runtime
        projection = runtime.projection
        overlay = Overlay()
        records: list[Record] = []
        owners: list[list[_Pending]] = []
        in_batch: dict[tuple[str, int], int] = {}
        saved_last_ts = self._last_ts
        for p in batch:
            key = None
            if p.session_id is not None and p.request_id is not None:
                key = (p.session_id, p.request_id)
                if key in in_batch:
                    owners[in_batch[key]].append(p)
                    continue
                previous = self._previous_answer(*key)
                if previous is not None:
                    p.future.set_result(previous)
                    continue
            mark = overlay.mark()
            tx = Transaction(projection, runtime.app.schema, runtime.limits, overlay, writable=True)
            ctx = MutationCtx(DatabaseWriter(tx, self._creation_clock), Auth(p.identity))
            try:
                value = run_handler(p.fn.handler(ctx, **p.args), p.fn.path)
                result = encode_value(value)
            except Exception as exc:
                overlay.rollback(mark)
                p.future.set_exception(exc)
                continue
            ts = self._next_ts()
            writes = []
            for doc_id, (table, prev) in tx.touched.items():
                entry = overlay.get(doc_id)
                doc = entry.doc if entry is not None else None
                if doc is None and prev is None:
                    continue  # inserted and deleted inside one transaction
                writes.append(Write(table, doc_id, doc, prev))
            record = Record(writes=writes, ts=ts, session_id=p.session_id, request_id=p.request_id,
                            function=p.fn.path, result=result)
            if key is not None:
                in_batch[key] = len(records)
            records.append(record)
            owners.append([p])
        overlay.release()
        if not records:
            return
        # The request-id documents need the offset, which the log assigns; reserve it now.
        base = runtime.log.next_offset()
        for i, record in enumerate(records):
            if record.session_id is not None and record.request_id is not None:
                memo = {"result": decode_value(record.result), "ts": record.ts, "offset": base + i}  # type: ignore[arg-type]
                record.writes.append(Write(REQUESTS_TABLE, request_doc_id(record.session_id, record.request_id),
                                           encode_value(memo), None))
        try:
            await runtime.log.append(records)
        except LogError as exc:
            self._last_ts = saved_last_ts
            error = EngineError(f"commit failed, nothing was written: {exc}")
            for group in owners:
                for p in group:
                    p.future.set_exception(error)
            return
        runtime.apply_committed(records)
        self.batches += 1
        self.committed += len(records)
        for record, group in zip(records, owners):
            outcome = MutationOutcome(decode_value(record.result), record.ts, record.offset)  # type: ignore[arg-type]
            for p in group:
                if not p.future.done():
                    p.future.set_result(outcome)
