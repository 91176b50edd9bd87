"""File storage end to end against a real `tape dev` server: upload URLs, downloads, and every refusal."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
from pathlib import Path

import aiohttp
import orjson
import pytest

from engine.storage import UploadToken
from gateway.storage_api import TOKEN_SECRET_LABEL
from tests.gateway.served_node import closed_within, host_port, raw_request, served_node


async def _once(data: bytes):  # type: ignore[no-untyped-def]
    yield data


async def call(s: aiohttp.ClientSession, url: str, kind: str, path: str, args: dict | None = None) -> object:  # type: ignore[type-arg]
    async with s.post(f"{url}/api/{kind}", data=orjson.dumps({"path": path, "args": args or {}})) as r:
        body = orjson.loads(await r.read())
    assert body["status"] == "success", body
    return body["value"]


async def upload(s: aiohttp.ClientSession, upload_url: str, data: bytes, content_type: str = "image/png") -> tuple[int, dict]:  # type: ignore[type-arg]
    async with s.post(upload_url, data=data, headers={"Content-Type": content_type}) as r:
        return r.status, await r.json()


async def test_upload_download_ranges_etags_and_actions(server_factory) -> None:
    server = server_factory("files")
    data = bytes(range(256)) * 4096  # 1 MiB
    async with aiohttp.ClientSession() as s:
        upload_url = await call(s, server.url, "mutation", "files:generate_upload_url")
        assert upload_url.startswith(server.url + "/api/storage/upload?token=")
        status, body = await upload(s, upload_url, data)
        assert status == 200, body
        storage_id = body["storageId"]
        await call(s, server.url, "mutation", "files:save", {"storage_id": storage_id, "name": "pic.png"})
        [row] = await call(s, server.url, "query", "files:listing")
        assert row["size"] == len(data) and row["contentType"] == "image/png"
        [meta] = await call(s, server.url, "query", "files:stored")
        assert set(meta) == {"_id", "_creationTime", "sha256", "size", "contentType"}
        assert meta["sha256"] == __import__("base64").b64encode(hashlib.sha256(data).digest()).decode()
        file_url = row["url"]
        assert file_url == f"{server.url}/api/storage/{storage_id}"
        async with s.get(file_url) as r:
            assert r.status == 200 and await r.read() == data
            assert r.headers["Content-Type"] == "image/png" and int(r.headers["Content-Length"]) == len(data)
            etag = r.headers["ETag"]
            assert etag == f'"{hashlib.sha256(data).hexdigest()}"'
        async with s.get(file_url, headers={"If-None-Match": etag}) as r:
            assert r.status == 304 and await r.read() == b""
        async with s.get(file_url, headers={"Range": "bytes=10-19"}) as r:
            assert r.status == 206 and await r.read() == data[10:20]
            assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
        async with s.get(file_url, headers={"Range": "bytes=-5"}) as r:
            assert r.status == 206 and await r.read() == data[-5:]
        async with s.get(file_url, headers={"Range": f"bytes={len(data)}-"}) as r:
            assert r.status == 416 and r.headers["Content-Range"] == f"bytes */{len(data)}"
        async with s.head(file_url) as r:
            assert r.status == 200 and int(r.headers["Content-Length"]) == len(data)
        # A page on another origin may upload: preflight and answer carry CORS headers.
        async with s.options(upload_url, headers={"Origin": "http://app.example", "Access-Control-Request-Method":
                                                  "POST", "Access-Control-Request-Headers": "content-type"}) as r:
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "*"
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
        # A second use of the URL, after success: refused, the first file is untouched.
        async with s.post(upload_url, data=b"other bytes", headers={"Origin": "http://app.example"}) as r:
            assert r.status == 409 and (await r.json())["code"] == "UploadUrlUsed"
            assert r.headers["Access-Control-Allow-Origin"] == "*"
        # Delete: the document goes (URL 404, get_url None), the blob stays for restores.
        await call(s, server.url, "mutation", "files:remove", {"storage_id": storage_id})
        assert await call(s, server.url, "query", "files:url", {"storage_id": storage_id}) is None
        async with s.get(file_url) as r:
            assert r.status == 404 and (await r.json())["code"] == "NotFound"
    key = hashlib.sha256(data).hexdigest()
    assert (server.data_dir / "blobs" / key[:2] / key).read_bytes() == data
    await actions_store_get_and_delete(server)


async def actions_store_get_and_delete(server) -> None:  # type: ignore[no-untyped-def]
    """Actions: store, get_url, get, upload URLs and delete (called by the test above, on its server)."""
    async with aiohttp.ClientSession() as s:
        stored = await call(s, server.url, "action", "files:store_text", {"text": "héllo"})
        async with s.get(stored["url"]) as r:
            assert await r.text() == "héllo" and r.headers["Content-Type"] == "text/plain"
        async with s.get(stored["url"], headers={"Range": "bytes=1-2"}) as r:  # a small file: one read
            assert r.status == 206 and await r.read() == "é".encode()
            assert r.headers["Content-Range"] == "bytes 1-2/6"
        async with s.head(stored["url"]) as r:
            assert r.status == 200 and r.headers["Content-Length"] == "6" and await r.read() == b""
        assert await call(s, server.url, "action", "files:read_text", {"storage_id": stored["id"]}) == "héllo"
        url = await call(s, server.url, "action", "files:upload_url_in_action")
        status, body = await upload(s, url, b"from an action's url")
        assert status == 200
        await call(s, server.url, "action", "files:delete_in_action", {"storage_id": stored["id"]})
        assert await call(s, server.url, "action", "files:read_text", {"storage_id": stored["id"]}) is None
        async with s.post(f"{server.url}/api/action", data=orjson.dumps(
                {"path": "files:delete_in_action", "args": {"storage_id": stored["id"]}})) as r:
            body = orjson.loads(await r.read())
        assert body["status"] == "error" and "no stored file" in body["errorMessage"]
        async with s.post(f"{server.url}/api/query", data=orjson.dumps(
                {"path": "files:url", "args": {"storage_id": "not-an-id"}})) as r:
            body = orjson.loads(await r.read())
        assert body["status"] == "error" and "_storage" in body["errorMessage"]


async def test_bad_upload_urls_and_ids(server_factory) -> None:
    server = server_factory("files", extra=["--max-upload-bytes", "1000"])
    async with aiohttp.ClientSession() as s:
        upload_url = await call(s, server.url, "mutation", "files:generate_upload_url")
        token = upload_url.split("token=")[1]
        base = f"{server.url}/api/storage/upload"
        for url, status, code in [
            (base, 400, "InvalidUploadToken"),
            (base + "?token=garbage", 400, "InvalidUploadToken"),
            (base + "?token=" + token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"), 403, "InvalidUploadToken"),
        ]:
            got, body = await upload(s, url, b"x")
            assert (got, body["code"]) == (status, code), (url, body)
        # Too large: by Content-Length before reading, and streamed (chunked) past the limit.
        got, body = await upload(s, upload_url, b"x" * 1001)
        assert got == 413 and body["code"] == "PayloadTooLarge"

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(20):
                yield b"y" * 100
        async with s.post(upload_url, data=chunks()) as r:
            assert r.status == 413
        got, body = await upload(s, upload_url, b"x", content_type="a" * 300)
        assert got == 400 and body["code"] == "InvalidContentType"
        # The URL still works for a file within the limit: refusals use nothing up.
        got, body = await upload(s, upload_url, b"small")
        assert got == 200
        # Unknown, malformed and path-traversing ids never reach the disk.
        for path in ["/api/storage/" + body["storageId"][:-2] + "zz", "/api/storage/nope",
                     "/api/storage/..%2F..%2Fadmin_key", "/api/storage/%2e%2e"]:
            async with s.get(server.url + path) as r:
                assert r.status == 404, path
        status, _ = await raw_request(server.url, b"GET /api/storage/../../admin_key HTTP/1.1\r\nHost: x\r\n")
        assert status == 404
    tmp = server.data_dir / "blobs" / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []
    await expired_upload_url_is_refused(server)


async def expired_upload_url_is_refused(server) -> None:  # type: ignore[no-untyped-def]
    """A token past its expiry, signed with the deployment's secret, gets 410 (called by the test above)."""
    key = (server.data_dir / "admin_key").read_text().strip()
    secret = hmac.new(key.encode(), TOKEN_SECRET_LABEL, hashlib.sha256).digest()
    async with aiohttp.ClientSession() as s:
        fresh = await call(s, server.url, "mutation", "files:generate_upload_url")
        storage_id = UploadToken.verify(fresh.split("token=")[1], secret).storage_id
        expired = UploadToken(storage_id, 1).sign(secret)
        got, body = await upload(s, f"{server.url}/api/storage/upload?token={expired}", b"late")
        assert got == 410 and body["code"] == "UploadUrlExpired"


async def test_disconnect_mid_upload_stores_nothing(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", app="files") as (node, url):
        node.runtime.storage.base_url = url
        upload_url = node.runtime.storage.upload_url()
        host, port = host_port(url)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"POST {upload_url.removeprefix(url)} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
                     .encode() + b"z" * 3_000_000)
        await writer.drain()
        tmp = tmp_path / "data" / "blobs" / "tmp"
        for _ in range(200):  # the server has started writing the upload
            if tmp.is_dir() and any(tmp.iterdir()):
                break
            await asyncio.sleep(0.01)
        assert any(tmp.iterdir())
        writer.transport.abort()  # the client vanishes mid-body
        for _ in range(200):
            if not any(tmp.iterdir()):
                break
            await asyncio.sleep(0.01)
        assert list(tmp.iterdir()) == []
        assert [p for p in (tmp_path / "data" / "blobs").iterdir() if p.name != "tmp"] == []
        async with aiohttp.ClientSession() as s:
            assert await call(s, url, "query", "files:stored") == []
            status, body = await upload(s, upload_url, b"retry")  # the URL was not used up
            assert status == 200


def test_official_npm_client_uploads_through_generate_upload_url(server_factory) -> None:
    from tests.gateway.test_official_js_client import run_ok
    server = server_factory("files")
    events = run_ok("upload_file.mjs", {"url": server.url, "size": 300_000, "contentType": "image/png"})
    uploaded = next(e for e in events if e["event"] == "uploaded")
    done = events[-1]
    assert uploaded["status"] == 200 and done["storageId"] == uploaded["storageId"]
    assert done["bytes"] == 300_000 and done["size"] == 300_000 and done["contentType"] == "image/png"
    assert done["fileUrl"] == f"{server.url}/api/storage/{done['storageId']}"
    updates = [e["files"] for e in events if e["event"] == "update"]
    assert updates[0] == [] and len(updates[-1]) == 1  # the live query saw the stored file arrive


async def test_slow_upload_is_cut_off_after_upload_timeout(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", app="files", upload_timeout=0.5) as (node, url):
        node.runtime.storage.base_url = url
        upload_url = node.runtime.storage.upload_url()
        host, port = host_port(url)
        reader, writer = await asyncio.open_connection(host, port)
        path = upload_url.removeprefix(url)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode() + b"a" * 10)
        await writer.drain()
        raw = await closed_within(reader, 5.0)
        writer.close()
        assert raw is not None and raw.startswith(b"HTTP/1.1 408") and b"RequestTimeout" in raw
        tmp = tmp_path / "data" / "blobs" / "tmp"
        assert not tmp.exists() or list(tmp.iterdir()) == []
        assert await node.runtime.storage.blobs.put(_once(b"")) is not None  # the store still works


@pytest.mark.soak
async def test_one_gib_upload_and_download_with_flat_memory(server_factory) -> None:
    server = server_factory("files", extra=["--max-upload-bytes", str(2 << 30)])
    pid = server.proc.pid
    chunk = bytes(range(256)) * 4096  # 1 MiB

    def peak_mib() -> float:
        line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    async def body():  # type: ignore[no-untyped-def]
        for _ in range(1024):
            yield chunk
    before = peak_mib()
    digest = hashlib.sha256()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as s:
        upload_url = await call(s, server.url, "mutation", "files:generate_upload_url")
        async with s.post(upload_url, data=body(), headers={"Content-Type": "application/octet-stream"}) as r:
            assert r.status == 200, await r.text()
            storage_id = (await r.json())["storageId"]
        got = 0
        async with s.get(f"{server.url}/api/storage/{storage_id}") as r:
            async for part in r.content.iter_chunked(1 << 20):
                digest.update(part)
                got += len(part)
    assert got == 1 << 30
    expected = hashlib.sha256()
    for _ in range(1024):
        expected.update(chunk)
    assert digest.hexdigest() == expected.hexdigest()
    assert peak_mib() - before < 64, (before, peak_mib())  # streamed: a 1 GiB file never sits in memory
