"""An in-process node serving both its API and its site (HTTP actions), as `gateway.server.serve` does."""
from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from aiohttp.test_utils import TestServer

from engine.app import App
from gateway.config import ServerConfig
from gateway.node import Node
from gateway.server import build_app, runner_options
from gateway.site import build_site_app


@asynccontextmanager
async def served_site(app_dir: Path, data: Path, **config: Any) -> AsyncIterator[tuple[Node, str, str]]:
    """A started node serving `app_dir`: yields (node, API URL, site URL)."""
    settings = ServerConfig(app_dir=app_dir, data_dir=data, **config)
    node = Node(settings, App.load(app_dir))
    api = TestServer(build_app(node))
    await api.start_server(**runner_options(settings))  # (starts the node)
    site = TestServer(build_site_app(node))
    try:
        await site.start_server(**runner_options(settings))
        yield node, f"http://{api.host}:{api.port}", f"http://{site.host}:{site.port}"
    finally:
        await site.close()
        await api.close()
