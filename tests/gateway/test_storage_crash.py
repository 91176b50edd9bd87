"""SIGKILL between a blob's fsync and its `_storage` commit: no id was acknowledged, nothing dangles."""
from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import orjson

from ops import cli
from tests.gateway.served_node import served_node


async def call(s: aiohttp.ClientSession, url: str, kind: str, path: str, args: dict | None = None) -> object:  # type: ignore[type-arg]
    async with s.post(f"{url}/api/{kind}", data=orjson.dumps({"path": path, "args": args or {}})) as r:
        body = orjson.loads(await r.read())
    assert body["status"] == "success", body
    return body["value"]


async def test_sigkill_after_blob_fsync_before_commit(server_factory, tmp_path) -> None:
    data_dir = tmp_path / "data"
    server = server_factory("files", data=data_dir, extra=["--function-timeout", "20"])
    payload = b"\x89PNG" + bytes(range(256)) * 8000
    key = hashlib.sha256(payload).hexdigest()
    blob = data_dir / "blobs" / key[:2] / key
    async with aiohttp.ClientSession() as s:
        upload_url = await call(s, server.url, "mutation", "files:generate_upload_url")
        # Keep the single writer busy, so the upload's commit waits in its queue after the blob is durable.
        hold = asyncio.create_task(call(s, server.url, "mutation", "files:hold_writer", {"seconds": 8}))
        await asyncio.sleep(0.3)

        async def send() -> tuple[int, bytes]:
            async with s.post(upload_url, data=payload, headers={"Content-Type": "image/png"}) as r:
                return r.status, await r.read()
        upload = asyncio.create_task(send())
        for _ in range(500):
            if blob.exists():
                break
            await asyncio.sleep(0.01)
        assert blob.exists(), "the blob was not placed"
        assert not upload.done()
        server.kill()
        results = await asyncio.gather(upload, hold, return_exceptions=True)
        assert all(isinstance(r, Exception) for r in results), results  # nobody got an answer
    assert blob.read_bytes() == payload  # fsynced before the commit was even queued
    # No document names it: an orphan, which `tape doctor --collect-blobs` removes (the log is unchanged).
    assert await asyncio.to_thread(cli.main, ["doctor", "--data", str(data_dir), "--collect-blobs"]) == 0
    assert not blob.exists()
    async with served_node(data_dir, app="files") as (_, restarted), aiohttp.ClientSession() as s:
        assert await call(s, restarted, "query", "files:stored") == []  # no document without an answer
        async with s.post(upload_url.replace(server.url, restarted), data=payload,
                          headers={"Content-Type": "image/png"}) as r:
            assert r.status == 200  # the URL was never used: the retry stores the file
            storage_id = (await r.json())["storageId"]
        [doc] = await call(s, restarted, "query", "files:stored")
        assert doc["_id"] == storage_id and doc["size"] == len(payload)
        async with s.get(f"{restarted}/api/storage/{storage_id}") as r:
            assert await r.read() == payload
