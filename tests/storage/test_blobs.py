"""The local blob store: content addressing, durability steps, limits, aborts and key checks."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from storage import BlobError, BlobMissing, BlobTooLarge, LocalBlobStore, blob_key, key_from_sha256_base64, link_store


async def chunks(*parts: bytes):  # type: ignore[no-untyped-def]
    for part in parts:
        yield part


async def test_put_stores_by_sha256_and_dedups(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    info = await store.put(chunks(b"hello ", b"world"))
    key = hashlib.sha256(b"hello world").hexdigest()
    assert (info.key, info.size) == (key, 11)
    assert store.path(key) == tmp_path / "blobs" / key[:2] / key
    assert store.path(key).read_bytes() == b"hello world"
    assert key_from_sha256_base64(info.sha256_base64) == key
    again = await store.put(chunks(b"hello world"))
    assert again == info and list(store.keys()) == [key]
    assert store.exists(key) and store.size(key) == 11 and store.verify(key)
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    with store.open(key) as f:
        assert f.read() == b"hello world"
    assert oct(store.path(key).stat().st_mode & 0o777) == oct(0o600)


async def test_limit_and_failures_leave_nothing(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(BlobTooLarge, match="10 byte limit"):
        await store.put(chunks(b"12345", b"678901"), max_bytes=10)

    async def broken():  # type: ignore[no-untyped-def]
        yield b"partial"
        raise ConnectionResetError("client went away")
    with pytest.raises(ConnectionResetError):
        await store.put(broken())

    async def broken_large():  # type: ignore[no-untyped-def]
        for _ in range(24):  # past WRITE_BATCH: written to a temporary file as it arrives
            yield b"z" * (64 << 10)
        raise ConnectionResetError("client went away")
    with pytest.raises(ConnectionResetError):
        await store.put(broken_large())
    with pytest.raises(BlobTooLarge):
        await store.put(broken_large(), max_bytes=1200 << 10)
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    assert list(store.keys()) == []
    assert (await store.put(chunks(b"0123456789"), max_bytes=10)).size == 10


def test_sync_writes_damage_and_deletes(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    a = store.put_bytes(b"a" * 3_000_000)
    b = store.put_file(io.BytesIO(b"b" * 10))
    assert sorted(store.keys()) == sorted([a.key, b.key])
    path = store.path(a.key)
    os.chmod(path, 0o600)
    with open(path, "r+b") as f:
        f.write(b"X")
    assert not store.verify(a.key) and store.verify(b.key)
    store.delete(b.key)
    store.delete(b.key)  # absent: no error
    assert not store.exists(b.key) and not store.verify(b.key) and store.size(b.key) is None
    with pytest.raises(BlobMissing):
        store.open(b.key)
    (store.tmp).mkdir(exist_ok=True)
    (store.tmp / "upload-left-by-a-crash").write_bytes(b"junk")
    assert store.clear_temporary() == 1


def test_keys_are_checked_before_touching_paths(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    for bad in ["../../admin_key", "ab/../../x", "A" * 64, "0" * 63, "", None, "0" * 64 + "/"]:
        with pytest.raises(BlobError):
            store.path(bad)  # type: ignore[arg-type]
        with pytest.raises(BlobError):
            blob_key(bad)
    with pytest.raises(BlobError):
        key_from_sha256_base64("not base64!")


def test_link_store_shares_every_blob(tmp_path: Path) -> None:
    src = LocalBlobStore(tmp_path / "a")
    keys = {src.put_bytes(bytes([i]) * 100).key for i in range(5)}
    assert link_store(tmp_path / "a", tmp_path / "b") == 5
    dst = LocalBlobStore(tmp_path / "b")
    assert set(dst.keys()) == keys and all(dst.verify(k) for k in keys)
    assert link_store(tmp_path / "a", tmp_path / "b") == 0
