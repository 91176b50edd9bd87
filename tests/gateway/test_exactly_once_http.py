"""Exactly-once through the public surface: the sync WebSocket, HTTP `Idempotency-Key`, and a replica's forward.

A (session, requestId) answers only the call it was first used for: a repeat of
the same call gets the first answer, any other call with the pair is refused
with a clear error. After the retention the answer is forgotten and a repeat
runs again.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from engine.app import App
from engine.committer import REQUESTS_TABLE
from engine.limits import DEFAULT_LIMITS, Limits
from gateway.config import ServerConfig
from gateway.node import Node
from gateway.replica import ADMIN_KEY_ENV
from gateway.server import build_app
from values import to_wire

APPS = Path(__file__).resolve().parents[1] / "apps"
SESSION = "00000000-0000-4000-8000-000000000007"
TINY = dataclasses.replace(DEFAULT_LIMITS, request_retention_seconds=0.3)

Serve = Callable[..., Awaitable[tuple[Node, str]]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """Serve the kitchen app in-process; returns (node, base URL without a trailing slash)."""
    servers: list[TestServer] = []

    async def start(limits: Limits = DEFAULT_LIMITS, name: str = "committer", **config: Any) -> tuple[Node, str]:
        cfg = ServerConfig(app_dir=APPS / "kitchen", data_dir=tmp_path / name, limits=limits, **config)
        node = Node(cfg, App.load(APPS / "kitchen"))
        server = TestServer(build_app(node), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return node, str(server.make_url("/")).rstrip("/")

    yield start
    for server in reversed(servers):
        await server.close()


class Sync:
    """One sync-protocol WebSocket (as the official clients speak it), for mutations."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    @classmethod
    async def connect(cls, http: aiohttp.ClientSession, url: str, connection_count: int = 0,
                      admin_key: str | None = None) -> "Sync":
        sync = cls(await http.ws_connect(url + "/api/sync"))
        await sync.send({"type": "Connect", "sessionId": SESSION, "connectionCount": connection_count,
                         "lastCloseReason": "InitialConnect" if connection_count == 0 else None, "clientTs": 0})
        if admin_key is not None:
            await sync.send({"type": "Authenticate", "tokenType": "Admin", "value": admin_key, "baseVersion": 0})
        return sync

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(message).decode())

    async def mutation(self, request_id: int, path: str, args: dict[str, Any]) -> dict[str, Any]:
        """Send a Mutation; returns its MutationResponse."""
        await self.send({"type": "Mutation", "requestId": request_id, "udfPath": path, "args": [to_wire(args)]})
        while True:
            message = orjson.loads(await self.ws.receive_str(timeout=10))
            if message["type"] == "MutationResponse" and message["requestId"] == request_id:
                return message  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.ws.close()


async def post(http: aiohttp.ClientSession, url: str, kind: str, path: str, args: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{url}/api/{kind}", data=orjson.dumps({"path": path, "args": args, "format": "json"}),
                         headers=headers or {}) as resp:
        return resp.status, orjson.loads(await resp.read())


async def list_names(http: aiohttp.ClientSession, url: str) -> list[str]:
    status, body = await post(http, url, "query", "lists:all_lists", {})
    assert status == 200, body
    return sorted(d["name"] for d in body["value"])


async def until_expired(node: Node, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while node.runtime.projection.count(REQUESTS_TABLE) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert node.runtime.projection.count(REQUESTS_TABLE) == 0


# ---------------------------------------------------------------- WebSocket


async def test_ws_request_id_answers_only_the_call_it_was_used_for(serve: Serve) -> None:
    node, url = await serve()
    async with aiohttp.ClientSession() as http:
        first = await Sync.connect(http, url)
        mine = await first.mutation(7, "lists:create", {"name": "mine"})
        assert mine["success"], mine
        await first.close()
        # The client reconnects and resends its unconfirmed mutation: the first answer, not a second list.
        second = await Sync.connect(http, url, connection_count=1)
        again = await second.mutation(7, "lists:create", {"name": "mine"})
        assert again["success"] and again["result"] == mine["result"] and again["ts"] == mine["ts"]
        # The same (session, requestId) for other arguments or another function is refused.
        other_args = await second.mutation(7, "lists:create", {"name": "theirs"})
        assert not other_args["success"]
        assert other_args["result"] == ("requestId 7 of this session was already used for a different call "
                                        "(path or arguments or caller differ)")
        other_path = await second.mutation(7, "lists:add", {"list_id": mine["result"], "text": "t"})
        assert not other_path["success"] and "requestId 7 of this session" in other_path["result"]
        await second.close()
        # ... and so is another caller reusing the session's id for the same call.
        admin = await Sync.connect(http, url, connection_count=2, admin_key=node.admin.value)
        other_caller = await admin.mutation(7, "lists:create", {"name": "mine"})
        assert not other_caller["success"] and "caller differ" in other_caller["result"]
        await admin.close()
        assert await list_names(http, url) == ["mine"]


async def test_ws_repeat_after_the_retention_runs_again(serve: Serve) -> None:
    node, url = await serve(TINY)
    async with aiohttp.ClientSession() as http:
        sync = await Sync.connect(http, url)
        first = await sync.mutation(1, "lists:create", {"name": "a"})
        await until_expired(node)
        again = await sync.mutation(1, "lists:create", {"name": "a"})
        assert first["success"] and again["success"] and again["result"] != first["result"]
        await sync.close()
        assert await list_names(http, url) == ["a", "a"]


# ---------------------------------------------------------------- HTTP Idempotency-Key


async def test_http_idempotency_key_answers_only_the_call_it_was_used_for(serve: Serve) -> None:
    node, url = await serve()
    key = {"Idempotency-Key": "worker-1:17"}
    async with aiohttp.ClientSession() as http:
        first = await post(http, url, "mutation", "lists:create", {"name": "x"}, key)
        assert first[0] == 200 and first == await post(http, url, "mutation", "lists:create", {"name": "x"}, key)
        status, body = await post(http, url, "mutation", "lists:create", {"name": "y"}, key)
        assert status == 560 and body["status"] == "error"
        assert body["errorMessage"] == ("requestId 17 of this session was already used for a different call "
                                        "(path or arguments or caller differ)")
        # Another caller's same key is its own request (keys are scoped to the caller): never the first answer.
        admin = {**key, "Authorization": f"Convex {node.admin.value}"}
        status, body = await post(http, url, "mutation", "lists:create", {"name": "x"}, admin)
        assert status == 200 and body["value"] != first[1]["value"]
        assert await list_names(http, url) == ["x", "x"]


async def test_http_idempotency_key_is_forgotten_after_the_retention(serve: Serve) -> None:
    node, url = await serve(TINY)
    key = {"Idempotency-Key": "worker-1:1"}
    async with aiohttp.ClientSession() as http:
        _, first = await post(http, url, "mutation", "lists:create", {"name": "x"}, key)
        await until_expired(node)
        _, again = await post(http, url, "mutation", "lists:create", {"name": "x"}, key)
        assert again["status"] == "success" and again["value"] != first["value"]
        assert await list_names(http, url) == ["x", "x"]


# ---------------------------------------------------------------- through a replica


async def test_replica_forwards_path_args_and_caller_for_the_fingerprint(
        serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    committer, committer_url = await serve()
    monkeypatch.setenv(ADMIN_KEY_ENV, committer.admin.value)
    replica, replica_url = await serve(name="replica", role="replica", committer_url=committer_url,
                                 log_url=str(tmp_path / "committer" / "log"))
    key = {"Idempotency-Key": "worker-2:5"}
    async with aiohttp.ClientSession() as http:
        status, first = await post(http, replica_url, "mutation", "lists:create", {"name": "x"}, key)
        assert status == 200, first
        # The same call straight to the committer is the same call: answered from the memo.
        assert (await post(http, committer_url, "mutation", "lists:create", {"name": "x"}, key))[1] == first
        status, body = await post(http, replica_url, "mutation", "lists:create", {"name": "y"}, key)
        assert status == 560 and "requestId 5 of this session was already used" in body["errorMessage"]
        # The caller travels with the forward: the replica's admin caller is another caller.
        admin = {**key, "Authorization": f"Convex {replica.admin.value}"}
        status, body = await post(http, replica_url, "mutation", "lists:create", {"name": "x"}, admin)
        assert status == 200 and body["value"] != first["value"]
        # Over the replica's WebSocket too.
        sync = await Sync.connect(http, replica_url)
        assert (await sync.mutation(3, "lists:create", {"name": "z"}))["success"]
        refused = await sync.mutation(3, "lists:create", {"name": "zz"})
        assert not refused["success"] and "requestId 3 of this session" in refused["result"]
        await sync.close()
        # ... and a WebSocket session whose caller changes (it authenticates as admin) is refused.
        admin_sync = await Sync.connect(http, replica_url, connection_count=1, admin_key=replica.admin.value)
        other_caller = await admin_sync.mutation(3, "lists:create", {"name": "z"})
        assert not other_caller["success"] and "caller differ" in other_caller["result"]
        await admin_sync.close()
        assert await list_names(http, committer_url) == ["x", "x", "z"]
