"""Blob stores: where the bytes of stored files live, addressed by their SHA-256.

`BlobStore` is the interface the rest of Tape uses; `LocalBlobStore` keeps
blobs in a directory (``DATA_DIR/blobs``): ``<first two hex digits>/<sha256
hex>``, written through ``tmp/`` and renamed into place once fsynced. An
S3-compatible object store would be a second implementation of the same
interface (content-addressed keys map directly to object names); it is not
built.

Durability: `BlobWriter.finish` returns only after the blob's bytes, its
directory entry and (when new) its fan-out directory are fsynced, so a blob
whose key was handed out survives a crash. A write that fails, is aborted or
goes past its size limit leaves nothing behind (its temporary file is removed).
Keys are checked against ``^[0-9a-f]{64}$`` before they touch a path, so no
key can name a file outside the store.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterable, BinaryIO, Iterator, Protocol

from log.directory import fsync_dir

BLOBS_DIR = "blobs"
"""The blob store's directory inside a data directory."""
STORAGE_TABLE = "_storage"
"""The system table of stored files: one document per file (``sha256`` in base64, ``size``, ``contentType``)."""
TMP_DIR = "tmp"
READ_CHUNK = 1 << 20
WRITE_BATCH = 1 << 20  # `put` hands a stream to its worker thread in batches of this many bytes
_KEY = re.compile(r"[0-9a-f]{64}")


class BlobError(Exception):
    """A blob cannot be stored or read."""


class BlobMissing(BlobError):
    """No blob has this key."""


class BlobTooLarge(BlobError):
    """A blob being written went past its size limit (nothing was stored)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is larger than the {limit} byte limit")
        self.limit = limit


def blob_key(key: object) -> str:
    """`key` if it is a blob key (64 lowercase hex digits: a SHA-256); BlobError otherwise."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise BlobError(f"not a blob key (64 hex digits of a SHA-256): {key!r}")
    return key


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A stored blob: its key (SHA-256 in hex) and size in bytes."""

    key: str
    size: int

    @property
    def sha256_base64(self) -> str:
        """The SHA-256 in base64, as Convex's `_storage.sha256` field holds it."""
        return base64.b64encode(bytes.fromhex(self.key)).decode("ascii")


def key_from_sha256_base64(value: str) -> str:
    """The blob key (hex) of a `_storage.sha256` value (base64); BlobError if it is not one."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (ValueError, TypeError):
        raise BlobError(f"not a base64 SHA-256: {value!r}") from None
    if len(raw) != 32:
        raise BlobError(f"not a base64 SHA-256: {value!r}")
    return raw.hex()


def key_of(doc: dict[str, object]) -> str:
    """The blob key of a `_storage` document; BlobError if its ``sha256`` is not one."""
    return key_from_sha256_base64(str(doc.get("sha256")))


class BlobWriter(Protocol):
    """One blob being written: `write` chunks, then `finish` (durable) or `abort` (nothing kept)."""

    def write(self, chunk: bytes) -> None: ...

    def finish(self) -> BlobInfo: ...

    def abort(self) -> None: ...


class BlobStore(Protocol):
    """Where file bytes live (see the module docstring). Implementations: `LocalBlobStore`."""

    def writer(self, max_bytes: int | None = None) -> BlobWriter:
        """Start writing a blob of at most `max_bytes` bytes (`write` raises BlobTooLarge past it)."""
        ...

    async def put(self, chunks: AsyncIterable[bytes], max_bytes: int | None = None) -> BlobInfo:
        """Store a stream of chunks; returns once the blob is durable. Nothing is kept if it fails."""
        ...

    def put_bytes(self, data: bytes) -> BlobInfo:
        """Store `data` (blocking); returns once the blob is durable."""
        ...

    def open(self, key: str) -> BinaryIO:
        """The blob's bytes, for reading (seekable); BlobMissing if absent."""
        ...

    def size(self, key: str) -> int | None:
        """The blob's size, or None if absent."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove a blob (no error if absent)."""
        ...

    def keys(self) -> Iterator[str]:
        """Every stored blob's key."""
        ...

    def verify(self, key: str) -> bool:
        """Whether the blob's bytes still hash to its key (False if absent)."""
        ...


class _LocalWriter:
    """A blob being written to a temporary file of a `LocalBlobStore`."""

    def __init__(self, store: "LocalBlobStore", max_bytes: int | None) -> None:
        self._store = store
        self._max = max_bytes
        self._hash = hashlib.sha256()
        self._size = 0
        store.ensure_tmp()
        self._tmp = store.tmp / f"upload-{secrets.token_hex(12)}"
        self._fd: int | None = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write(self, chunk: bytes) -> None:
        if self._fd is None:
            raise BlobError("the blob writer is closed")
        self._size += len(chunk)
        if self._max is not None and self._size > self._max:
            self.abort()
            raise BlobTooLarge(self._max)
        self._hash.update(chunk)
        view = memoryview(chunk)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def finish(self) -> BlobInfo:
        """fsync the bytes, rename into place, fsync the directories; the blob is then durable."""
        if self._fd is None:
            raise BlobError("the blob writer is closed")
        try:
            os.fsync(self._fd)
        except BaseException:
            self.abort()
            raise
        os.close(self._fd)
        self._fd = None
        info = BlobInfo(self._hash.hexdigest(), self._size)
        placed = False
        try:
            placed = self._store._place(self._tmp, info.key)
        finally:
            if not placed:  # the same bytes were stored already, or placing failed
                self._tmp.unlink(missing_ok=True)
        return info

    def abort(self) -> None:
        """Drop what was written (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._tmp.unlink(missing_ok=True)


class LocalBlobStore:
    """Content-addressed blobs in a local directory (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / TMP_DIR
        self._tmp_ready = False

    def ensure_tmp(self) -> None:
        """Create the directory of blobs being written (once)."""
        if not self._tmp_ready:
            self.tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._tmp_ready = True

    def path(self, key: str) -> Path:
        """The file of blob `key` (which is checked: a path never escapes the store)."""
        key = blob_key(key)
        return self.root / key[:2] / key

    def clear_temporary(self) -> int:
        """Remove writes a crash interrupted (call only when no writer runs); returns how many."""
        if not self.tmp.is_dir():
            return 0
        removed = 0
        for entry in self.tmp.iterdir():
            entry.unlink(missing_ok=True)
            removed += 1
        return removed

    def writer(self, max_bytes: int | None = None) -> _LocalWriter:
        return _LocalWriter(self, max_bytes)

    async def put(self, chunks: AsyncIterable[bytes], max_bytes: int | None = None) -> BlobInfo:
        """Store a stream; every file system call (and the hashing) runs on a worker thread, off the event loop.

        Chunks are handed over in batches of `WRITE_BATCH` bytes (one worker call
        each, so memory stays flat); a body smaller than that is created, written,
        fsynced and placed in a single worker call.
        """
        loop = asyncio.get_running_loop()
        pending: list[bytes] = []
        size = batched = 0
        opened: list[_LocalWriter] = []  # the writer, once a worker created it (even if we were cancelled)
        try:
            async for chunk in chunks:
                pending.append(chunk)
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise BlobTooLarge(max_bytes)
                if size - batched >= WRITE_BATCH:
                    await loop.run_in_executor(None, self._write_batch, pending, max_bytes, opened, False)
                    pending, batched = [], size
            info = await loop.run_in_executor(None, self._write_batch, pending, max_bytes, opened, True)
            assert info is not None
            return info
        except BaseException:
            for writer in opened:
                writer.abort()
            raise

    def _write_batch(self, chunks: list[bytes], max_bytes: int | None, opened: list["_LocalWriter"],
                     finish: bool) -> BlobInfo | None:
        """(On a worker.) Write `chunks`, creating the writer first if needed; with `finish`, make it durable."""
        if not opened:
            opened.append(self.writer(max_bytes))
        writer = opened[0]
        for chunk in chunks:
            writer.write(chunk)
        return writer.finish() if finish else None

    def put_file(self, source: BinaryIO, max_bytes: int | None = None) -> BlobInfo:
        """Store the rest of a readable file (blocking); returns once durable."""
        writer = self.writer(max_bytes)
        try:
            while chunk := source.read(READ_CHUNK):
                writer.write(chunk)
            return writer.finish()
        except BaseException:
            writer.abort()
            raise

    def put_bytes(self, data: bytes) -> BlobInfo:
        """Store `data` (blocking); returns once durable."""
        writer = self.writer()
        try:
            writer.write(data)
            return writer.finish()
        except BaseException:
            writer.abort()
            raise

    def _place(self, tmp: Path, key: str) -> bool:
        """Rename `tmp` to blob `key` durably; False (nothing done) when that blob exists already."""
        final = self.path(key)
        if final.exists():
            return False  # the same bytes are stored already (and were fsynced when they were)
        new_dir = not final.parent.is_dir()
        final.parent.mkdir(mode=0o700, exist_ok=True)
        os.rename(tmp, final)
        fsync_dir(final.parent)
        if new_dir:
            fsync_dir(self.root)
        return True

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except FileNotFoundError:
            raise BlobMissing(f"blob {key} is missing from {self.root}") from None

    def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(path.parent)

    def keys(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for fan in sorted(self.root.iterdir()):
            if fan.name == TMP_DIR or not fan.is_dir():
                continue
            for entry in sorted(fan.iterdir()):
                if _KEY.fullmatch(entry.name) and entry.name[:2] == fan.name:
                    yield entry.name

    def verify(self, key: str) -> bool:
        digest = hashlib.sha256()
        try:
            with self.open(key) as f:
                while chunk := f.read(READ_CHUNK):
                    digest.update(chunk)
        except BlobMissing:
            return False
        return digest.hexdigest() == key


def link_store(source: Path, dest: Path) -> int:
    """Give `dest` (a new blob directory) every blob of `source`: hard links, or copies across file systems.

    Blobs are immutable, so a link shares bytes safely. Returns how many blobs; everything is fsynced.
    """
    src, dst = LocalBlobStore(source), LocalBlobStore(dest)
    count = 0
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    fans: set[Path] = set()
    for key in src.keys():
        target = dst.path(key)
        if target.exists():
            continue
        target.parent.mkdir(mode=0o700, exist_ok=True)
        fans.add(target.parent)
        try:
            os.link(src.path(key), target)
        except OSError:
            with src.open(key) as f:
                dst.put_file(f)
        count += 1
    for fan in fans:
        fsync_dir(fan)
    fsync_dir(dest)
    return count
