"""A minimal, fast WebSocket client and Convex sync-protocol driver for benchmarks.

`RawWebSocket` is an `asyncio.Protocol`: it does the HTTP upgrade itself,
parses server frames straight out of `data_received`, and stamps every frame
with the `time.perf_counter()` of the chunk it arrived in, before any
parsing or task switch. That stamp is what latency figures use, so the
client's own scheduling adds as little as possible to them; the same class
reads Tape and the raw broadcast floor, so both sides of a ratio pay the same
client costs. It counts every byte received and sent (upgrade included).

`SyncClient` speaks just enough of the sync protocol: ``Connect``, one
``ModifyQuerySet`` per `subscribe` call, and ``Mutation`` messages with a
per-socket ``requestId``. A mutation counts as done the way the official
clients see it: its ``MutationResponse`` has arrived *and* a ``Transition``
whose ``endVersion.ts`` is at least the response's ``ts`` (Tape sends that
Transition right after the response). Failed mutations finish at once.
"""
from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from typing import Any, Callable

import orjson

clock = time.perf_counter


class HandshakeError(Exception):
    """The server refused the WebSocket upgrade."""


class MutationFailed(Exception):
    """A mutation's MutationResponse said ``success: false``."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.data = data


def _mask(key: bytes, data: bytes) -> bytes:
    n = len(data)
    if not n:
        return data
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def encode_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client frame (FIN set)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    return head + key + _mask(key, payload)


def decode_ts(text: str) -> int:
    return int.from_bytes(base64.b64decode(text), "little")


MessageHandler = Callable[[bytes, float], None]


class RawWebSocket(asyncio.Protocol):
    """Client side of one WebSocket; calls ``on_message(payload, t_received)`` for each text/binary message."""

    def __init__(self, on_message: MessageHandler) -> None:
        loop = asyncio.get_running_loop()
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._buf = bytearray()
        self._fragments: bytearray | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.frames_in = 0
        self.frames_out = 0

    @classmethod
    async def connect(cls, host: str, port: int, path: str, on_message: MessageHandler,
                      timeout: float = 10.0) -> "RawWebSocket":
        loop = asyncio.get_running_loop()
        _, ws = await loop.create_connection(lambda: cls(on_message), host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        ws._write(request)
        await asyncio.wait_for(asyncio.shield(ws.upgraded), timeout)
        return ws

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(HandshakeError(f"connection closed during the upgrade: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = clock()
        self.bytes_in += len(data)
        buf = self._buf
        buf += data
        if not self.upgraded.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[:end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(HandshakeError(head.split(b"\r\n", 1)[0].decode(errors="replace")))
                self.transport.close()  # type: ignore[union-attr]
                return
            self.upgraded.set_result(None)
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            masked = b1 & 0x80
            if masked:
                head += 4
            end = pos + head + length
            if end > n:
                break
            payload = bytes(buf[pos + head:end])
            if masked:
                payload = _mask(bytes(buf[pos + head - 4:pos + head]), payload)
            pos = end
            self.frames_in += 1
            opcode = b0 & 0x0F
            if opcode in (0x1, 0x2):
                if b0 & 0x80:
                    self.on_message(payload, now)
                else:
                    self._fragments = bytearray(payload)
            elif opcode == 0x0 and self._fragments is not None:
                self._fragments += payload
                if b0 & 0x80:
                    whole, self._fragments = bytes(self._fragments), None
                    self.on_message(whole, now)
            elif opcode == 0x9:
                self._write(encode_frame(payload, 0xA))
            elif opcode == 0x8:
                self._write(encode_frame(payload[:2], 0x8))
                self.transport.close()  # type: ignore[union-attr]
                break
        del buf[:pos]

    # -- sending --
    def _write(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.transport.write(data)  # type: ignore[union-attr]

    def send(self, payload: bytes) -> None:
        """Send one text message."""
        self.frames_out += 1
        self._write(encode_frame(payload))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            try:
                self._write(encode_frame(b"\x03\xe8", 0x8))
            except (RuntimeError, AttributeError):
                pass
            self.transport.close()


UpdateHandler = Callable[[float, int, Any], None]


class SyncClient:
    """One sync-protocol session on its own socket (see the module docstring)."""

    def __init__(self) -> None:
        self.ws: RawWebSocket = None  # type: ignore[assignment]
        self.session_id = str(uuid.uuid4())
        self.query_set = 0
        self._next_request = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._awaiting_ts: list[tuple[int, asyncio.Future[Any], Any]] = []
        self.seen_ts = 0
        self.on_update: UpdateHandler | None = None
        self.on_transition: Callable[[float, bytes], None] | None = None
        self.transitions = 0
        self.updates = 0
        self.last_transition: bytes = b""
        self.mutation_ts: dict[int, int] = {}  # requestId -> commit ts of each successful mutation
        self.last_request_id = -1

    @classmethod
    async def open(cls, host: str, port: int, path: str = "/api/sync") -> "SyncClient":
        client = cls()
        client.ws = await RawWebSocket.connect(host, port, path, client._on_message)
        client.ws.send(orjson.dumps({"type": "Connect", "sessionId": client.session_id, "connectionCount": 0,
                                     "lastCloseReason": "InitialConnect", "clientTs": int(time.time() * 1000)}))
        return client

    def subscribe(self, queries: list[tuple[int, str, dict[str, Any]]]) -> None:
        """Add queries ``(queryId, udfPath, args)`` in one ModifyQuerySet."""
        base = self.query_set
        self.query_set += 1
        self.ws.send(orjson.dumps({"type": "ModifyQuerySet", "baseVersion": base, "newVersion": self.query_set,
                                   "modifications": [{"type": "Add", "queryId": qid, "udfPath": path, "args": [args]}
                                                     for qid, path, args in queries]}))

    def send_mutation(self, path: str, args: dict[str, Any]) -> asyncio.Future[Any]:
        """Send a Mutation now; the future resolves to its result (or raises MutationFailed)."""
        request_id = self.last_request_id = self._next_request
        self._next_request += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self.ws.send(orjson.dumps({"type": "Mutation", "requestId": request_id, "udfPath": path, "args": [args]}))
        return future

    async def mutation(self, path: str, args: dict[str, Any]) -> Any:
        return await self.send_mutation(path, args)

    def close(self) -> None:
        self.ws.close()
        for future in self._pending.values():
            if not future.done():
                future.cancel()

    # -- incoming --
    def _on_message(self, payload: bytes, now: float) -> None:
        msg = orjson.loads(payload)
        kind = msg.get("type")
        if kind == "Transition":
            self.transitions += 1
            self.last_transition = payload
            ts = decode_ts(msg["endVersion"]["ts"])
            if ts > self.seen_ts:
                self.seen_ts = ts
            if self.on_transition is not None:
                self.on_transition(now, payload)
            handler = self.on_update
            for mod in msg["modifications"]:
                if mod.get("type") == "QueryUpdated":
                    self.updates += 1
                    if handler is not None:
                        handler(now, mod["queryId"], mod["value"])
            if self._awaiting_ts:
                still = []
                for entry in self._awaiting_ts:
                    if entry[0] <= ts:
                        if not entry[1].done():
                            entry[1].set_result(entry[2])
                    else:
                        still.append(entry)
                self._awaiting_ts = still
        elif kind == "MutationResponse":
            future = self._pending.pop(msg["requestId"], None)
            if future is None or future.done():
                return
            if msg.get("success"):
                ts = self.mutation_ts[msg["requestId"]] = decode_ts(msg["ts"])
                if ts <= self.seen_ts:
                    future.set_result(msg.get("result"))
                else:
                    self._awaiting_ts.append((ts, future, msg.get("result")))
            else:
                future.set_exception(MutationFailed(str(msg.get("result")), msg.get("errorData")))
        elif kind == "FatalError":
            error = RuntimeError(f"server FatalError: {msg.get('error')}")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()


async def open_many(count: int, host: str, port: int, path: str = "/api/sync", parallel: int = 64,
                    factory: Callable[..., Any] | None = None) -> list[Any]:
    """Open `count` clients, at most `parallel` handshakes at a time (keeps the listen backlog happy)."""
    opener = factory or SyncClient.open
    out: list[Any] = [None] * count
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            out[i] = await opener(host, port, path)
    await asyncio.gather(*(worker() for _ in range(min(parallel, count))))
    return out
