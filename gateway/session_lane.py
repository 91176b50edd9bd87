"""A session's lane: its queries evaluated off the event loop, in order, all at one snapshot per step.

Most sessions share query executions that run on the event loop (see
`gateway.subscriptions`). Once a session subscribes to a query that outruns
its slice on the loop (`Runtime.try_on_loop`), the session moves to a lane of
its own, for the rest of its life:

* every query of the session is evaluated on a query worker thread against
  a read view of the projection (`projections.snapshot`), so a slow query
  holds neither the loop nor any other client;
* everything the session sends that carries a version (query set changes,
  updates after commits, the Transition after a mutation or action answer,
  identity changes) goes through one queue of steps, processed in order; a
  step evaluates the changed and dirty queries at one snapshot and sends one
  Transition ending at that snapshot's ts, so the client's view stays
  consistent: every query it holds is as of the ts it was told;
* a query is dirty when an applied record wrote a key its last evaluation
  read (the manager tracks lane read sets in its range index); writes that
  landed between a step's snapshot and its end are checked against the
  fresh read sets before the view is closed, so none is missed.

Steps coalesce: while one runs, later requests and dirty marks wait and are
taken together by the next, so a session whose slow query is invalidated
faster than it runs gets one update per evaluation, never a growing backlog.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from engine.client_values import error_data_wire, result_wire
from engine.errors import AppError
from engine.runtime import QueryResult
from gateway import protocol as p
from gateway.ws_frames import query_updated_bytes
from values import to_wire

if TYPE_CHECKING:
    from gateway.sync_session import SyncSession

log = logging.getLogger("tape.lane")



@dataclass
class LaneQuery:
    """One subscribed query of a lane session, with what its client last received."""

    path: str
    args: dict[str, Any]
    sent: bytes | None = None  # the modification the client holds for it (None: nothing yet)
    journal: str | None = None  # what its next evaluation starts from (a paginated page's end)


@dataclass
class LaneStep:
    """Work for the lane: query set changes, frames to send first, and the versions they end at."""

    query_set: int
    identity: int
    mods: list[bytes] = field(default_factory=list)   # modifications decided at receipt (QueryRemoved, refusals)
    prefix: bytes = b""                                # frames that must precede the Transition (responses)
    min_ts: int = 0
    reevaluate_all: bool = False                       # the identity changed


def modification(query_id: int, result: QueryResult, path: str, app: Any = None) -> bytes:
    """The Transition modification for a lane query's result (values under the int/float rule with `app`,
    with its log lines and the journal it leaves)."""
    if result.error is None:
        value = result_wire(app, path, result.value) if app is not None else to_wire(result.value)
        return query_updated_bytes(query_id, orjson.dumps(value), result.journal, orjson.dumps(result.log_lines))
    message = p.query_failed(query_id, p.elide(str(result.error), path), log_lines=result.log_lines,
                             journal=result.journal)
    if isinstance(result.error, AppError):
        message["errorData"] = error_data_wire(app, result.error.data) if app is not None else to_wire(result.error.data)
    return orjson.dumps(message)


class SessionLane:
    """Serves one session's queries off the event loop (see the module docstring)."""

    def __init__(self, session: "SyncSession") -> None:
        self.session = session
        self.queries: dict[int, LaneQuery] = {}
        self.dirty: set[int] = set()
        self._fresh: set[int] = set()  # added since the last step: evaluated and sent by the next
        self._steps: list[LaneStep] = []
        self._wake = asyncio.Event()
        self._closed = False
        self.steps_run = 0
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tape-session-lane")

    # -- input ---------------------------------------------------------------------
    def submit(self, step: LaneStep) -> None:
        self._steps.append(step)
        self._wake.set()

    def mark_dirty(self, query_id: int) -> None:
        if query_id in self.queries:
            self.dirty.add(query_id)
            self._wake.set()

    def add(self, query_id: int, path: str, args: dict[str, Any], journal: str | None = None) -> None:
        """A new subscription (admitted by the session); its result goes out with the next step."""
        self.queries[query_id] = LaneQuery(path, args, journal=journal)
        self._fresh.add(query_id)

    def remove(self, query_id: int) -> None:
        """Drop a subscription now (its QueryRemoved goes out with the next step)."""
        self.queries.pop(query_id, None)
        self.dirty.discard(query_id)
        self._fresh.discard(query_id)
        self.session.node.subscriptions.untrack_lane(self.session, query_id)

    def adopt(self, query_id: int, path: str, args: dict[str, Any], sent: bytes | None,
              journal: str | None = None) -> None:
        """Take over a query the session held on the loop; it is evaluated again at the next step."""
        self.queries[query_id] = LaneQuery(path, args, sent, journal)
        self.dirty.add(query_id)
        self._wake.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._task.cancel()
        manager = self.session.node.subscriptions
        for qid in self.queries:
            manager.untrack_lane(self.session, qid)
        self.queries.clear()

    # -- the step loop -------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while not self._closed:
                await self._wake.wait()
                self._wake.clear()
                while (self._steps or self.dirty) and not self._closed:
                    await self._step()
        except asyncio.CancelledError:
            pass
        except Exception:  # never leave a client silently stuck
            log.exception("a session lane failed; closing its connection")
            self.session.close(1011, "InternalServerError: lane failed")

    async def _step(self) -> None:
        session = self.session
        node = session.node
        runtime = node.runtime
        manager = node.subscriptions
        steps, self._steps = self._steps, []
        versions = session.versions
        query_set = max([s.query_set for s in steps], default=versions.sent.query_set)
        identity_version = max([s.identity for s in steps], default=versions.sent.identity)
        mods: list[bytes] = []
        prefix = b"".join(s.prefix for s in steps)
        fresh, self._fresh = self._fresh, set()
        for step in steps:
            mods.extend(step.mods)
            if step.reevaluate_all:
                self.dirty.update(self.queries)
        todo = sorted((self.dirty | fresh) & self.queries.keys())
        self.dirty.clear()
        min_ts = max([s.min_ts for s in steps], default=0)
        if not todo:
            ts = runtime.projection.applied_ts
        else:
            view = runtime.snapshots.open(runtime.projection)
            try:
                calls = [(self.queries[q].path, self.queries[q].args) for q in todo]
                journals = [self.queries[q].journal for q in todo]
                results = await runtime.query_many_at(view, calls, identity=session.identity, journals=journals)
                if self._closed:
                    return
                since = runtime.snapshots.records_after(view.applied_offset)
                for qid, result in zip(todo, results):
                    lane_query = self.queries.get(qid)
                    if lane_query is None:  # removed while it ran (cannot happen: steps are serial)
                        continue
                    lane_query.journal = result.journal
                    ranges = result.read_set.ranges
                    manager.track_lane(session, qid, ranges, result.read_set.buckets)
                    if since and manager.touches(since, ranges):
                        self.dirty.add(qid)  # written after the view was taken: run it again next step
                    mod = modification(qid, result, lane_query.path, runtime.app)
                    if mod != lane_query.sent:
                        lane_query.sent = mod
                        mods.append(mod)
                ts = view.applied_ts
            finally:
                view.close()
        self.steps_run += 1
        session.send_frame(prefix + session.transition_frame_at(max(ts, min_ts), mods, query_set, identity_version))
