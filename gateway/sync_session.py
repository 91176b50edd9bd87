"""One WebSocket client speaking the Convex sync protocol.

The session reads client messages in order, keeps the client's
`{querySet, ts, identity}` version, and writes complete WebSocket frames
(`gateway.ws_frames`) straight to its transport while the socket keeps up;
otherwise through a bounded outgoing queue drained by its own writer task: a
client that stops reading is disconnected once the queue passes the
configured bound, and never slows anyone else down. Frames are bytes built
once, so sessions whose Transition for an applied batch is identical write
the same frame, and a MutationResponse and the Transition that must follow
it go out in one write.

Isolation (no client can stall, starve or fill up the server), with the
bounds in `gateway.config.ServerConfig`:

* The first message on a socket must be ``Connect`` (within
  ``connect_timeout`` seconds, else the socket is closed), and only the first:
  anything before it, a second ``Connect`` and binary frames get a
  ``FatalError`` (the protocol is JSON in text frames) and the socket closes.
* Budgets per connection: ``max_queries_per_session`` subscriptions and
  ``max_session_args_bytes`` of subscription arguments (each ``Add``'s args
  counted as compact JSON); passing either is a ``FatalError``
  (``TooManyQueries`` / ``QueryArgsTooLarge``), like any deterministic client
  error. Outgoing data queued for a client that does not read is bounded by
  ``max_send_buffer_bytes`` (then close code 4008, the client resyncs on
  reconnect). At most ``max_inflight_requests_per_session`` Mutations/Actions
  run at once per connection: beyond that the session stops reading its
  socket until one finishes (TCP backpressure, no error).
* A global guard: once all subscriptions together hold
  ``max_total_args_bytes`` of arguments, a new subscription is refused with a
  ``QueryFailed`` whose message starts ``"Overloaded: "``. That is what the
  official JS client handles best: the error surfaces for that one query
  (``onUpdate``'s ``onError``, a rejected ``client.query``) while the socket
  and the client's other queries keep working, whereas a ``FatalError`` would
  stop the client for good. The refused query id stays in the client's query
  set (a later ``Remove`` of it is valid); to retry, the client unsubscribes
  and subscribes again or reconnects.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WSMsgType, web

from engine.context import ADMIN_IDENTITY
from engine.client_values import error_data_wire, result_wire
from engine.errors import AppError, EngineError, OutcomeUnknown
from engine.function_logs import lines_of
from gateway.auth import AuthFailure, Verified, acting_identity, verifier_for
from gateway.config import NODE_KEY
from gateway import protocol as p
from gateway.session_lane import LaneStep, SessionLane
from gateway.subscriptions import SharedQuery, SlowQuery
from gateway.ws_frames import query_updated_bytes, text_frame, transition_payload

if TYPE_CHECKING:
    from gateway.node import Node

log = logging.getLogger("tape.sync")

CLOSE_TIMEOUT = 1.0  # seconds a peer gets to answer our close frame
DIRECT_WRITE_LIMIT = 64 << 10  # write frames directly while the socket's buffer is below this



def _modification(query_id: int, shared: SharedQuery) -> bytes:
    logged = shared.log_json != b"[]"
    if shared.error_message is None:
        return query_updated_bytes(query_id, shared.value_json, shared.journal, shared.log_json)
    message = p.query_failed(query_id, shared.error_message, journal=shared.journal)
    if logged:
        message["logLines"] = orjson.Fragment(shared.log_json)
    if shared.error_data_json is not None:
        message["errorData"] = orjson.Fragment(shared.error_data_json)
    return orjson.dumps(message)


_last_overload_warning = 0.0


def _warn_overloaded(held: int, limit: int) -> None:
    """Log refused subscriptions at most once every 10 s (a flood of them must not flood the log)."""
    global _last_overload_warning
    now = time.monotonic()
    if now - _last_overload_warning >= 10.0:
        _last_overload_warning = now
        log.warning("refusing new subscriptions: they would hold more than %d bytes of arguments (held: %d)",
                    limit, held)


def error_fields(exc: BaseException, path: str | None = None, app: Any = None) -> tuple[str, Any]:
    """(message, errorData or MISSING) for a function error sent to a client.

    A function ``path`` longer than `protocol.MAX_QUOTED_CHARS` quoted in the
    message is cut short (see `protocol.elide`). With the `app`, errorData is
    Convex JSON already, under the int/float rule (`engine.client_values`).
    """
    text = str(exc) if path is None else p.elide(str(exc), path)
    if isinstance(exc, AppError):
        return text, exc.data if app is None else p.Wire(error_data_wire(app, exc.data))
    return text, p.MISSING


class SyncSession:
    """Protocol state and I/O for one WebSocket connection."""

    def __init__(self, node: "Node", ws: web.WebSocketResponse, transport: asyncio.Transport | None = None) -> None:
        self.node = node
        self.ws = ws
        self._transport = transport
        self.versions = p.VersionTracker()
        self.session_id: str | None = None
        self.identity: dict[str, Any] | None = None
        self.queries: dict[int, SharedQuery] = {}
        self._lane: SessionLane | None = None  # set once a query of this session proved slow (see session_lane)
        self.connected = False  # a Connect arrived on this socket
        self._failed = False  # a FatalError went out: the socket is closing, ignore what else arrives
        self.args_bytes = 0  # compact-JSON bytes of the args of this session's subscriptions
        self._args_sizes: dict[int, int] = {}  # query id -> its args bytes
        self._refused: set[int] = set()  # query ids refused as "Overloaded" (in the client's set, not subscribed)
        self._inflight = 0  # Mutations/Actions running
        self._inflight_room = asyncio.Event()
        self._inflight_room.set()
        self._out: deque[bytes] = deque()
        self._out_bytes = 0
        self._wake = asyncio.Event()
        self._sending = False
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.last_sent = time.monotonic()
        self._auth_pending: asyncio.Task[None] | None = None  # an Authenticate waiting for a provider's keys
        self._token_expiry: asyncio.TimerHandle | None = None  # fires when the user's token expires

    # -- outgoing ---------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Send one message (a JSON payload)."""
        self.send_frame(text_frame(data))

    def send_message(self, message: dict[str, Any]) -> None:
        self.send_frame(text_frame(orjson.dumps(message)))

    def send_frame(self, frame: bytes) -> None:
        """Write complete frame bytes: straight to the socket when it keeps up, else through the bounded queue.

        Frames are built once by the caller (a frame shared by many sessions is
        the same bytes object). Disconnects the client if its queue passes the bound.
        """
        if self._closed:
            return
        self.node.pushed_bytes += len(frame)
        transport = self._transport
        if not self._out and not self._sending and transport is not None \
                and transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT:
            if transport.is_closing() or self.ws.closed:
                self._closed = True
                self._wake.set()
                return
            transport.write(frame)
            self.last_sent = time.monotonic()
            return
        self._out.append(frame)
        self._out_bytes += len(frame)
        if self._out_bytes > self.node.config.max_send_buffer_bytes:
            log.warning("disconnecting slow client %s: %d bytes queued", self.session_id, self._out_bytes)
            self._out.clear()
            self._out_bytes = 0
            self.close(4008, "SlowClient: send buffer exceeded; reconnect to resync")
            return
        self._wake.set()

    async def _writer(self) -> None:
        """Drain the queue: write what is queued, then wait until the socket's buffer drains."""
        transport = self._transport
        try:
            while not self._closed:
                await self._wake.wait()
                self._wake.clear()
                while self._out and not self._closed:
                    if transport is None or transport.is_closing() or self.ws.closed:
                        return
                    frames: list[bytes] = []
                    size = 0
                    while self._out and size < DIRECT_WRITE_LIMIT:
                        frame = self._out.popleft()
                        frames.append(frame)
                        size += len(frame)
                    self._out_bytes -= size
                    self._sending = True
                    try:
                        transport.write(b"".join(frames))
                        self.last_sent = time.monotonic()
                        if transport.get_write_buffer_size() >= DIRECT_WRITE_LIMIT:
                            await self._drain()
                    finally:
                        self._sending = False
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass

    async def _drain(self) -> None:
        """Wait until the transport's buffer falls below the direct-write limit.

        Only the public transport API is used (aiohttp's own pause/resume hooks
        are private): the buffer is polled, from 1 ms up to 20 ms between looks.
        This runs only for a client that has fallen behind, so polling costs
        nothing on the common path.
        """
        delay = 0.001
        transport = self._transport
        while transport is not None and not transport.is_closing() \
                and transport.get_write_buffer_size() >= DIRECT_WRITE_LIMIT:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._inflight_room.set()
        self._release_queries()
        task = asyncio.get_running_loop().create_task(self._close(code, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, code: int, reason: str) -> None:
        """Close politely, but abort the connection if the peer does not complete the handshake."""
        try:
            # A close reason is at most 123 bytes of valid UTF-8: never cut a character in two.
            message = reason.encode()[:120].decode("utf-8", "ignore").encode()
            await asyncio.wait_for(self.ws.close(code=code, message=message), CLOSE_TIMEOUT)
            return
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass
        if self._transport is not None:
            self._transport.abort()  # a peer that never reads would hold the close handshake forever

    def _release_queries(self) -> None:
        manager = self.node.subscriptions
        for qid, shared in list(self.queries.items()):
            manager.unsubscribe(self, shared, qid)
        self.queries.clear()
        if self._lane is not None:
            self._lane.close()
        self._refused.clear()
        manager.release_args(self.args_bytes)
        self.args_bytes = 0
        self._args_sizes.clear()

    def fatal(self, error: str) -> None:
        """Send FatalError and close, as the protocol prescribes for a broken client.

        Messages still arriving before the close completes are ignored.
        """
        if not self._closed and not self._failed:
            self._failed = True
            self.send_message(p.fatal_error_message(error))
            task = asyncio.get_running_loop().create_task(self._flush_then_close(1008, error))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush_then_close(self, code: int, reason: str) -> None:
        for _ in range(100):
            if not self._out:
                break
            await asyncio.sleep(0.01)
        self.close(code, reason[:100])

    # -- transitions ---------------------------------------------------------------
    def _transition_frame(self, ts: int, modifications: list[bytes]) -> bytes:
        """The next Transition's frame, ending at `ts` (never below the last sent ts); records it as sent."""
        v = self.versions
        sent = v.sent
        start = (sent.query_set, sent.ts, sent.identity)
        end = (v.query_set_version, max(ts, sent.ts), v.identity_version)
        if end != start:
            v.sent = p.StateVersion(*end)
        return text_frame(transition_payload(start, end, modifications))

    def _transition(self, ts: int, modifications: list[bytes]) -> None:
        if self._lane is not None:  # everything versioned goes through the lane, in order
            self._lane.submit(LaneStep(self.versions.query_set_version, self.versions.identity_version,
                                       mods=list(modifications), min_ts=ts))
            return
        self.send_frame(self._transition_frame(ts, modifications))

    def transition_frame_at(self, ts: int, modifications: list[bytes], query_set: int, identity: int) -> bytes:
        """A Transition frame ending at the given versions (a lane step's); records it as sent."""
        v = self.versions
        sent = v.sent
        start = (sent.query_set, sent.ts, sent.identity)
        end = (max(query_set, sent.query_set), max(ts, sent.ts), max(identity, sent.identity))
        if end != start:
            v.sent = p.StateVersion(*end)
        return text_frame(transition_payload(start, end, modifications))

    # -- serving off the loop ------------------------------------------------------
    @property
    def off_loop(self) -> bool:
        """Whether this session is served by its own lane (see `gateway.session_lane`)."""
        return self._lane is not None

    def go_off_loop(self) -> None:
        """Move every query of this session to a lane of its own (idempotent; re-evaluates them all)."""
        manager = self.node.subscriptions
        if self._lane is None:
            if self._closed:
                return
            log.info("session %s holds a slow query: serving it off the event loop from now on", self.session_id)
            self._lane = SessionLane(self)
        for qid, shared in list(self.queries.items()):
            manager.unsubscribe(self, shared, qid)
            self._lane.adopt(qid, shared.path, shared.args, None, shared.journal)
        self.queries.clear()
        for qid in list(self._lane.queries):
            self._lane.mark_dirty(qid)

    def lane_dirty(self, query_id: int) -> None:
        if self._lane is not None:
            self._lane.mark_dirty(query_id)

    def deliver(self, updates: list[tuple[int, SharedQuery]], ts: int,
                frames: dict[Any, Any] | None = None) -> None:
        """Called by the subscription manager: these queries changed at `ts`.

        `frames` is shared by every session updated for one batch of records:
        sessions whose Transition would be byte-identical (same versions, same
        query ids and shared results) reuse one frame.
        """
        if self._lane is not None:
            return  # its lane re-evaluates the queries it holds (they left the shared executions)
        if frames is None:
            self._transition(ts, [_modification(qid, shared) for qid, shared in updates])
            return
        v = self.versions
        sent = v.sent
        start = (sent.query_set, sent.ts, sent.identity)
        end = (v.query_set_version, max(ts, sent.ts), v.identity_version)
        key = (start, end, *[(qid, id(shared)) for qid, shared in updates])
        built = frames.get(key)
        if built is None:
            built = frames[key] = (text_frame(transition_payload(
                start, end, [_modification(qid, shared) for qid, shared in updates])), p.StateVersion(*end))
        if end != start:
            v.sent = built[1]  # immutable: sessions sharing the frame share the version object
        self.send_frame(built[0])

    def advance_to(self, ts: int) -> None:
        """Send a Transition at ≥ ts after a MutationResponse.

        Clients resolve a mutation only when a Transition reaching its ts arrives
        *after* the response, so one is sent even when the data already went out.
        """
        self._transition(max(ts, self.node.runtime.projection.applied_ts), [])

    def confirm(self) -> None:
        """Send a (possibly empty) Transition: the Rust client completes requests only when one arrives."""
        self._transition(self.node.runtime.projection.applied_ts, [])

    # -- incoming ---------------------------------------------------------------
    async def run(self) -> None:
        """Serve the connection until it closes."""
        loop = asyncio.get_running_loop()
        writer = loop.create_task(self._writer())
        config = self.node.config
        connect_timer = loop.call_later(config.connect_timeout, self._connect_expired) \
            if config.connect_timeout > 0 else None
        self.node.sessions.add(self)
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    self.handle_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.fatal("Invalid message: binary frame; send each message as JSON in a text frame")
                elif msg.type == WSMsgType.ERROR:
                    log.info("websocket error: %s", self.ws.exception())
                    break
                if self._closed:
                    break
                if self._auth_pending is not None:
                    await asyncio.gather(self._auth_pending, return_exceptions=True)  # read on once it is settled
                    if self._closed:
                        break
                if not self._inflight_room.is_set():
                    await self._inflight_room.wait()  # stop reading: TCP backpressure on a request flood
                    if self._closed:
                        break
        finally:
            if connect_timer is not None:
                connect_timer.cancel()
            if self._token_expiry is not None:
                self._token_expiry.cancel()
            self._closed = True
            self._wake.set()
            self.node.sessions.discard(self)
            self._release_queries()
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    def _connect_expired(self) -> None:
        if not self.connected and not self._closed:
            timeout = self.node.config.connect_timeout
            log.info("closing a WebSocket that sent no Connect within %g s", timeout)
            self.close(1008, f"ConnectTimeout: no Connect message within {timeout:g} s")

    def handle_text(self, data: str | bytes) -> None:
        if self._failed:
            return
        try:
            message = p.parse_client_message_text(data)
        except p.ProtocolError as exc:
            self.fatal(f"Invalid message: {exc}")
            return
        if isinstance(message, p.Connect):
            if self.connected:
                self.fatal("Invalid message: a second Connect on the same socket (Connect is sent once, first)")
                return
            self.connected = True
            self.session_id = message.session_id
            return
        if not self.connected:
            self.fatal(f"Invalid message: {message.type} before Connect (the first message on a socket must be Connect)")
            return
        try:
            if isinstance(message, p.ModifyQuerySet):
                self._modify_query_set(message)
            elif isinstance(message, p.Mutation):
                self._spawn_request(self._mutation(message))
            elif isinstance(message, p.Action):
                self._spawn_request(self._action(message))
            elif isinstance(message, p.Authenticate):
                self._authenticate(message)
            # Event: telemetry only, nothing to answer.
        except p.ProtocolError as exc:
            self.fatal(f"Invalid message: {exc}")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn_request(self, coro: Any) -> None:
        """Run a Mutation/Action; at the in-flight limit the reader pauses until one finishes."""
        self._inflight += 1
        if self._inflight >= self.node.config.max_inflight_requests_per_session:
            self._inflight_room.clear()
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._request_done)

    def _request_done(self, task: "asyncio.Task[Any]") -> None:
        self._tasks.discard(task)
        self._inflight -= 1
        if self._inflight < self.node.config.max_inflight_requests_per_session:
            self._inflight_room.set()

    def _modify_query_set(self, message: p.ModifyQuerySet) -> None:
        self.versions.apply_modify_query_set(message)
        if self._lane is None and any(isinstance(c, p.AddQuery) and self.node.runtime.is_slow(c.udf_path)
                                      for c in message.modifications):
            self.go_off_loop()
        manager = self.node.subscriptions
        mods: list[bytes] = []  # what the Transition carries
        for change in message.modifications:
            qid = change.query_id
            if isinstance(change, p.AddQuery):
                verdict = self._admit(change, mods)
                if verdict == "fatal":
                    return
                if verdict == "refused":
                    continue
                if self._lane is None:
                    try:
                        shared = manager.subscribe(self, qid, change.udf_path, change.args, self.identity,
                                                   change.journal)
                        self.queries[qid] = shared
                        mods.append(_modification(qid, shared))
                    except SlowQuery:
                        # This query, everything the session holds and the rest of the message move off the
                        # loop; results already computed for this message are sent by the lane instead.
                        self.go_off_loop()
                        mods = [m for m in mods if not m.startswith(b'{"type":"QueryUpdated"')]
                if self._lane is not None:
                    self._lane.add(qid, change.udf_path, change.args, change.journal)
                manager.hold_args(change.args_bytes)
                self.args_bytes += change.args_bytes
                self._args_sizes[qid] = change.args_bytes
            else:
                shared = self.queries.pop(qid, None)
                if shared is not None:
                    manager.unsubscribe(self, shared, qid)
                elif self._lane is not None and qid in self._lane.queries:
                    self._lane.remove(qid)
                elif qid in self._refused:
                    self._refused.discard(qid)
                else:
                    raise p.ProtocolError("ModifyQuerySet.modifications", f"query {qid} is not subscribed")
                size = self._args_sizes.pop(qid, 0)
                manager.release_args(size)
                self.args_bytes -= size
                mods.append(orjson.dumps(p.query_removed(qid)))
        if self._lane is not None:
            self._lane.submit(LaneStep(self.versions.query_set_version, self.versions.identity_version, mods=mods))
            return
        self._transition(self.node.runtime.projection.applied_ts, mods)

    def _held_query_count(self) -> int:
        lane = len(self._lane.queries) if self._lane is not None else 0
        return len(self.queries) + lane + len(self._refused)

    def _admit(self, change: p.AddQuery, mods: list[bytes]) -> str:
        """Check an Add against the budgets: "ok", "refused" (an Overloaded QueryFailed is in `mods`) or "fatal"."""
        config = self.node.config
        manager = self.node.subscriptions
        qid = change.query_id
        if qid in self.queries or qid in self._refused or (self._lane is not None and qid in self._lane.queries):
            raise p.ProtocolError("ModifyQuerySet.modifications", f"query {qid} is already subscribed")
        if self._held_query_count() >= config.max_queries_per_session:
            self.fatal(f"TooManyQueries: a connection may hold at most {config.max_queries_per_session} queries")
            return "fatal"
        size = change.args_bytes
        if self.args_bytes + size > config.max_session_args_bytes:
            self.fatal(f"QueryArgsTooLarge: a connection's subscriptions may hold at most "
                       f"{config.max_session_args_bytes} bytes of arguments; query {qid} would bring "
                       f"them to {self.args_bytes + size}")
            return "fatal"
        if manager.args_bytes + size > config.max_total_args_bytes:
            _warn_overloaded(manager.args_bytes, config.max_total_args_bytes)
            self._refused.add(qid)
            mods.append(orjson.dumps(p.query_failed(qid, (
                "Overloaded: the server holds as many subscription arguments as it may "
                f"({config.max_total_args_bytes} bytes); try this query again later"))))
            return "refused"
        return "ok"

    def _authenticate(self, message: p.Authenticate) -> None:
        """Set the identity (``User`` token, ``Admin`` key, maybe acting as a user) or clear it (``None``).

        A new identity re-runs every subscription under it in one Transition
        ending at identity version ``baseVersion + 1``; the same identity again
        (a refreshed token of the same user) just confirms the version. A token
        or key that is not accepted gets an ``AuthError`` and the socket closes
        (4001), as Convex does. While a provider's keys are being fetched the
        session reads no further message, so everything after the Authenticate
        runs under its outcome.
        """
        self.versions.apply_authenticate(message)
        base = message.base_version
        if message.token_type == "None":
            self._set_identity(None, None)
            return
        if message.token_type == "Admin":
            if not self.node.admin.check(message.value):
                self._auth_failed("Invalid admin key", base)
                return
            if message.impersonating is None:
                self._set_identity(ADMIN_IDENTITY, None)
                return
            try:
                self._set_identity(acting_identity(message.impersonating), None)
            except AuthFailure as exc:
                self._auth_failed(str(exc), base)
            return
        token = message.value or ""
        verifier = verifier_for(self.node)
        try:
            verified = verifier.verify_now(token)
        except AuthFailure as exc:
            self._auth_failed(str(exc), base, attempted=True)
            return
        if verified is not None:
            self._set_identity(verified.identity, verified)
            return
        task = asyncio.get_running_loop().create_task(self._authenticate_later(token, base))
        self._auth_pending = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _authenticate_later(self, token: str, base: int) -> None:
        """Verify a token whose provider keys must be fetched first; the reader waits for this."""
        try:
            verified = await verifier_for(self.node).verify(token)
        except AuthFailure as exc:
            if not self._closed:
                self._auth_failed(str(exc), base, attempted=True)
            return
        finally:
            self._auth_pending = None
        if not self._closed:
            self._set_identity(verified.identity, verified)

    def _set_identity(self, identity: dict[str, Any] | None, verified: Verified | None) -> None:
        """Adopt `identity` for the identity version just recorded; watch a user token's expiry."""
        if self._token_expiry is not None:
            self._token_expiry.cancel()
            self._token_expiry = None
        if verified is not None:
            delay = max(0.0, verified.expires_at - time.time())
            self._token_expiry = asyncio.get_running_loop().call_later(delay, self._token_expired)
        if identity != self.identity:
            self.identity = identity
            self._resubscribe_all()
        else:
            self._transition(self.node.runtime.projection.applied_ts, [])

    def _token_expired(self) -> None:
        """The user's token expired while in use: AuthError (the client fetches a fresh token), then close."""
        self._token_expiry = None
        if not self._closed and not self._failed:
            self._auth_failed("the token has expired", self.versions.identity_version - 1,
                              attempted=False)

    def _auth_failed(self, error: str, base_version: int, *, attempted: bool | None = None) -> None:
        """Send ``AuthError`` for the Authenticate at `base_version`, then close with 4001 once it is out.

        `attempted` is ``authUpdateAttempted``: True when a token the client
        just sent was refused (its JS client then fetches a fresh token and
        retries, a bounded number of times), False when the token in use
        expired.
        """
        if self._closed or self._failed:
            return
        self._failed = True
        self.send_message(p.auth_error_message(error, base_version, auth_update_attempted=attempted))
        task = asyncio.get_running_loop().create_task(self._flush_then_close(4001, f"AuthError: {error}"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _resubscribe_all(self) -> None:
        """The identity changed: every query runs again under the new one, in one Transition."""
        manager = self.node.subscriptions
        mods = []
        if self._lane is None:
            for qid, shared in list(self.queries.items()):
                manager.unsubscribe(self, shared, qid)
                try:
                    fresh = manager.subscribe(self, qid, shared.path, shared.args, self.identity, shared.journal)
                except SlowQuery:
                    self.queries[qid] = shared  # (moved to the lane with the others, re-run there)
                    self.go_off_loop()
                    break
                self.queries[qid] = fresh
                mods.append(_modification(qid, fresh))
        if self._lane is not None:
            self._lane.submit(LaneStep(self.versions.query_set_version, self.versions.identity_version,
                                       reevaluate_all=True))
            return
        self._transition(self.node.runtime.projection.applied_ts, mods)

    async def _mutation(self, message: p.Mutation) -> None:
        try:
            outcome = await self.node.runtime.run_mutation(
                message.udf_path, message.args, identity=self.identity,
                session_id=self.session_id, request_id=message.request_id)
        except OutcomeUnknown as exc:
            # Neither success nor failure would be true. Closing the socket makes the official clients
            # reconnect and resend the mutation with the same request id: that retry gets the true answer.
            log.warning("mutation %s (session %s, request %s): %s; closing the socket so the client resends it",
                        message.udf_path, self.session_id, message.request_id, exc)
            self.close(1011, "MutationOutcomeUnknown: the commit log did not acknowledge a mutation in time; "
                             "reconnect and resend it")
            return
        except (AppError, EngineError) as exc:
            text, data = error_fields(exc, message.udf_path, self.node.runtime.app)
            self.send_message(p.mutation_failure_message(message.request_id, text, error_data=data,
                                                         log_lines=lines_of(exc)))
            self.confirm()
            return
        except Exception as exc:  # pragma: no cover - defensive: never leave a client hanging
            log.exception("mutation %s failed unexpectedly", message.udf_path)
            self.send_message(p.mutation_failure_message(message.request_id, f"Server Error: {type(exc).__name__}"))
            self.confirm()
            return
        # The response and the Transition reaching its ts go out in one write.
        value = p.Wire(result_wire(self.node.runtime.app, message.udf_path, outcome.value))
        response = text_frame(orjson.dumps(p.mutation_success_message(message.request_id, value, outcome.ts,
                                                                      log_lines=outcome.log_lines)))
        ts = max(outcome.ts, self.node.runtime.projection.applied_ts)
        if self._lane is not None:
            self.send_frame(response)
            self._transition(ts, [])  # the lane's next Transition reaches ts
            return
        self.send_frame(response + self._transition_frame(ts, []))

    async def _action(self, message: p.Action) -> None:
        runtime = self.node.runtime
        try:
            outcome = await runtime.call_action(message.udf_path, message.args, identity=self.identity)
        except (AppError, EngineError) as exc:
            text, data = error_fields(exc, message.udf_path, runtime.app)
            self.send_message(p.action_failure_message(message.request_id, text, error_data=data,
                                                       log_lines=lines_of(exc)))
            self.confirm()
            return
        except Exception as exc:  # pragma: no cover
            log.exception("action %s failed unexpectedly", message.udf_path)
            self.send_message(p.action_failure_message(message.request_id, f"Server Error: {type(exc).__name__}"))
            self.confirm()
            return
        value = p.Wire(result_wire(runtime.app, message.udf_path, outcome.value))
        self.send_message(p.action_success_message(message.request_id, value, log_lines=outcome.log_lines))
        self.confirm()


async def handle_sync(request: web.Request) -> web.StreamResponse:
    """aiohttp handler for `/api/sync` and `/api/{version}/sync`."""
    node: Node = request.app[NODE_KEY]
    if len(node.sessions) >= node.config.max_sessions:
        raise web.HTTPServiceUnavailable(text="Overloaded: too many connections")
    ws = web.WebSocketResponse(max_msg_size=node.config.max_message_bytes, heartbeat=None, compress=False)
    await ws.prepare(request)
    session = SyncSession(node, ws, request.transport)  # type: ignore[arg-type]
    await session.run()
    return ws
