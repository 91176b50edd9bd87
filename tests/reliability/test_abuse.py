"""Load and abuse: slow readers, too many queries, internal functions, the admin key.

The slow-reader and query-limit tests run a node in-process (`gateway.node.Node`
+ `gateway.server.build_app` on an aiohttp test server) so the limits in
`ServerConfig` can be made small; the admin-key tests run real `tape dev`
processes and read what they print.

Admin key policy checked here (the spec): the key is printed once, on the
first start, to stdout (the operator has to learn it somehow; that line is
the only place it appears), stored in DATA/admin_key with mode 0600, and
never printed again or written to any log line, even with `tape -v`.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from engine.app import App
from gateway.config import ServerConfig
from gateway.node import Node
from gateway.server import build_app
from tests.reliability.reliability_wire import APPS, ROOT, WsClient, connect_message, http_call
from tests.server_process import free_port


async def start_node(data: Path, app: str = "kitchen", **limits: Any) -> tuple[Node, TestServer, str]:
    config = ServerConfig(app_dir=APPS / app, data_dir=data, **limits)
    node = Node(config, App.load(APPS / app))
    server = TestServer(build_app(node))
    await server.start_server()
    return node, server, f"http://{server.host}:{server.port}"


@pytest.fixture
async def small_node(tmp_path: Path) -> AsyncIterator[tuple[Node, str]]:
    node, server, url = await start_node(tmp_path / "data", max_send_buffer_bytes=256 << 10,
                                         max_queries_per_session=8)
    try:
        yield node, url
    finally:
        await server.close()


# ------------------------------------------------------------------ a client that never reads


class RawWebSocket:
    """A WebSocket client on a plain socket with a tiny receive buffer, so it can stop reading."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, path: str = "/api/sync") -> "RawWebSocket":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write((f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return self

    def send(self, message: dict[str, Any]) -> None:
        payload = orjson.dumps(message)
        n = len(payload)
        if n < 126:
            header = bytes([0x81, 0x80 | n])
        elif n < 1 << 16:
            header = bytes([0x81, 0x80 | 126]) + struct.pack("!H", n)
        else:
            header = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert self.writer is not None
        self.writer.write(header + mask + masked)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()


async def test_client_that_stops_reading_is_disconnected_and_others_keep_their_latency(
        small_node: tuple[Node, str], caplog: pytest.LogCaptureFixture) -> None:
    node, url = small_node
    host, port = url.removeprefix("http://").split(":")
    async with aiohttp.ClientSession() as http:
        status, body = await http_call(http, url, "mutation", "lists:create", {"name": "big"})
        list_id = body["value"]
        slow = await RawWebSocket(host, int(port)).open()
        slow.send(connect_message("slow-client"))
        slow.send({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
            {"type": "Add", "queryId": 0, "udfPath": "lists:items", "args": [{"list_id": list_id}]}]})
        await asyncio.sleep(0.2)
        assert any(s.session_id == "slow-client" for s in node.sessions)
        # ... and from now on the slow client reads nothing.

        fast = await WsClient(url).connect(http)
        qid = await fast.subscribe("lists:latest", {"list_id": list_id, "n": 1.0})
        latencies = []
        dropped_after = None  # updates until the server gave up on the slow client

        def slow_dropped() -> bool:
            return any("slow client slow-client" in r.getMessage() for r in caplog.records)
        with caplog.at_level(logging.WARNING, logger="tape.sync"):
            for i in range(150):
                text = f"item-{i}-" + "x" * (8 << 10)
                t0 = time.monotonic()
                status, body = await http_call(http, url, "mutation", "lists:add", {"list_id": list_id, "text": text})
                assert status == 200, body
                await fast.wait_value(qid, lambda v, t=text: bool(v) and v[0]["text"] == t, timeout=10)
                latencies.append(time.monotonic() - t0)
                if dropped_after is None and slow_dropped():
                    dropped_after = i + 1
                if dropped_after is not None and i >= dropped_after + 20:
                    break
        assert dropped_after is not None, "a client that stopped reading was never disconnected"
        latencies.sort()
        p95 = latencies[int(len(latencies) * 0.95) - 1]
        print(f"\nslow reader dropped after {dropped_after} updates of a growing list (bound "
              f"{node.config.max_send_buffer_bytes} bytes); fast subscriber latency p50 "
              f"{latencies[len(latencies) // 2] * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
              f"max {latencies[-1] * 1000:.1f} ms over {len(latencies)} updates")
        assert p95 < 1.0 and latencies[-1] < 5.0  # generous: the machine is shared; unbounded would hang
        assert fast.fatal is None and not fast.violations
        # Disconnected means gone: the connection is torn down and its subscriptions released,
        # even though the peer keeps its end open and never reads again.
        for _ in range(50):
            if not any(s.session_id == "slow-client" for s in node.sessions):
                break
            await asyncio.sleep(0.1)
        lingering = [s for s in node.sessions if s.session_id == "slow-client"]
        live = sum(1 for q in node.subscriptions._queries.values()
                   for sub, _ in q.subscribers.values() if getattr(sub, "session_id", None) == "slow-client")
        slow.abort()
        await fast.close()
        assert not lingering, (
            f"5 s after 'disconnecting slow client' the session is still in node.sessions ({live} live "
            "subscription(s) still registered for it): its close handshake waits for a peer that never reads")


async def test_slow_client_queue_is_bounded(small_node: tuple[Node, str]) -> None:
    """While it is still connected, a slow session never holds much more than the bound."""
    node, url = small_node
    host, port = url.removeprefix("http://").split(":")
    bound = node.config.max_send_buffer_bytes
    async with aiohttp.ClientSession() as http:
        status, body = await http_call(http, url, "mutation", "lists:create", {"name": "big"})
        list_id = body["value"]
        slow = await RawWebSocket(host, int(port)).open()
        slow.send(connect_message("slow-2"))
        slow.send({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
            {"type": "Add", "queryId": 0, "udfPath": "lists:items", "args": [{"list_id": list_id}]}]})
        await asyncio.sleep(0.2)
        peak = 0
        for i in range(80):
            await http_call(http, url, "mutation", "lists:add", {"list_id": list_id, "text": "y" * (8 << 10)})
            sessions = [s for s in node.sessions if s.session_id == "slow-2"]
            if not sessions:
                break
            peak = max(peak, sessions[0]._out_bytes)
        slow.abort()
        assert peak <= bound, f"queued {peak} bytes for a slow client, bound {bound}"


# ------------------------------------------------------------------ query limits


async def test_too_many_queries_gets_a_fatal_error(small_node: tuple[Node, str]) -> None:
    node, url = small_node
    limit = node.config.max_queries_per_session
    async with aiohttp.ClientSession() as http:
        client = await WsClient(url).connect(http)
        for i in range(limit):  # up to the limit is fine
            await client.subscribe("lists:all_lists" if i % 2 else "lists:open_items",
                                   {} if i % 2 else {"list_id": "bGlzdHMA"})
        assert client.fatal is None
        await client.subscribe("lists:all_lists", wait=False)
        await client.wait_closed()
        assert client.fatal is not None and "TooManyQueries" in client.fatal, client.fatal
        assert client.close_code == 1008
        other = await WsClient(url).connect(http)  # the limit is per connection
        await other.subscribe("lists:all_lists")
        assert other.fatal is None
        await other.close()
        await client.close()


async def test_default_query_limit_in_one_message(tmp_path: Path) -> None:
    """10,001 queries in one ModifyQuerySet against the default limit of 10,000."""
    node, server, url = await start_node(tmp_path / "data")
    try:
        limit = node.config.max_queries_per_session
        async with aiohttp.ClientSession() as http:
            client = await WsClient(url).connect(http)
            adds = [{"type": "Add", "queryId": i, "udfPath": "lists:all_lists", "args": [{}]} for i in range(limit + 1)]
            await client.send({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": adds})
            await client.wait_closed(timeout=60)
            assert client.fatal is not None and "TooManyQueries" in client.fatal, (client.fatal, client.close_code)
            await client.close()
            assert node.subscriptions.query_count == 0  # nothing left behind by the dropped connection
            status, body = await http_call(http, url, "query", "lists:all_lists", {})
            assert status == 200
    finally:
        await server.close()


# ------------------------------------------------------------------ internal functions


async def test_internal_functions_are_unreachable_from_clients(tmp_path: Path) -> None:
    node, server, url = await start_node(tmp_path / "data", app="bank")
    try:
        async with aiohttp.ClientSession() as http:
            status, body = await http_call(http, url, "mutation", "accounts:seed", {"owners": ["x", "y"], "balance": 5.0})
            assert status == 200
            client = await WsClient(url).connect(http)
            resp = await client.mutate("accounts:close", {"owner": "x"})
            assert resp["success"] is False and "accounts:close" in resp["result"], resp
            missing = await client.mutate("accounts:nothing", {"owner": "x"})
            # the answer does not reveal that an internal function of that name exists
            assert resp["result"].replace("accounts:close", "?") == missing["result"].replace("accounts:nothing", "?")
            for endpoint in ("mutation", "function", "query", "action"):
                status, body = await http_call(http, url, endpoint, "accounts:close", {"owner": "x"}, key="k:1")
                assert status in (404, 560), (endpoint, status, body)
            assert (await http_call(http, url, "query", "accounts:balance", {"owner": "x"}))[1]["value"] == 5.0
            await client.close()
    finally:
        await server.close()
    node, server, url = await start_node(tmp_path / "kitchen", app="kitchen")
    try:
        async with aiohttp.ClientSession() as http:
            client = await WsClient(url).connect(http)
            qid = await client.subscribe("lists:secret")
            assert client.queries[qid].errors and not client.queries[qid].values
            status, body = await http_call(http, url, "query", "lists:secret", {})
            assert status == 560 and "internal" not in body["errorMessage"], body
            # ... while public functions may still call it
            resp = await client.mutate("lists:create_via_action", {"name": "ok"}, kind="Action")
            assert resp["success"] is True and resp["result"]["secret"] == "internal"
            await client.close()
    finally:
        await server.close()


# ------------------------------------------------------------------ the admin key


def run_server(data: Path, *cli: str, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "ops.cli", *cli, "dev", str(APPS / "bank"), "--data", str(data),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=env)


async def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(400):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                async with http.get(url + "/version") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("server did not start")


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    return out.decode(errors="replace")


async def test_admin_key_printed_once_stored_owner_only_never_logged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = run_server(data, port=port)
    await wait_up(url, first)
    key = (data / "admin_key").read_text().strip()
    mode = stat.S_IMODE((data / "admin_key").stat().st_mode)
    first_out = stop(first)
    assert mode == 0o600, oct(mode)
    assert first_out.count(key) == 1, first_out  # shown once, on first start

    # Restart with debug logging and use the key (and a wrong one) over HTTP and WebSocket.
    second = run_server(data, "-v", port=port)
    await wait_up(url, second)
    async with aiohttp.ClientSession() as http:
        for auth in (f"Convex {key}", "Convex tape_admin_wrong"):
            async with http.post(url + "/api/mutation", data=orjson.dumps({"path": "accounts:seed", "args": {
                    "owners": ["adm"], "balance": 1.0}}), headers={"Authorization": auth}) as r:
                assert r.status in (200, 401, 403, 560), await r.text()
            async with http.post(url + "/api/query", data=b"{bad json", headers={"Authorization": auth}) as r:
                assert r.status == 400
        for token in (key, "tape_admin_wrong"):
            client = await WsClient(url).connect(http)
            await client.send({"type": "Authenticate", "baseVersion": 0, "tokenType": "Admin", "value": token})
            await client.send({"type": "Mutation", "requestId": 0, "udfPath": "accounts:close", "args": [{"owner": "adm"}]})
            await asyncio.sleep(0.3)
            await client.close()
    second_out = stop(second)
    assert "Tape committer serving" in second_out
    assert key not in second_out, "the admin key appeared in the server's output after the first start"
    assert stat.S_IMODE((data / "admin_key").stat().st_mode) == 0o600


def test_admin_key_file_is_not_readable_by_others_even_with_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        from gateway.admin import AdminKey
        key = AdminKey(tmp_path / "d")
    finally:
        os.umask(old)
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600
    assert key.value not in repr(key)
