"""`Client`: one reconnecting WebSocket session to a Tape deployment (the I/O around `ClientCore`)."""
from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import deque
from typing import Any, Callable, Literal

import aiohttp
import orjson
from aiohttp import WSMsgType
from yarl import URL

from client.errors import ClientClosedError, FatalServerError
from client.state import ClientCore, QueryInfo, StartVersionMismatch
from client.subscription import Subscription
from values.sync_wire import ProtocolError
from values import ConvexValueError

__all__ = ["Client", "ConnectionState", "sync_url"]

log = logging.getLogger("tape.client")

ConnectionState = Literal["connecting", "connected", "disconnected"]
StateCallback = Callable[[ConnectionState], None]


def sync_url(url: str) -> str:
    """The WebSocket URL of a deployment: ``http://h:p`` → ``ws://h:p/api/sync``.

    ``https`` becomes ``wss``; a URL already ending in ``/sync`` is kept.
    """
    parsed = URL(url)
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if parsed.scheme not in schemes:
        raise ValueError(f"unsupported URL scheme {parsed.scheme!r} in {url!r} (use http, https, ws or wss)")
    path = parsed.path.rstrip("/")
    if not path.endswith("/sync"):
        path += "/api/sync"
    return str(parsed.with_scheme(schemes[parsed.scheme]).with_path(path).with_query(None))


class Client:
    """A Tape/Convex sync-protocol client: one WebSocket, many subscriptions, reconnecting.

    ``url`` is the deployment URL (``http://host:port``). ``session`` is an
    optional aiohttp session to use (not closed by `close`). Backoff between
    reconnect attempts starts at ``backoff_initial`` seconds and doubles up to
    ``backoff_max``, each delay jittered to 50-100 %. With no message from the
    server for ``inactivity_timeout`` seconds (the server pings every 15 s) the
    socket is considered dead. ``connect_timeout`` bounds each connection
    attempt.
    """

    def __init__(self, url: str, *, session: aiohttp.ClientSession | None = None, session_id: str | None = None,
                 backoff_initial: float = 0.1, backoff_max: float = 5.0, inactivity_timeout: float = 60.0,
                 connect_timeout: float = 10.0) -> None:
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        self.url = url
        self.ws_url = sync_url(url)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.inactivity_timeout = inactivity_timeout
        self.connect_timeout = connect_timeout
        self._core = ClientCore(session_id or str(uuid.uuid4()))
        self._http = session
        self._owns_http = session is None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state: ConnectionState = "disconnected"
        self._state_event = asyncio.Event()
        self._callbacks: list[StateCallback] = []
        self._closing = False
        self._connection_count = 0
        self._last_close_reason: str | None = None
        self._failures = 0

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Start connecting in the background (called by ``async with`` and on first use)."""
        if self._task is not None:
            return
        if self._closing:
            raise ClientClosedError("the client is closed")
        self._loop = asyncio.get_running_loop()
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self._task = self._loop.create_task(self._run(), name=f"tape-client-{self.session_id[:8]}")

    async def close(self) -> None:
        """Close the socket and stop; pending calls and subscriptions fail with `ClientClosedError`."""
        if self._closing:
            if self._task is not None:
                await asyncio.gather(self._task, return_exceptions=True)
            return
        self._closing = True
        self._core.close(ClientClosedError("the client was closed"))
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._owns_http and self._http is not None:
            await self._http.close()
        self._set_state("disconnected")
        self._state_event.set()

    async def __aenter__(self) -> "Client":
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _ensure_started(self) -> None:
        if self._task is None:
            self.start()

    # -- observable state ---------------------------------------------------------------
    @property
    def state(self) -> ConnectionState:
        """``"connecting"``, ``"connected"`` (handshake sent on an open socket) or ``"disconnected"``."""
        return self._state

    @property
    def session_id(self) -> str:
        """The ``sessionId`` sent in every ``Connect`` (stable for the client's life)."""
        return self._core.session_id

    @property
    def connection_count(self) -> int:
        """How many sockets this client has opened so far."""
        return self._connection_count

    @property
    def closed(self) -> bool:
        """True once `close` was called or the server sent ``FatalError``."""
        return self._closing or self._core.closed_error is not None

    @property
    def pending_requests(self) -> int:
        """Mutations and actions not completed yet."""
        return len(self._core.requests)

    def query_table(self) -> list[QueryInfo]:
        """The live server-side queries of this client (one row per ``queryId``)."""
        return self._core.query_table()

    def on_state_change(self, callback: StateCallback) -> Callable[[], None]:
        """Call ``callback(state)`` on every state change; returns a function that unregisters it."""
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)
        return remove

    async def wait_for_state(self, state: ConnectionState, timeout: float | None = None) -> None:
        """Wait until `state` equals ``state``; raises `ClientClosedError` if the client closes first."""
        async with asyncio.timeout(timeout):
            while self._state != state:
                if self.closed:
                    raise ClientClosedError("the client is closed")
                await self._state_event.wait()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the client is connected (starting it if needed)."""
        self._ensure_started()
        await self.wait_for_state("connected", timeout)

    def _set_state(self, state: ConnectionState) -> None:
        if state == self._state:
            return
        self._state = state
        event, self._state_event = self._state_event, asyncio.Event()
        event.set()
        for callback in list(self._callbacks):
            try:
                callback(state)
            except Exception:
                log.exception("state change callback %r failed", callback)

    # -- the public calls ---------------------------------------------------------------
    def subscribe(self, path: str, args: dict[str, Any] | None = None) -> Subscription:
        """Subscribe to a query; iterate the result for its current value and then every change."""
        self._ensure_started()
        assert self._loop is not None
        return Subscription(self._core.subscribe(path, args), self._loop)

    async def query(self, path: str, args: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """Run a query once over the socket (a one-shot subscription) and return its result."""
        subscription = self.subscribe(path, args)
        try:
            return await subscription.next(timeout)
        finally:
            subscription.close()

    async def mutation(self, path: str, args: dict[str, Any] | None = None) -> Any:
        """Run a mutation; returns its result once the client's view includes its writes."""
        return await self._request("Mutation", path, args)

    async def action(self, path: str, args: dict[str, Any] | None = None) -> Any:
        """Run an action; raises `ConnectionLostError` if the socket drops while it runs."""
        return await self._request("Action", path, args)

    async def _request(self, kind: Literal["Mutation", "Action"], path: str, args: dict[str, Any] | None) -> Any:
        self._ensure_started()
        request = self._core.request(kind, path, args)
        try:
            return await request.future
        except asyncio.CancelledError:
            self._core.abandon(request)
            raise

    # -- the connection loop ---------------------------------------------------------------
    def _backoff(self) -> float:
        base = min(self.backoff_max, self.backoff_initial * (2 ** min(self._failures, 30)))
        return base * (0.5 + random.random() / 2)

    async def _run(self) -> None:
        assert self._http is not None
        while not self.closed:
            self._set_state("connecting")
            ws: aiohttp.ClientWebSocketResponse | None = None
            try:
                async with asyncio.timeout(self.connect_timeout):
                    ws = await self._http.ws_connect(
                        self.ws_url, autoping=True, heartbeat=None, max_msg_size=0, decode_text=False,
                        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.info("connecting to %s failed: %s", self.ws_url, exc or type(exc).__name__)
            if ws is not None:
                self._last_close_reason = await self._serve(ws)
            self._set_state("disconnected")
            if self.closed:
                return
            delay = self._backoff()
            self._failures += 1
            log.info("reconnecting to %s in %.2fs (attempt %d)", self.ws_url, delay, self._failures)
            await asyncio.sleep(delay)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> str | None:
        """Run one socket until it closes; returns the close reason for the next ``Connect``."""
        outbox: deque[bytes] = deque()
        wake = asyncio.Event()

        def send(message: dict[str, Any]) -> None:
            outbox.append(orjson.dumps(message))
            wake.set()

        count = self._connection_count
        self._connection_count += 1
        self._core.connected(send, count, "InitialConnect" if count == 0 else self._last_close_reason)
        self._set_state("connected")
        writer = asyncio.get_running_loop().create_task(self._write(ws, outbox, wake))
        reason: str | None = None
        close_code = 1000
        try:
            while True:
                try:
                    msg = await ws.receive(timeout=self.inactivity_timeout)
                except TimeoutError:
                    log.warning("no message from %s for %.0fs; reconnecting", self.ws_url, self.inactivity_timeout)
                    reason, close_code = "InactiveServer", 4000
                    break
                if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                    reason = self._handle(msg.data)
                    if reason is not None:
                        close_code = 4000
                        break
                elif msg.type is WSMsgType.CLOSE:
                    reason = (msg.extra or "") or f"closed by server with code {msg.data}"
                    log.info("server closed the socket: %s", reason)
                    break
                elif msg.type is WSMsgType.ERROR:
                    reason = f"WebSocketError: {ws.exception()}"
                    log.info("socket error: %s", ws.exception())
                    break
                elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED):
                    reason = reason or "ConnectionLost"
                    break
        finally:
            self._set_state("disconnected")
            self._core.disconnected()
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            if not ws.closed:
                try:
                    await ws.close(code=close_code, message=(reason or "").encode()[:120])
                except Exception:  # the socket is dead already; nothing left to tell the server
                    pass
        return reason

    def _handle(self, data: bytes | str) -> str | None:
        """Apply one server frame; returns a close reason when the socket must be dropped."""
        try:
            message = orjson.loads(data)
            is_transition = isinstance(message, dict) and message.get("type") == "Transition"
            self._core.handle(message)
        except StartVersionMismatch as exc:
            log.error("invalid Transition from %s: %s; reconnecting to re-sync", self.ws_url, exc)
            return "InvalidStartVersion"
        except FatalServerError as exc:
            log.error("%s; the client stops (no reconnect)", exc)
            self._core.close(exc)
            return "FatalError"
        except (ProtocolError, ConvexValueError, ValueError) as exc:
            log.error("malformed message from %s (%s); reconnecting", self.ws_url, exc)
            return "ServerProtocolError"
        except (KeyError, TypeError, AttributeError) as exc:
            log.error("unexpected message shape from %s (%r); reconnecting", self.ws_url, exc, exc_info=True)
            return "ServerProtocolError"
        if is_transition:
            self._failures = 0  # this connection works: the next outage starts at the initial backoff
        return None

    @staticmethod
    async def _write(ws: aiohttp.ClientWebSocketResponse, outbox: deque[bytes], wake: asyncio.Event) -> None:
        """Send queued frames in order until cancelled; a failed send drops the socket."""
        try:
            while True:
                await wake.wait()
                wake.clear()
                while outbox:
                    await ws.send_frame(outbox.popleft(), WSMsgType.TEXT)
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            log.info("sending failed (%s); dropping the socket", exc)
            if not ws.closed:
                await ws.close(code=1011, message=b"send failed")

    def __repr__(self) -> str:
        return f"<Client {self.url} {self.state} session={self.session_id[:8]} queries={len(self._core.by_id)}>"
