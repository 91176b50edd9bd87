"""Live queries: shared executions, invalidation by read set, and fan-out of new results.

Every distinct (path, args, identity, journal) is one `SharedQuery`, executed
once and serialised once however many clients subscribe to it. The journal (a
paginated query's page end, see `engine.db` paginate) belongs to the
subscription: two tabs' first pages carry the same args but may end at
different rows, so a run's journal is part of its key (a shared query is
re-keyed when a run leaves a new journal). After each batch
of log records is applied to the projection, the manager finds the shared
queries whose read sets contain a written index key (old or new), re-runs
only those, and hands each affected session one consistent update at the new
log position.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Protocol

import orjson

from engine.client_values import error_data_wire, result_wire
from engine.errors import AppError
from engine.committer import REQUESTS_TABLE
from engine.runtime import QueryResult, Runtime
from values import compact, decode_doc, to_wire
from gateway.protocol import elide
from gateway.range_index import RangeIndex
from log.record import Record

log = logging.getLogger("tape.subscriptions")

COMMIT_TIMES_KEPT = 8192


class Subscriber(Protocol):
    """A client session that receives query updates."""

    def deliver(self, updates: list[tuple[int, "SharedQuery"]], ts: int,
                frames: dict[Any, Any] | None = None) -> None: ...

    def go_off_loop(self) -> None:
        """One of this session's shared queries turned out slow: serve it from its own lane from now on."""

    def lane_dirty(self, query_id: int) -> None:
        """A record just applied wrote a key this session's lane query `query_id` read."""


class SlowQuery(Exception):
    """A query outran its slice on the event loop: its subscriber must serve it off the loop (a lane)."""


@dataclass(eq=False)
class SharedQuery:
    """One query execution shared by every subscriber with the same path, args and identity."""

    key: Hashable
    path: str
    args: dict[str, Any]
    identity: dict[str, Any] | None
    journal: str | None = None  # what the next run starts from; what clients are sent with each result
    value_json: bytes = b"null"
    error_message: str | None = None
    error_data_json: bytes | None = None
    log_json: bytes = b"[]"  # the log lines of the execution that produced the result (a JSON array)
    offset: int = -1
    ts: int = 0
    read_ranges: list[tuple[bytes, bytes]] | None = None  # as last indexed, to skip re-indexing an unchanged read set
    read_buckets: list[bytes] | None = None
    subscribers: dict[tuple[int, int], tuple[Subscriber, int]] = field(default_factory=dict)

    def set_result(self, result: QueryResult, encode: Callable[[Any], Any] = to_wire,
                   encode_data: Callable[[Any], Any] = to_wire) -> bool:
        """Store a new result; returns True if what clients see changed.

        `encode` turns the value into Convex JSON (`engine.client_values.result_wire`: the int/float
        rule), `encode_data` an AppError's data. The log lines of this execution are kept with it.
        """
        self.offset, self.ts = result.offset, result.ts
        # (compact: each live query keeps these bytes; see values.compact)
        self.log_json = compact(orjson.dumps(result.log_lines)) if result.log_lines else b"[]"
        if result.error is None:
            value_json = orjson.dumps(encode(result.value))
            changed = self.error_message is not None or value_json != self.value_json
            if changed:
                self.value_json = compact(value_json)
            self.error_message, self.error_data_json = None, None
            return changed
        message = elide(str(result.error), self.path)
        data = orjson.dumps(encode_data(result.error.data)) if isinstance(result.error, AppError) else None
        changed = message != self.error_message or data != self.error_data_json
        self.error_message, self.error_data_json = message, data
        return changed


class _PrefixMap(dict):  # type: ignore[type-arg]
    """Index name -> key prefix of one table, filled on first use of each index."""

    def __init__(self, projection: Any, table: str) -> None:
        super().__init__()
        self._projection, self._table = projection, table

    def __missing__(self, index: str) -> bytes:
        prefix = self[index] = self._projection.index_prefix(self._table, index)
        return prefix


def query_key(path: str, args: Any, identity: dict[str, Any] | None, journal: str | None = None) -> Hashable:
    """Identity of a query execution: equal paths, args, identities and journals share one execution."""
    ident = orjson.dumps(identity, option=orjson.OPT_SORT_KEYS) if identity else b""
    return (path, orjson.dumps(to_wire(args), option=orjson.OPT_SORT_KEYS), ident, journal)


class SubscriptionManager:
    """Owns all shared queries of a node and keeps them current as the projection advances."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._queries: dict[Hashable, SharedQuery] = {}
        self._ranges = RangeIndex()
        self._prefixes: dict[str, dict[str, bytes]] = {}
        self._lanes: dict[Hashable, tuple[Subscriber, int]] = {}  # range owner -> (session, query id)
        self.reruns = 0
        #: compact-JSON bytes of the args of all live subscriptions, counted per subscription
        #: (sessions account theirs with `hold_args` / `release_args`; bounded by max_total_args_bytes)
        self.args_bytes = 0
        #: (last ts of an applied batch, time.perf_counter_ns() when it reached this listener, i.e. durable
        #: and applied): lets a benchmark on this host time commit -> update (see /api/admin/commit_times)
        self.commit_times: deque[tuple[int, int]] = deque(maxlen=COMMIT_TIMES_KEPT)
        runtime.add_listener(self.on_applied)

    def close(self) -> None:
        self.runtime.remove_listener(self.on_applied)

    @property
    def query_count(self) -> int:
        return len(self._queries)

    def subscribe(self, subscriber: Subscriber, query_id: int, path: str, args: dict[str, Any],
                  identity: dict[str, Any] | None, journal: str | None = None) -> SharedQuery:
        """Attach a subscriber's query; runs it if no identical query is live yet.

        `journal` is the one the client got with its last result (sent back on `Add`
        after a reconnect), None for a new subscription."""
        key = query_key(path, args, identity, journal)
        shared = self._queries.get(key)
        if shared is None:
            shared = SharedQuery(key, path, args, identity, journal)
            if self._run(shared) is None:
                raise SlowQuery(path)
            if shared.journal != journal:  # a first page now ends somewhere: it is known by that end
                shared.key = query_key(path, args, identity, shared.journal)
                same = self._queries.get(shared.key)
                if same is not None:  # an identical page, already live: share it
                    self._ranges.remove(key)
                    shared = same
            if shared.key not in self._queries:
                self._queries[shared.key] = shared
                if shared.key != key:
                    self._ranges.remove(key)
                    self._ranges.set(shared.key, shared.read_ranges or [], shared.read_buckets or [])
        shared.subscribers[(id(subscriber), query_id)] = (subscriber, query_id)
        return shared

    def hold_args(self, size: int) -> None:
        """A subscription holding `size` bytes of arguments was added."""
        self.args_bytes += size

    def release_args(self, size: int) -> None:
        """Subscriptions holding `size` bytes of arguments are gone."""
        self.args_bytes = max(0, self.args_bytes - size)

    def unsubscribe(self, subscriber: Subscriber, shared: SharedQuery, query_id: int) -> None:
        shared.subscribers.pop((id(subscriber), query_id), None)
        if not shared.subscribers:
            self._queries.pop(shared.key, None)
            self._ranges.remove(shared.key)

    def _run(self, shared: SharedQuery) -> bool | None:
        """Re-run `shared` on the loop: whether what clients see changed; None when the query is slow
        (it did not run: the caller moves its subscribers off the loop)."""
        result = self.runtime.try_on_loop(shared.path, shared.args, identity=shared.identity,
                                          journal=shared.journal)
        if result is None:
            return None
        self.reruns += 1
        ranges, buckets = result.read_set.ranges, result.read_set.buckets
        if ranges != shared.read_ranges or buckets != shared.read_buckets:
            self._ranges.set(shared.key, ranges, buckets)
            shared.read_ranges, shared.read_buckets = ranges, buckets
        journal_changed = result.journal != shared.journal
        shared.journal = result.journal
        if journal_changed and shared.key in self._queries:
            self._rekey(shared)
        app = self.runtime.app
        changed = shared.set_result(result, lambda value: result_wire(app, shared.path, value),
                                    lambda data: error_data_wire(app, data))
        return changed or journal_changed

    def _rekey(self, shared: SharedQuery) -> None:
        """A live shared query's journal changed: file it under its new key (unless that one is taken)."""
        key = query_key(shared.path, shared.args, shared.identity, shared.journal)
        if key in self._queries:
            return  # an identical page under that key already: this one keeps its old key
        del self._queries[shared.key]
        self._ranges.remove(shared.key)
        shared.key = key
        self._queries[key] = shared
        self._ranges.set(key, shared.read_ranges or [], shared.read_buckets or [])

    def refresh_all(self) -> list[SharedQuery]:
        """Re-run every live query (after an app reload); returns those whose result changed.

        Queries found slow move their subscribers off the loop (`Subscriber.go_off_loop`)."""
        changed = []
        for q in list(self._queries.values()):
            outcome = self._run(q)
            if outcome:
                changed.append(q)
            elif outcome is None:
                self._move_off_loop(q)
        for lane_session, _qid in list(self._lanes.values()):
            lane_session.go_off_loop()  # already off the loop: re-evaluates all its queries
        return changed

    def _move_off_loop(self, shared: SharedQuery) -> None:
        """`shared` is slow: every session subscribed to it gets a lane of its own."""
        for subscriber, _qid in list(shared.subscribers.values()):
            subscriber.go_off_loop()

    # -- lanes: queries of sessions served off the loop --------------------------------
    def track_lane(self, subscriber: Subscriber, query_id: int, ranges: list[tuple[bytes, bytes]],
                   buckets: list[bytes]) -> None:
        """Watch the read set of a lane query: `subscriber.lane_dirty(query_id)` when a write touches it."""
        key = ("lane", id(subscriber), query_id)
        self._lanes[key] = (subscriber, query_id)
        self._ranges.set(key, ranges, buckets)

    def untrack_lane(self, subscriber: Subscriber, query_id: int) -> None:
        key = ("lane", id(subscriber), query_id)
        if self._lanes.pop(key, None) is not None:
            self._ranges.remove(key)

    def touches(self, records: list[Record], ranges: list[tuple[bytes, bytes]]) -> bool:
        """Whether `records` wrote a key (old or new) inside any of `ranges`."""
        if not ranges:
            return False
        return any(lo <= key < hi for key in self._written(records) for lo, hi in ranges)

    def _index_prefixes(self, table: str) -> dict[str, bytes]:
        """Index name -> key prefix for `table` (cached: a prefix depends only on the two names)."""
        prefixes = self._prefixes.get(table)
        if prefixes is None:
            prefixes = self._prefixes[table] = _PrefixMap(self.runtime.projection, table)
        return prefixes

    def affected_by(self, records: list[Record]) -> set[Hashable]:
        """Keys of the shared queries (and lane queries) whose read sets contain a key written by `records`."""
        affected: set[Hashable] = set()
        if not self._queries and not self._lanes:
            return affected
        owners = self._ranges.owners_of
        for key, bucket in self._written(records).items():
            owners(key, bucket, affected)
        return affected

    def _written(self, records: list[Record]) -> dict[bytes, bytes]:
        """Every index key `records` wrote, old and new, once: key -> the bucket (index prefix) it is in."""
        projection = self.runtime.projection
        # Every index key written, old and new, once: key -> its index prefix (the bucket of
        # bounded ranges over that index; ranges in the b"" bucket are checked for every key).
        written: dict[bytes, bytes] = {}
        for record in records:
            for write in record.writes:
                table = write.table
                if table == REQUESTS_TABLE:
                    continue  # the mutation memos: written by every mutation, read by no live query
                doc_key = projection.doc_key(write.id, table)
                if doc_key not in written:
                    written[doc_key] = b""
                prefixes = self._index_prefixes(table)
                # An update the writer marked as keeping every index key has one key set, not two.
                images = (write.prev,) if write.prev is not None and write.doc is not None and write.same_index_keys \
                    else (write.prev, write.doc)
                for raw in images:
                    if raw is None:
                        continue
                    for index, key in projection.index_keys(table, decode_doc(raw)):
                        written[key] = prefixes[index]
                if table in projection.search_tables:  # the search read-set keys of both versions
                    for raw in (write.prev, write.doc):
                        if raw is not None:
                            for bucket, key in projection.search_keys(table, decode_doc(raw)):
                                written[key] = bucket
        return written

    def on_applied(self, records: list[Record]) -> None:
        """Projection listener: re-run affected queries and push one update per affected session.

        Sessions whose Transition is byte-identical share one frame (built by the first of them).
        """
        if records:
            self.commit_times.append((records[-1].ts, time.perf_counter_ns()))
        affected = self.affected_by(records)
        if not affected:
            return
        per_session: dict[int, tuple[Subscriber, list[tuple[int, SharedQuery]]]] = {}
        queries = self._queries
        lanes = self._lanes
        for key in affected:
            shared = queries.get(key)
            if shared is None:
                lane = lanes.get(key)
                if lane is not None:
                    lane[0].lane_dirty(lane[1])
                continue
            outcome = self._run(shared)
            if not outcome:
                if outcome is None:  # slow: it did not run on the loop
                    self._move_off_loop(shared)
                continue
            for subscriber, query_id in shared.subscribers.values():
                entry = per_session.get(id(subscriber))
                if entry is None:
                    per_session[id(subscriber)] = (subscriber, [(query_id, shared)])
                else:
                    entry[1].append((query_id, shared))
        if not per_session:
            return
        ts = self.runtime.projection.applied_ts
        frames: dict[Any, Any] = {}  # one batch's shared Transition frames, filled by the sessions
        for subscriber, updates in per_session.values():
            try:
                subscriber.deliver(updates, ts, frames)
            except Exception:
                log.exception("delivering an update failed")
