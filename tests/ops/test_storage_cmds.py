"""Stored files through `tape restore`, `tape export` / `tape import` and `tape doctor`."""
from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import orjson
import pytest

from ops import cli
from tests.gateway.served_node import served_node


async def call(s: aiohttp.ClientSession, url: str, kind: str, path: str, args: dict | None = None) -> object:  # type: ignore[type-arg]
    async with s.post(f"{url}/api/{kind}", data=orjson.dumps({"path": path, "args": args or {}})) as r:
        body = orjson.loads(await r.read())
    assert body["status"] == "success", body
    return body["value"]


async def store(s: aiohttp.ClientSession, url: str, data: bytes, name: str) -> str:
    upload_url = await call(s, url, "mutation", "files:generate_upload_url")
    async with s.post(upload_url, data=data, headers={"Content-Type": "application/pdf"}) as r:
        storage_id = (await r.json())["storageId"]
    await call(s, url, "mutation", "files:save", {"storage_id": storage_id, "name": name})
    return storage_id


async def tape(*args: str) -> int:
    """`tape ARGS` in-process (off this test's event loop, as the CLI runs its own)."""
    return await asyncio.to_thread(cli.main, list(args))


async def fetch(s: aiohttp.ClientSession, url: str, storage_id: str) -> tuple[int, bytes]:
    async with s.get(f"{url}/api/storage/{storage_id}") as r:
        return r.status, await r.read()


async def test_restore_export_import_and_doctor_carry_blobs(server_factory, tmp_path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    first, second = b"first file " * 5000, b"second file " * 7000
    server = server_factory("files", data=data)
    async with aiohttp.ClientSession() as s:
        a = await store(s, server.url, first, "a.pdf")
        async with s.get(server.url + "/version") as r:
            point = int((await r.text()).split("offset=")[1])
        await call(s, server.url, "mutation", "files:remove", {"storage_id": a})
        b = await store(s, server.url, second, "b.pdf")
    server.stop()
    # Collecting orphans keeps the deleted file's blob: the log names it, a restore needs it.
    assert await tape("doctor", "--data", str(data), "--collect-blobs") == 0
    assert "collected 0 orphan blob(s)" in capsys.readouterr().out
    assert len(list((data / "blobs").glob("??/*"))) == 2

    # Restore to before the delete: the deleted file is back, with its bytes.
    assert await tape("restore", "--from", str(data), "--to", f"offset:{point}", "--data", str(tmp_path / "r")) == 0
    # Export the live state (b only) and import it elsewhere, through a zip too.
    assert await tape("export", "--data", str(data), "--out", str(tmp_path / "snap")) == 0
    assert await tape("export", "--data", str(data), "--out", str(tmp_path / "snap.zip")) == 0
    assert "file blobs: 1" in capsys.readouterr().out
    key_b = hashlib.sha256(second).hexdigest()
    assert (tmp_path / "snap" / "blobs" / key_b).read_bytes() == second
    assert [p.name for p in (tmp_path / "snap" / "blobs").iterdir()] == [key_b]
    assert await tape("import", str(tmp_path / "snap.zip"), "--data", str(tmp_path / "i")) == 0

    async with served_node(tmp_path / "r", app="files") as (_, restored), \
            served_node(tmp_path / "i", app="files") as (_, imported), aiohttp.ClientSession() as s:
        assert await fetch(s, restored, a) == (200, first)
        assert (await fetch(s, restored, b))[0] == 404  # stored after the point
        assert [row["name"] for row in await call(s, restored, "query", "files:listing")] == ["a.pdf"]
        assert await fetch(s, imported, b) == (200, second)
        rows = {row["name"]: row for row in await call(s, imported, "query", "files:listing")}
        assert rows["b.pdf"]["storage_id"] == b and rows["b.pdf"]["contentType"] == "application/pdf"
        assert rows["a.pdf"]["url"] is None  # the app's row outlived the deleted file: get_url says so

    # Doctor: healthy, then names the stored file whose blob is damaged and the one whose blob is missing.
    capsys.readouterr()
    assert await tape("doctor", "--data", str(tmp_path / "r")) == 0
    assert "1 stored files checked, 0 missing, 0 damaged" in capsys.readouterr().out
    key_a = hashlib.sha256(first).hexdigest()
    blob_a = tmp_path / "r" / "blobs" / key_a[:2] / key_a
    blob_a.unlink()  # (a hard link: the original data directory keeps its copy)
    with pytest.raises(SystemExit):
        await tape("doctor", "--data", str(tmp_path / "r"))
    out = capsys.readouterr().out
    assert f"stored file missing its bytes: {a} (blob {key_a})" in out
    blob_b = tmp_path / "i" / "blobs" / key_b[:2] / key_b
    blob_b.write_bytes(b"tampered")
    with pytest.raises(SystemExit):
        await tape("doctor", "--data", str(tmp_path / "i"))
    assert f"stored file damaged: {b}" in capsys.readouterr().out
    # An import refuses a snapshot whose blob is damaged, naming the stored file.
    (tmp_path / "snap" / "blobs" / key_b).write_bytes(b"bad")
    assert await tape("import", str(tmp_path / "snap"), "--data", str(tmp_path / "i2")) == 1
    assert f"stored file {b}" in capsys.readouterr().err.replace("\n", "")
