"""Stored files through a replica: uploads and file URLs are redirected to the committer, which holds the blobs."""
from __future__ import annotations

import asyncio
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
from gateway.replica import ADMIN_KEY_ENV
from gateway.server import build_app

APPS = Path(__file__).resolve().parents[1] / "apps"


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Any]:
    servers: list[TestServer] = []

    async def start(name: str = "committer", **config: Any) -> tuple[Node, str]:
        node = Node(ServerConfig(app_dir=APPS / "files", data_dir=tmp_path / name, **config), App.load(APPS / "files"))
        server = TestServer(build_app(node), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        url = str(server.make_url("/")).rstrip("/")
        node.runtime.storage.base_url = url  # (the test server's port is known only now)
        return node, url
    yield start
    for server in reversed(servers):
        await server.close()


async def call(s: aiohttp.ClientSession, url: str, kind: str, path: str, args: dict | None = None) -> Any:  # type: ignore[type-arg]
    async with s.post(f"{url}/api/{kind}", data=orjson.dumps({"path": path, "args": args or {}})) as r:
        body = orjson.loads(await r.read())
    assert body["status"] == "success", body
    return body["value"]


async def test_replica_redirects_uploads_and_downloads_to_the_committer(serve, tmp_path, monkeypatch) -> None:
    committer, committer_url = await serve()
    monkeypatch.setenv(ADMIN_KEY_ENV, committer.admin.value)
    _replica, replica_url = await serve(name="replica", role="replica", committer_url=committer_url,
                                        log_url=str(tmp_path / "committer" / "log"))
    async with aiohttp.ClientSession() as s:
        upload_url = await call(s, replica_url, "mutation", "files:generate_upload_url")  # runs on the committer
        assert upload_url.startswith(committer_url)
        async with s.post(upload_url.replace(committer_url, replica_url), data=b"via the replica",
                          headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 200 and r.history and r.history[0].status == 307
            storage_id = (await r.json())["storageId"]
        deadline = time.monotonic() + 10
        while (url := await call(s, replica_url, "query", "files:url", {"storage_id": storage_id})) is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert url == f"{replica_url}/api/storage/{storage_id}"
        async with s.get(url) as r:
            assert r.status == 200 and await r.read() == b"via the replica"
            assert str(r.url).startswith(committer_url)
