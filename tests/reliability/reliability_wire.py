"""Helpers for the fault suite: a raw sync-protocol WebSocket client, HTTP calls, offline checks.

The WebSocket client speaks the Convex sync protocol directly over aiohttp
(no official client): it sends Connect / ModifyQuerySet / Mutation, matches
MutationResponses by requestId, keeps every pushed value of every query, and
checks that each Transition starts at the version it holds (a protocol
violation is recorded in `violations`).
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiohttp
import orjson

from values import from_wire
from gateway.protocol import decode_ts

ROOT = Path(__file__).parent.parent.parent
APPS = ROOT / "tests" / "apps"


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://", 1) + "/api/sync"


def connect_message(session_id: str, connection_count: int = 0) -> dict[str, Any]:
    return {"type": "Connect", "sessionId": session_id, "connectionCount": connection_count,
            "lastCloseReason": "InitialConnect" if connection_count == 0 else None, "clientTs": 0}


class ServerGone(ConnectionError):
    """The connection closed before the answer arrived (the outcome is unknown)."""


@dataclass
class QueryState:
    path: str
    args: dict[str, Any]
    values: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    updated: asyncio.Event = field(default_factory=asyncio.Event)


class WsClient:
    """One sync-protocol connection (raw aiohttp WebSocket)."""

    def __init__(self, url: str, session_id: str | None = None, connection_count: int = 0) -> None:
        self.url = url
        self.session_id = session_id or str(uuid.uuid4())
        self.connection_count = connection_count
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._http: aiohttp.ClientSession | None = None
        self._own_http = False
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_request_id = 0
        self.query_set_version = 0
        self.version: dict[str, Any] = {"querySet": 0, "ts": 0, "identity": 0}
        self.queries: dict[int, QueryState] = {}
        self.next_query_id = 0
        self.fatal: str | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = asyncio.Event()
        self.violations: list[str] = []
        self.messages = 0
        self.on_transition: Callable[[dict[str, Any]], None] | None = None
        self._qs_confirm: dict[int, asyncio.Future[None]] = {}

    async def connect(self, http: aiohttp.ClientSession | None = None, timeout: float = 10.0,
                      send_connect: bool = True) -> "WsClient":
        if http is None:
            http = aiohttp.ClientSession()
            self._own_http = True
        self._http = http
        self.ws = await http.ws_connect(ws_url(self.url), timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                                        max_msg_size=0, autoping=True, heartbeat=None)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        if send_connect:
            await self.send(connect_message(self.session_id, self.connection_count))
        return self

    async def send(self, message: Any) -> None:
        assert self.ws is not None
        data = message if isinstance(message, (str, bytes)) else orjson.dumps(message).decode()
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def _read(self) -> None:
        ws = self.ws
        assert ws is not None
        try:
            while True:
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.messages += 1
                    self._handle(orjson.loads(msg.data))
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self.violations.append("server sent a binary frame")
                elif msg.type == aiohttp.WSMsgType.CLOSE:
                    self.close_code, self.close_reason = msg.data, msg.extra
                    break
                elif msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
        except (aiohttp.ClientError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if self.close_code is None:
                self.close_code = ws.close_code
            self.closed.set()
            for fut in list(self._pending.values()) + list(self._qs_confirm.values()):
                if not fut.done():
                    fut.set_exception(ServerGone(f"connection closed ({ws.close_code})"))
            self._pending.clear()
            self._qs_confirm.clear()

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "Transition":
            start, end = msg["startVersion"], msg["endVersion"]
            start_ts, end_ts = decode_ts(start["ts"]), decode_ts(end["ts"])
            have = self.version
            if (start["querySet"], start_ts, start["identity"]) != (have["querySet"], have["ts"], have["identity"]):
                self.violations.append(f"Transition starts at {start}, client is at {have}")
            if end_ts < start_ts:
                self.violations.append(f"Transition goes back in time: {start_ts} -> {end_ts}")
            self.version = {"querySet": end["querySet"], "ts": end_ts, "identity": end["identity"]}
            for mod in msg["modifications"]:
                q = self.queries.get(mod.get("queryId"))
                if q is None:
                    if mod["type"] != "QueryRemoved":
                        self.violations.append(f"update for unknown query {mod.get('queryId')}")
                    continue
                if mod["type"] == "QueryUpdated":
                    q.values.append(from_wire(mod["value"]))
                    q.updated.set()
                elif mod["type"] == "QueryFailed":
                    q.errors.append(mod["errorMessage"])
                    q.updated.set()
            for version, fut in list(self._qs_confirm.items()):
                if end["querySet"] >= version and not fut.done():
                    fut.set_result(None)
                    del self._qs_confirm[version]
            if self.on_transition is not None:
                self.on_transition(msg)
        elif kind in ("MutationResponse", "ActionResponse"):
            fut = self._pending.pop(msg["requestId"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif kind == "FatalError":
            self.fatal = msg.get("error")
        elif kind == "AuthError":
            self.fatal = f"AuthError: {msg.get('error')}"

    async def mutate(self, path: str, args: dict[str, Any], request_id: int | None = None,
                     timeout: float = 15.0, kind: str = "Mutation") -> dict[str, Any]:
        """Send a Mutation and wait for its response (raises ServerGone if the socket dies first)."""
        if request_id is None:
            request_id = self.next_request_id
        self.next_request_id = max(self.next_request_id, request_id + 1)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        if self.closed.is_set():
            raise ServerGone("connection already closed")
        try:
            await self.send({"type": kind, "requestId": request_id, "udfPath": path, "args": [args]})
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            self._pending.pop(request_id, None)
            raise ServerGone(str(exc)) from None
        return await asyncio.wait_for(fut, timeout)

    async def subscribe(self, path: str, args: dict[str, Any] | None = None, wait: bool = True,
                        timeout: float = 15.0) -> int:
        """Add a query; with `wait`, return once the Transition holding its first result arrived."""
        qid = self.next_query_id
        self.next_query_id += 1
        self.queries[qid] = QueryState(path, args or {})
        base = self.query_set_version
        self.query_set_version += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._qs_confirm[self.query_set_version] = fut
        await self.send({"type": "ModifyQuerySet", "baseVersion": base, "newVersion": self.query_set_version,
                         "modifications": [{"type": "Add", "queryId": qid, "udfPath": path, "args": [args or {}]}]})
        if wait:
            await asyncio.wait_for(fut, timeout)
        return qid

    def latest(self, qid: int) -> Any:
        return self.queries[qid].values[-1]

    async def wait_value(self, qid: int, predicate: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        """Wait until the latest pushed value of `qid` satisfies `predicate`."""
        q = self.queries[qid]
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if q.values and predicate(q.values[-1]):
                return q.values[-1]
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"{q.path}: no value matching the predicate in {timeout}s "
                                     f"(latest {q.values[-1] if q.values else None!r})")
            q.updated.clear()
            try:
                await asyncio.wait_for(q.updated.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def wait_closed(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout)

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            try:
                await asyncio.wait_for(self.ws.close(), 3)
            except (asyncio.TimeoutError, ConnectionError, aiohttp.ClientError):
                pass
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._own_http and self._http is not None:
            await self._http.close()


async def http_call(http: aiohttp.ClientSession, url: str, endpoint: str, path: str, args: dict[str, Any],
                    key: str | None = None, timeout: float = 15.0) -> tuple[int, Any]:
    """POST /api/<endpoint>; returns (status, decoded JSON body or the text)."""
    headers = {"Idempotency-Key": key} if key else {}
    async with http.post(f"{url}/api/{endpoint}", data=orjson.dumps({"path": path, "args": args,
                                                                     "format": "convex_encoded_json"}),
                         headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
        text = await r.read()
        try:
            return r.status, orjson.loads(text)
        except orjson.JSONDecodeError:
            return r.status, text.decode(errors="replace")


async def query(http: aiohttp.ClientSession, url: str, path: str, args: dict[str, Any]) -> Any:
    status, body = await http_call(http, url, "query", path, args)
    assert status == 200, (status, body)
    return from_wire(body["value"])


# ------------------------------------------------------------------ offline checks


def bank_catalog() -> dict[str, Any]:
    from engine.app import App
    return App.load(APPS / "bank").schema.index_catalog()


async def read_log(log_dir: Path) -> list[Any]:
    """Every record of the FileLog in `log_dir` (opened as a read-only follower)."""
    from log.file_log import FileLog
    log = FileLog(log_dir, read_only=True)
    await log.open()
    try:
        return [r async for batch in log.read(0) for r in batch]
    finally:
        await log.close()


async def replay_digest(log_dir: Path, work: Path, catalog: dict[str, Any] | None,
                        upto: int | None = None) -> tuple[str, int]:
    """(content digest, applied offset) of a fresh projection rebuilt from the log into `work`."""
    from log.file_log import FileLog
    from projections.rebuild import rebuild
    log = FileLog(log_dir, read_only=True)
    await log.open()
    try:
        projection = await rebuild(log, work, catalog, upto=upto)
        try:
            return projection.content_digest(), projection.applied_offset
        finally:
            projection.close()
    finally:
        await log.close()


def projection_digest(path: Path) -> tuple[str, int, dict[str, Any]]:
    """(content digest, applied offset, index catalog) of the projection at `path` (server stopped)."""
    from projections.store import Projection
    projection = Projection(path)
    try:
        return projection.content_digest(), projection.applied_offset, projection.indexes
    finally:
        projection.close()
