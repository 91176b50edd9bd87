"""The protocol state behind `client.Client`, with no sockets and no tasks.

`ClientCore` is the client half of the Convex sync protocol (message shapes
in ``docs/protocol.md``). It owns

* the *query table*: one `QueryEntry` (one server-side ``queryId``) per
  distinct ``(path, args)``, each fanning its results out to any number of
  local `Sink` mailboxes;
* the *request table*: mutations and actions by ``requestId``;
* the *version* ``{querySet, ts, identity}`` the server last moved the
  client to, and the query-set version the client itself has asked for.

The I/O layer calls `ClientCore.connected` with a ``send`` callable when a
socket opens (the core then queues the whole handshake: ``Connect``, a
``ModifyQuerySet`` 0 → 1 re-adding every live query, and every unfinished
mutation), `ClientCore.handle` for every decoded server message, and
`ClientCore.disconnected` when the socket is gone. Everything here runs on
the event loop thread and never blocks.
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import orjson

from client.errors import (
    ClientClosedError,
    ConnectionLostError,
    FatalServerError,
    FunctionError,
    function_error,
)
from values.sync_wire import MISSING, ProtocolError, StateVersion, decode_ts, encode_ts
from values.sync_wire import canonicalize_udf_path as canonical_path
from values import from_wire, to_wire

__all__ = [
    "StartVersionMismatch",
    "Sink",
    "QueryEntry",
    "QueryInfo",
    "PendingRequest",
    "ClientCore",
]

log = logging.getLogger("tape.client")
function_log = logging.getLogger("tape.client.functions")
"""Where the log lines functions send (``logLines``) are written, as the JS client prints them."""


def print_log_lines(letter: str, path: str, lines: Any) -> None:
    """Log a function's ``logLines`` at INFO: ``[CONVEX Q(path)] [LOG] text`` (as the official JS client does)."""
    if not lines or not isinstance(lines, list) or not function_log.isEnabledFor(logging.INFO):
        return
    for line in lines:
        function_log.info("[CONVEX %s(%s)] %s", letter, path, line)

RequestKind = Literal["Mutation", "Action"]
SendFn = Callable[[dict[str, Any]], None]


class StartVersionMismatch(ProtocolError):
    """A Transition did not start at the client's version; the connection must be re-synced."""

    def __init__(self, message: str) -> None:
        super().__init__("Transition.startVersion", message)


# --- local subscribers ----------------------------------------------------------

class Sink:
    """The mailbox of one local subscriber: it holds only the *latest* result.

    When a new result arrives before the consumer took the previous one, the
    previous one is dropped (``skipped`` counts them): a slow consumer always
    gets the freshest state and never holds up the socket reader or any other
    subscriber. Errors (``QueryFailed``) take a slot like values do.
    """

    __slots__ = ("entry", "_core", "_item", "_is_error", "_full", "_event", "closed", "_end", "received", "skipped")

    def __init__(self, core: "ClientCore", entry: "QueryEntry") -> None:
        self.entry = entry
        self._core = core
        self._item: Any = None
        self._is_error = False
        self._full = False
        self._event = asyncio.Event()
        self.closed = False
        self._end: BaseException | None = None
        self.received = 0
        self.skipped = 0

    def offer(self, item: Any, is_error: bool) -> None:
        """Replace the pending result (a value, or an exception when ``is_error``)."""
        if self.closed:
            return
        if self._full:
            self.skipped += 1
        self._item, self._is_error, self._full = item, is_error, True
        self.received += 1
        self._event.set()

    def end(self, error: BaseException | None = None) -> None:
        """Stop the mailbox: readers get ``error`` (or StopAsyncIteration when None)."""
        if self.closed:
            return
        self.closed = True
        self._end = error
        self._item, self._full = None, False
        self._event.set()

    def release(self) -> None:
        """Detach from the client (removes the server-side query with the last subscriber)."""
        if not self.closed:
            self._core.unsubscribe(self)

    async def get(self, timeout: float | None = None) -> Any:
        """Wait for the next result and return it (or raise the query's error).

        Raises StopAsyncIteration once released, the end error (e.g.
        `ClientClosedError`) once the client closed, and TimeoutError when
        ``timeout`` passes - a timeout leaves the subscription intact, but a
        cancellation of the waiting task releases it.
        """
        try:
            while True:
                if self.closed:
                    if self._end is not None:
                        raise self._end
                    raise StopAsyncIteration
                if self._full:
                    item, is_error = self._item, self._is_error
                    self._item, self._full = None, False
                    if is_error:
                        raise item
                    return item
                self._event.clear()
                if timeout is None:
                    await self._event.wait()
                else:
                    async with asyncio.timeout(timeout):
                        await self._event.wait()
        except asyncio.CancelledError:
            self.release()
            raise


@dataclass(frozen=True)
class QueryInfo:
    """A snapshot of one row of the client's query table (for tests and introspection)."""

    query_id: int
    path: str
    args: dict[str, Any]
    subscribers: int
    has_result: bool


class QueryEntry:
    """One server-side query (one ``queryId``) and the local sinks sharing it."""

    __slots__ = ("query_id", "path", "args", "wire_args", "key", "sinks", "has_result", "is_error", "value",
                 "wire", "error_message", "error_data", "resync", "journal")

    def __init__(self, query_id: int, path: str, args: dict[str, Any], wire_args: dict[str, Any],
                 key: tuple[str, bytes]) -> None:
        self.query_id = query_id
        self.path = path
        self.args = args
        self.wire_args = wire_args
        self.key = key
        self.sinks: list[Sink] = []
        self.has_result = False
        self.is_error = False
        self.value: Any = None
        self.wire: Any = None
        self.error_message = ""
        self.error_data: Any = MISSING
        self.resync = False
        self.journal: str | None = None  # the server's journal for it (a paginated page's end)

    def add_modification(self) -> dict[str, Any]:
        """The ``Add`` entry of a ``ModifyQuerySet`` for this query (with its journal after a reconnect)."""
        add = {"type": "Add", "queryId": self.query_id, "udfPath": self.path, "args": [self.wire_args]}
        if self.journal is not None:
            add["journal"] = self.journal
        return add

    def make_error(self) -> FunctionError:
        """A fresh exception for the current ``QueryFailed`` state (one per consumer)."""
        return function_error("query", self.path, self.error_message, self.error_data)

    def feed(self, sink: Sink) -> None:
        """Hand the current result (if any) to one sink."""
        if not self.has_result:
            return
        if self.is_error:
            sink.offer(self.make_error(), True)
        else:
            sink.offer(self.value, False)

    def set_value(self, wire: Any, value: Any) -> None:
        """Record a ``QueryUpdated`` and push it to every sink.

        Right after a reconnect the server re-sends every query's value; one
        equal to what subscribers already have is not pushed again.
        """
        resync, self.resync = self.resync, False
        if resync and self.has_result and not self.is_error and wire == self.wire:
            return
        self.has_result, self.is_error = True, False
        self.value, self.wire = value, wire
        self.error_message, self.error_data = "", MISSING
        for sink in list(self.sinks):
            sink.offer(value, False)

    def set_error(self, message: str, data: Any) -> None:
        """Record a ``QueryFailed`` and push a fresh exception to every sink."""
        resync, self.resync = self.resync, False
        if resync and self.has_result and self.is_error and message == self.error_message and data == self.error_data:
            return
        self.has_result, self.is_error = True, True
        self.value, self.wire = None, None
        self.error_message, self.error_data = message, data
        for sink in list(self.sinks):
            sink.offer(self.make_error(), True)


# --- requests ---------------------------------------------------------------------

class PendingRequest:
    """A mutation or action waiting for its response (and, for mutations, its Transition)."""

    __slots__ = ("request_id", "kind", "path", "message", "future", "sent", "response_ts", "result")

    def __init__(self, request_id: int, kind: RequestKind, path: str, message: dict[str, Any],
                 future: "asyncio.Future[Any]") -> None:
        self.request_id = request_id
        self.kind = kind
        self.path = path
        self.message = message
        self.future = future
        self.sent = False
        self.response_ts: int | None = None
        self.result: Any = None

    def resolve(self, value: Any) -> None:
        """Complete the caller's future (ignored if the caller gave up)."""
        if not self.future.done():
            self.future.set_result(value)

    def reject(self, error: BaseException) -> None:
        """Fail the caller's future (ignored if the caller gave up)."""
        if not self.future.done():
            self.future.set_exception(error)


# --- the core ----------------------------------------------------------------------

def _field(message: dict[str, Any], key: str, kind: str) -> Any:
    """``message[key]``, or a `ProtocolError` naming ``kind.key`` when it is absent."""
    if key not in message:
        raise ProtocolError(f"{kind}.{key}", "missing required field")
    return message[key]


class ClientCore:
    """Query table, request table and version bookkeeping of one client session."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.version = StateVersion()
        self.query_set_version = 0
        self.max_observed_ts = 0
        self.by_id: dict[int, QueryEntry] = {}
        self.by_key: dict[tuple[str, bytes], QueryEntry] = {}
        self.requests: dict[int, PendingRequest] = {}
        self.closed_error: BaseException | None = None
        self._next_query_id = 0
        self._next_request_id = 0
        self._send_fn: SendFn | None = None
        self._pending_mods: list[tuple[str, QueryEntry]] = []
        self._flush_scheduled = False
        self._awaiting_ts: list[tuple[int, int]] = []
        self._chunks: dict[str, list[str]] = {}

    # -- connection lifecycle ----------------------------------------------------
    @property
    def is_connected(self) -> bool:
        """True while a socket is attached."""
        return self._send_fn is not None

    def connected(self, send: SendFn, connection_count: int, last_close_reason: str | None) -> None:
        """A socket opened: queue the handshake and re-sync everything through ``send``."""
        self._send_fn = send
        self.version = StateVersion()
        self._pending_mods.clear()
        self._chunks.clear()
        connect: dict[str, Any] = {
            "type": "Connect",
            "sessionId": self.session_id,
            "connectionCount": connection_count,
            "lastCloseReason": last_close_reason,
            "clientTs": int(time.time() * 1000),
        }
        if self.max_observed_ts > 0:
            connect["maxObservedTimestamp"] = encode_ts(self.max_observed_ts)
        send(connect)
        for entry in self.by_id.values():
            entry.resync = entry.has_result
        self.query_set_version = 1
        send({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1,
              "modifications": [entry.add_modification() for entry in self.by_id.values()]})
        for request in self.requests.values():
            if request.kind == "Mutation" or not request.sent:
                request.sent = True
                send(request.message)

    def disconnected(self) -> None:
        """The socket is gone: fail actions in flight; mutations wait for the next socket."""
        self._send_fn = None
        self._pending_mods.clear()
        self._chunks.clear()
        for request in list(self.requests.values()):
            if request.kind == "Action" and request.sent:
                del self.requests[request.request_id]
                request.reject(ConnectionLostError(
                    f"Connection lost while action {request.path} was in flight (actions are not retried)"))

    def close(self, error: BaseException) -> None:
        """Stop for good: every pending request and every sink gets ``error``."""
        if self.closed_error is not None:
            return
        self.closed_error = error
        self._send_fn = None
        self._pending_mods.clear()
        requests, self.requests = list(self.requests.values()), {}
        for request in requests:
            request.reject(error)
        for entry in list(self.by_id.values()):
            for sink in list(entry.sinks):
                sink.end(error)
            entry.sinks.clear()
        self.by_id.clear()
        self.by_key.clear()

    def _check_open(self) -> None:
        if self.closed_error is not None:
            raise ClientClosedError(f"the client is closed ({self.closed_error})")

    # -- outgoing ---------------------------------------------------------------------
    def _send(self, message: dict[str, Any]) -> None:
        """Send now (after any query-set changes queued before it); a no-op while disconnected."""
        self._flush_mods()
        if self._send_fn is not None:
            self._send_fn(message)

    def _queue_mod(self, kind: str, entry: QueryEntry) -> None:
        if self._send_fn is None:
            return  # the next handshake re-adds whatever is live then
        self._pending_mods.append((kind, entry))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_mods)

    def _flush_mods(self) -> None:
        """Send the query-set changes made since the last flush as one ``ModifyQuerySet``."""
        self._flush_scheduled = False
        if not self._pending_mods:
            return
        mods, self._pending_mods = self._pending_mods, []
        if self._send_fn is None:
            return
        body = [entry.add_modification() if kind == "Add" else {"type": "Remove", "queryId": entry.query_id}
                for kind, entry in mods]
        base = self.query_set_version
        self.query_set_version = base + 1
        self._send_fn({"type": "ModifyQuerySet", "baseVersion": base, "newVersion": base + 1, "modifications": body})

    # -- subscriptions ----------------------------------------------------------------
    def subscribe(self, path: str, args: dict[str, Any] | None) -> Sink:
        """A new local subscriber; shares the server-side query of an identical ``(path, args)``."""
        self._check_open()
        args = {} if args is None else args
        if not isinstance(args, dict):
            raise TypeError(f"query arguments must be a dict, got {type(args).__name__}")
        canonical = canonical_path(path, "path")
        wire_args = to_wire(args)
        key = (canonical, orjson.dumps(wire_args, option=orjson.OPT_SORT_KEYS))
        entry = self.by_key.get(key)
        if entry is None:
            entry = QueryEntry(self._next_query_id, canonical, args, wire_args, key)
            self._next_query_id += 1
            self.by_key[key] = entry
            self.by_id[entry.query_id] = entry
            self._queue_mod("Add", entry)
        sink = Sink(self, entry)
        entry.sinks.append(sink)
        entry.feed(sink)
        return sink

    def unsubscribe(self, sink: Sink) -> None:
        """Detach a sink; the last one leaving removes the query on the server."""
        sink.end(None)
        entry = sink.entry
        try:
            entry.sinks.remove(sink)
        except ValueError:
            return
        if entry.sinks or self.by_id.get(entry.query_id) is not entry:
            return
        del self.by_id[entry.query_id]
        del self.by_key[entry.key]
        for i, (kind, queued) in enumerate(self._pending_mods):
            if queued is entry and kind == "Add":
                del self._pending_mods[i]  # never reached the server: nothing to remove
                return
        self._queue_mod("Remove", entry)

    def query_table(self) -> list[QueryInfo]:
        """Snapshot of the live queries, by ``queryId``."""
        return [QueryInfo(e.query_id, e.path, e.args, len(e.sinks), e.has_result) for e in self.by_id.values()]

    # -- requests -----------------------------------------------------------------------
    def request(self, kind: RequestKind, path: str, args: dict[str, Any] | None) -> PendingRequest:
        """Register and (when connected) send a mutation or action; await its ``future``."""
        self._check_open()
        args = {} if args is None else args
        if not isinstance(args, dict):
            raise TypeError(f"{kind.lower()} arguments must be a dict, got {type(args).__name__}")
        if not isinstance(path, str) or not path:
            raise TypeError(f"{kind.lower()} path must be a non-empty string")
        request_id = self._next_request_id
        self._next_request_id += 1
        message = {"type": kind, "requestId": request_id, "udfPath": path, "args": [to_wire(args)]}
        request = PendingRequest(request_id, kind, path, message, asyncio.get_running_loop().create_future())
        self.requests[request_id] = request
        if self._send_fn is not None:
            request.sent = True
            self._send(message)
        return request

    def abandon(self, request: PendingRequest) -> None:
        """The caller stopped waiting: forget the request if it never left the client.

        A request already sent stays in the table: a mutation keeps being
        retried until the server answers, so its fate never becomes unknown.
        """
        if not request.sent:
            self.requests.pop(request.request_id, None)

    # -- incoming ---------------------------------------------------------------------
    def handle(self, message: Any) -> None:
        """Apply one decoded server message.

        Raises `StartVersionMismatch` (re-sync needed), `ProtocolError` /
        ``ValueError`` for malformed messages, and `FatalServerError` when the
        server gave up on this client.
        """
        if not isinstance(message, dict):
            raise ProtocolError("message", f"expected a JSON object, got {type(message).__name__}")
        kind = message.get("type")
        if kind == "Transition":
            self._on_transition(message)
        elif kind == "MutationResponse":
            self._on_mutation_response(message)
        elif kind == "ActionResponse":
            self._on_action_response(message)
        elif kind == "Ping":
            pass
        elif kind == "TransitionChunk":
            self._on_chunk(message)
        elif kind == "FatalError":
            raise FatalServerError(f"server sent FatalError: {message.get('error')}")
        elif kind == "AuthError":
            log.warning("server sent AuthError: %s", message.get("error"))
        else:
            log.warning("ignoring unknown server message type %r", kind)

    def _on_chunk(self, message: dict[str, Any]) -> None:
        transition_id = str(_field(message, "transitionId", "TransitionChunk"))
        part = _field(message, "partNumber", "TransitionChunk")
        total = _field(message, "totalParts", "TransitionChunk")
        parts = self._chunks.setdefault(transition_id, [])
        if part != len(parts):
            self._chunks.pop(transition_id, None)
            raise ProtocolError("TransitionChunk.partNumber", f"expected part {len(parts)}, got {part}")
        parts.append(str(_field(message, "chunk", "TransitionChunk")))
        if len(parts) == total:
            del self._chunks[transition_id]
            self.handle(orjson.loads("".join(parts)))

    def _on_transition(self, message: dict[str, Any]) -> None:
        start = StateVersion.from_json(_field(message, "startVersion", "Transition"), "Transition.startVersion")
        end = StateVersion.from_json(_field(message, "endVersion", "Transition"), "Transition.endVersion")
        if start != self.version:
            raise StartVersionMismatch(f"Transition starts at {start} but the client is at {self.version}")
        mods = message.get("modifications") or []
        if not isinstance(mods, list):
            raise ProtocolError("Transition.modifications", "expected an array")
        # Decode everything first so a malformed value leaves no half-applied Transition.
        decoded: list[tuple[QueryEntry, str, Any, Any]] = []
        journals: list[tuple[QueryEntry, str | None]] = []
        for i, mod in enumerate(mods):
            if not isinstance(mod, dict):
                raise ProtocolError(f"Transition.modifications[{i}]", "expected an object")
            entry = self.by_id.get(mod.get("queryId"))  # type: ignore[arg-type]
            kind = mod.get("type")
            if entry is None or kind == "QueryRemoved":
                continue  # removed locally already; ids are never reused
            print_log_lines("Q", entry.path, mod.get("logLines"))
            if kind == "QueryUpdated":
                wire = mod.get("value")
                decoded.append((entry, kind, wire, from_wire(wire, f"Transition.modifications[{i}].value")))
            elif kind == "QueryFailed":
                data = mod.get("errorData", MISSING)
                if data is not MISSING:
                    from_wire(data, f"Transition.modifications[{i}].errorData")
                decoded.append((entry, kind, str(mod.get("errorMessage", "")), data))
            else:
                log.warning("ignoring unknown query modification %r", kind)
                continue
            journal = mod.get("journal")
            if "journal" in mod and journal is not None and not isinstance(journal, str):
                raise ProtocolError(f"Transition.modifications[{i}].journal", "expected a string or null")
            if "journal" in mod:
                journals.append((entry, journal))
        self.version = end
        for entry, journal in journals:
            entry.journal = journal
        self.max_observed_ts = max(self.max_observed_ts, end.ts)
        for entry, kind, a, b in decoded:
            if kind == "QueryUpdated":
                entry.set_value(a, b)
            else:
                entry.set_error(a, b)
        self._resolve_mutations()

    def _resolve_mutations(self) -> None:
        heap = self._awaiting_ts
        while heap and heap[0][0] <= self.version.ts:
            _, request_id = heapq.heappop(heap)
            request = self.requests.get(request_id)
            if request is None or request.response_ts is None or request.response_ts > self.version.ts:
                continue
            del self.requests[request_id]
            request.resolve(request.result)

    def _on_mutation_response(self, message: dict[str, Any]) -> None:
        request = self.requests.get(_field(message, "requestId", "MutationResponse"))
        if request is None or request.kind != "Mutation":
            return
        print_log_lines("M", request.path, message.get("logLines"))
        if message.get("success") is True:
            ts = decode_ts(_field(message, "ts", "MutationResponse"), "MutationResponse.ts")
            request.result = from_wire(message.get("result"), "MutationResponse.result")
            request.response_ts = ts
            self.max_observed_ts = max(self.max_observed_ts, ts)
            if ts <= self.version.ts:
                del self.requests[request.request_id]
                request.resolve(request.result)
            else:
                heapq.heappush(self._awaiting_ts, (ts, request.request_id))
            return
        error = function_error("mutation", request.path, message.get("result"), message.get("errorData", MISSING))
        del self.requests[request.request_id]
        request.reject(error)

    def _on_action_response(self, message: dict[str, Any]) -> None:
        request = self.requests.get(_field(message, "requestId", "ActionResponse"))
        if request is None or request.kind != "Action":
            return
        print_log_lines("A", request.path, message.get("logLines"))
        if message.get("success") is True:
            value = from_wire(message.get("result"), "ActionResponse.result")
            del self.requests[request.request_id]
            request.resolve(value)
        else:
            error = function_error("action", request.path, message.get("result"), message.get("errorData", MISSING))
            del self.requests[request.request_id]
            request.reject(error)
