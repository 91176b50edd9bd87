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
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WSMsgType, web

from engine.errors import AppError, EngineError
from gateway.config import NODE_KEY
from gateway import protocol as p
from gateway.subscriptions import SharedQuery
from gateway.ws_frames import text_frame, transition_payload

if TYPE_CHECKING:
    from gateway.node import Node

log = logging.getLogger("tape.sync")

CLOSE_TIMEOUT = 1.0  # seconds a peer gets to answer our close frame
DIRECT_WRITE_LIMIT = 64 << 10  # write frames directly while the socket's buffer is below this

_UPDATED = b'{"type":"QueryUpdated","queryId":%d,"value":%s,"logLines":[],"journal":null}'


def _modification(query_id: int, shared: SharedQuery) -> bytes:
    if shared.error_message is None:
        return _UPDATED % (query_id, shared.value_json)
    message = p.query_failed(query_id, shared.error_message)
    if shared.error_data_json is not None:
        message["errorData"] = orjson.Fragment(shared.error_data_json)
    return orjson.dumps(message)


def error_fields(exc: BaseException) -> tuple[str, Any]:
    """(message, errorData or MISSING) for a function error sent to a client."""
    if isinstance(exc, AppError):
        return str(exc), exc.data
    return str(exc), p.MISSING


class SyncSession:
    """Protocol state and I/O for one WebSocket connection."""

    def __init__(self, node: "Node", ws: web.WebSocketResponse, transport: Any = None, protocol: Any = None) -> None:
        self.node = node
        self.ws = ws
        self._transport = transport
        self._protocol = protocol if hasattr(protocol, "_drain_helper") else None
        self.versions = p.VersionTracker()
        self.session_id: str | None = None
        self.identity: dict[str, Any] | None = None
        self.queries: dict[int, SharedQuery] = {}
        self._out: deque[bytes] = deque()
        self._out_bytes = 0
        self._wake = asyncio.Event()
        self._sending = False
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.last_sent = time.monotonic()

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
        """Wait until the transport has resumed writing (aiohttp's protocol tracks pause/resume)."""
        protocol = self._protocol
        if protocol is not None:
            await protocol._drain_helper()
        else:  # no flow-control hooks: poll the buffer
            while self._transport is not None and not self._transport.is_closing() \
                    and self._transport.get_write_buffer_size() >= DIRECT_WRITE_LIMIT:
                await asyncio.sleep(0.005)

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._release_queries()
        task = asyncio.get_running_loop().create_task(self._close(code, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, code: int, reason: str) -> None:
        """Close politely, but abort the connection if the peer does not complete the handshake."""
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()[:120]), CLOSE_TIMEOUT)
            return
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass
        if self._transport is not None:
            self._transport.abort()  # a peer that never reads would hold the close handshake forever

    def _release_queries(self) -> None:
        for qid, shared in list(self.queries.items()):
            self.node.subscriptions.unsubscribe(self, shared, qid)
        self.queries.clear()

    def fatal(self, error: str) -> None:
        """Send FatalError and close, as the protocol prescribes for a broken client."""
        if not self._closed:
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
        self.send_frame(self._transition_frame(ts, modifications))

    def deliver(self, updates: list[tuple[int, SharedQuery]], ts: int,
                frames: dict[Any, Any] | None = None) -> None:
        """Called by the subscription manager: these queries changed at `ts`.

        `frames` is shared by every session updated for one batch of records:
        sessions whose Transition would be byte-identical (same versions, same
        query ids and shared results) reuse one frame.
        """
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
        writer = asyncio.get_running_loop().create_task(self._writer())
        self.node.sessions.add(self)
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT or msg.type == WSMsgType.BINARY:
                    self.handle_text(msg.data)
                    if self._closed:
                        break
                elif msg.type == WSMsgType.ERROR:
                    log.info("websocket error: %s", self.ws.exception())
                    break
        finally:
            self._closed = True
            self._wake.set()
            self.node.sessions.discard(self)
            self._release_queries()
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    def handle_text(self, data: str | bytes) -> None:
        try:
            message = p.parse_client_message_text(data)
        except p.ProtocolError as exc:
            self.fatal(f"Invalid message: {exc}")
            return
        try:
            if isinstance(message, p.ModifyQuerySet):
                self._modify_query_set(message)
            elif isinstance(message, p.Mutation):
                self._spawn(self._mutation(message))
            elif isinstance(message, p.Action):
                self._spawn(self._action(message))
            elif isinstance(message, p.Connect):
                self.session_id = message.session_id
            elif isinstance(message, p.Authenticate):
                self._authenticate(message)
            # Event: telemetry only, nothing to answer.
        except p.ProtocolError as exc:
            self.fatal(f"Invalid message: {exc}")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _modify_query_set(self, message: p.ModifyQuerySet) -> None:
        self.versions.apply_modify_query_set(message)
        manager = self.node.subscriptions
        mods: list[bytes] = []
        for change in message.modifications:
            if isinstance(change, p.AddQuery):
                if change.query_id in self.queries:
                    raise p.ProtocolError("ModifyQuerySet.modifications", f"query {change.query_id} is already subscribed")
                if len(self.queries) >= self.node.config.max_queries_per_session:
                    self.fatal(f"TooManyQueries: a connection may hold at most {self.node.config.max_queries_per_session} queries")
                    return
                shared = manager.subscribe(self, change.query_id, change.udf_path, change.args, self.identity)
                self.queries[change.query_id] = shared
                mods.append(_modification(change.query_id, shared))
            else:
                shared = self.queries.pop(change.query_id, None)
                if shared is None:
                    raise p.ProtocolError("ModifyQuerySet.modifications", f"query {change.query_id} is not subscribed")
                manager.unsubscribe(self, shared, change.query_id)
                mods.append(orjson.dumps(p.query_removed(change.query_id)))
        self._transition(self.node.runtime.projection.applied_ts, mods)

    def _authenticate(self, message: p.Authenticate) -> None:
        if message.token_type == "Admin":
            if not self.node.admin.check(message.value):
                self.versions.apply_authenticate(message)
                self.send_message(p.auth_error_message("Invalid admin key", message.base_version))
                self.close(4001, "AuthError: invalid admin key")
                return
            identity: dict[str, Any] | None = {"admin": True}
        elif message.token_type == "User":
            self.versions.apply_authenticate(message)
            self.send_message(p.auth_error_message(
                "This deployment has no auth provider configured; user tokens cannot be verified",
                message.base_version, auth_update_attempted=True))
            self.close(4001, "AuthError: no auth provider configured")
            return
        else:
            identity = None
        self.versions.apply_authenticate(message)
        if identity != self.identity:
            self.identity = identity
            self._resubscribe_all()
        else:
            self._transition(self.node.runtime.projection.applied_ts, [])

    def _resubscribe_all(self) -> None:
        manager = self.node.subscriptions
        mods = []
        for qid, shared in list(self.queries.items()):
            manager.unsubscribe(self, shared, qid)
            fresh = manager.subscribe(self, qid, shared.path, shared.args, self.identity)
            self.queries[qid] = fresh
            mods.append(_modification(qid, fresh))
        self._transition(self.node.runtime.projection.applied_ts, mods)

    async def _mutation(self, message: p.Mutation) -> None:
        try:
            outcome = await self.node.runtime.run_mutation(
                message.udf_path, message.args, identity=self.identity,
                session_id=self.session_id, request_id=message.request_id)
        except (AppError, EngineError) as exc:
            text, data = error_fields(exc)
            self.send_message(p.mutation_failure_message(message.request_id, text, error_data=data))
            self.confirm()
            return
        except Exception as exc:  # pragma: no cover - defensive: never leave a client hanging
            log.exception("mutation %s failed unexpectedly", message.udf_path)
            self.send_message(p.mutation_failure_message(message.request_id, f"Server Error: {type(exc).__name__}"))
            self.confirm()
            return
        # The response and the Transition reaching its ts go out in one write.
        response = text_frame(orjson.dumps(p.mutation_success_message(message.request_id, outcome.value, outcome.ts)))
        ts = max(outcome.ts, self.node.runtime.projection.applied_ts)
        self.send_frame(response + self._transition_frame(ts, []))

    async def _action(self, message: p.Action) -> None:
        try:
            value = await self.node.runtime.run_action(message.udf_path, message.args, identity=self.identity)
        except (AppError, EngineError) as exc:
            text, data = error_fields(exc)
            self.send_message(p.action_failure_message(message.request_id, text, error_data=data))
            self.confirm()
            return
        except Exception as exc:  # pragma: no cover
            log.exception("action %s failed unexpectedly", message.udf_path)
            self.send_message(p.action_failure_message(message.request_id, f"Server Error: {type(exc).__name__}"))
            self.confirm()
            return
        self.send_message(p.action_success_message(message.request_id, value))
        self.confirm()


async def handle_sync(request: web.Request) -> web.StreamResponse:
    """aiohttp handler for `/api/sync` and `/api/{version}/sync`."""
    node: Node = request.app[NODE_KEY]
    if len(node.sessions) >= node.config.max_sessions:
        raise web.HTTPServiceUnavailable(text="Overloaded: too many connections")
    ws = web.WebSocketResponse(max_msg_size=node.config.max_message_bytes, heartbeat=None, compress=False)
    await ws.prepare(request)
    session = SyncSession(node, ws, request.transport, request.protocol)
    await session.run()
    return ws
