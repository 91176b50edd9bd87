"""Helpers for the isolation tests: an in-process node with a custom `ServerConfig`, raw sockets.

`tape dev` takes no flags for the isolation bounds, so tests that need small
bounds run the node in-process, served exactly as `gateway.server.serve`
serves it (`build_app` + `runner_options`) on an aiohttp test server.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from aiohttp.test_utils import TestServer

from engine.app import App
from gateway.config import ServerConfig
from gateway.node import Node
from gateway.server import build_app, runner_options

APPS = Path(__file__).resolve().parents[1] / "apps"


@asynccontextmanager
async def served_node(data: Path, app: str = "kitchen", **config: Any) -> AsyncIterator[tuple[Node, str]]:
    """A started node serving `app` with `config` overrides: yields (node, base URL)."""
    settings = ServerConfig(app_dir=APPS / app, data_dir=data, **config)
    node = Node(settings, App.load(APPS / app))
    server = TestServer(build_app(node))
    await server.start_server(**runner_options(settings))
    try:
        yield node, f"http://{server.host}:{server.port}"
    finally:
        await server.close()


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> bytes | None:
    """Read until the server closes the connection: everything it sent, or None if still open after `timeout`."""
    data = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return None
            chunk = await asyncio.wait_for(reader.read(65536), left)
            if not chunk:
                return data
            data += chunk
    except asyncio.TimeoutError:
        return None
    except ConnectionError:
        return data


async def raw_request(url: str, head: bytes, body: bytes = b"", timeout: float = 10.0) -> tuple[int, bytes]:
    """Send raw request bytes (`head` without the final blank line), read until close: (status, body)."""
    host, port = host_port(url)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        raw = await closed_within(reader, timeout)
    finally:
        writer.close()
    assert raw is not None, "the server neither answered nor closed"
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), payload
