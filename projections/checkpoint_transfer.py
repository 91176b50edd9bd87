"""Moving a checkpoint between machines: a tar stream, verified by SHA-256 digests.

`tar_checkpoint` yields a checkpoint as a plain ustar/GNU tar stream (any
`tar x` unpacks it): ``checkpoint.json``, then ``projection/<file>`` for every
RocksDB file, then (with ``indexes``, which a receiver asks for, so a replica
of an older version still gets only what it knows) the search indexes
``projection/search/<table>/<index>/<file>`` and the saved vector indexes
``vectors/<table>.<index>/<file>``, then ``DIGESTS.json`` mapping every
earlier member to its SHA-256 (computed while streaming, so the files are
read once).
`CheckpointReceiver` unpacks such a stream as it arrives (`feed` chunks,
then `finish`), hashing each member, and refuses the result unless every
digest matches and the stream ended properly; a half-received checkpoint
never becomes a projection. It is written into a temporary directory and
renamed into place only after everything was verified and fsynced.

`pin_checkpoint` hard-links a checkpoint into a private ``.tmp-send-*``
directory first, so the committer's checkpointer may prune the original
while a replica is still downloading it.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any, Iterator

import orjson

from projections.checkpoints import META_FILE, PROJECTION_DIR, TMP_PREFIX, CheckpointInfo, checkpoints_dir
from projections.search import SEARCH_DIR, link_or_copy
from projections.vectors import VECTORS_DIR

DIGESTS_FILE = "DIGESTS.json"
CHUNK = 4 << 20
BLOCK = 512
MAX_NAME = 4096
_LONG_NAME = "\0long name"  # (a member no stream can name)
_counter = itertools.count()


class CheckpointTransferError(Exception):
    """A checkpoint stream that is damaged, incomplete or does not match its digests (the message says which)."""


def _members(root: Path, indexes: bool = True) -> list[tuple[str, Path]]:
    out = [(META_FILE, root / META_FILE)]
    proj = root / PROJECTION_DIR
    for entry in sorted(os.scandir(proj), key=lambda e: e.name):
        if entry.is_file() and entry.name != "LOCK":
            out.append((f"{PROJECTION_DIR}/{entry.name}", Path(entry.path)))
    if indexes:
        for sub in (proj / SEARCH_DIR, root / VECTORS_DIR):
            for path in sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.endswith(".lock")):
                out.append((path.relative_to(root).as_posix(), path))
    return out


def _allowed_member(name: str) -> bool:
    """Whether `name` is a path a checkpoint stream may hold (never outside the checkpoint's directory)."""
    if name in (META_FILE, DIGESTS_FILE):
        return True
    parts = name.split("/")
    if any(p in ("", ".", "..") or "\\" in p for p in parts):
        return False
    if parts[0] == PROJECTION_DIR:
        return len(parts) == 2 or (len(parts) == 5 and parts[1] == SEARCH_DIR)
    return parts[0] == VECTORS_DIR and len(parts) == 3


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _pad(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def checkpoint_size(root: Path, indexes: bool = True) -> int:
    """Bytes of the files a transfer of the checkpoint at `root` sends (without tar framing)."""
    return sum(p.stat().st_size for _, p in _members(root, indexes))


def tar_checkpoint(root: Path, indexes: bool = True) -> Iterator[bytes]:
    """The checkpoint directory `root` as tar chunks, ending with DIGESTS.json (see the module docstring).

    `indexes`: include the search and vector indexes the checkpoint carries."""
    digests: dict[str, str] = {}
    for name, path in _members(root, indexes):
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            yield _header(name, size)
            h = hashlib.sha256()
            left = size
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise CheckpointTransferError(f"{path} shrank while it was being sent")
                h.update(chunk)
                left -= len(chunk)
                yield chunk
            yield _pad(size)
        digests[name] = h.hexdigest()
    body = orjson.dumps(digests)
    yield _header(DIGESTS_FILE, len(body)) + body + _pad(len(body))
    yield b"\0" * (2 * BLOCK)


def pin_checkpoint(info: CheckpointInfo, data_dir: Path) -> Path:
    """A private hard-linked copy of checkpoint `info` (under DATA/checkpoints/.tmp-send-*); delete it after use."""
    dest = checkpoints_dir(data_dir) / f"{TMP_PREFIX}send-{info.offset}-{os.getpid()}-{next(_counter)}"
    (dest / PROJECTION_DIR).mkdir(parents=True)
    try:
        shutil.copy2(info.path / META_FILE, dest / META_FILE)
        for name, path in _members(info.path)[1:]:  # a checkpoint's files are never changed: link them all
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(os.fspath(path), os.fspath(dest / name))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


class CheckpointReceiver:
    """Unpack a `tar_checkpoint` stream into `dest` (a new directory), verifying every member's digest."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.work = dest.with_name(f"{TMP_PREFIX}{dest.name}-{os.getpid()}-{next(_counter)}")
        self.work.mkdir(parents=True)
        (self.work / PROJECTION_DIR).mkdir()
        self._buf = bytearray()
        self._member: tuple[str, int] | None = None  # (name, bytes left)
        self._pad = 0
        self._file: Any = None
        self._hash: Any = None
        self._digests: dict[str, str] = {}
        self._claimed: dict[str, str] | None = None
        self._meta: bytes = b""
        self._long_name: str | None = None  # from a GNU long-name header, for the member after it
        self._ended = False
        self.received = 0

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the stream."""
        self.received += len(data)
        if self._buf:
            self._buf += data
            view = memoryview(bytes(self._buf))
            self._buf = bytearray()
        else:
            view = memoryview(data)
        pos = 0
        while (used := self._step(view, pos)) >= 0:
            pos += used
        if pos < len(view):
            self._buf += view[pos:]

    def _step(self, view: memoryview, pos: int) -> int:
        """Consume bytes of `view` from `pos`; returns how many (-1: no progress until more bytes come)."""
        left_in_view = len(view) - pos
        if self._ended:
            return -1
        if self._member is not None:
            name, left = self._member
            if left == 0:
                if left_in_view < self._pad:
                    return -1
                self._close_member(name)
                return self._pad
            if left_in_view == 0:
                return -1
            take = view[pos:pos + min(left, left_in_view)]
            self._hash.update(take)
            if self._file is not None:
                self._file.write(take)
            else:
                self._meta += bytes(take)
            self._member = (name, left - len(take))
            return len(take)
        if left_in_view < BLOCK:
            return -1
        head = bytes(view[pos:pos + BLOCK])
        if head == b"\0" * BLOCK:
            self._ended = True
            return -1
        try:
            info = tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
        except tarfile.TarError as exc:
            raise CheckpointTransferError(f"damaged checkpoint stream at byte {self.received - left_in_view}: "
                                          f"{exc}") from None
        if info.type == tarfile.GNUTYPE_LONGNAME:  # the next member's name, too long for its header
            if info.size > MAX_NAME or self._long_name is not None:
                raise CheckpointTransferError(f"damaged checkpoint stream: a bad long name at byte "
                                              f"{self.received - left_in_view}")
            self._hash, self._file, self._meta = hashlib.sha256(), None, b""
            self._member, self._pad = (_LONG_NAME, info.size), -info.size % BLOCK
            return BLOCK
        name, self._long_name = (self._long_name or info.name), None
        if not _allowed_member(name):
            raise CheckpointTransferError(f"unexpected member {name!r} in the checkpoint stream")
        self._hash = hashlib.sha256()
        if name not in (META_FILE, DIGESTS_FILE):
            (self.work / name).parent.mkdir(parents=True, exist_ok=True)
        self._file = None if name in (META_FILE, DIGESTS_FILE) else open(self.work / name, "wb")
        self._meta = b""
        self._member, self._pad = (name, info.size), -info.size % BLOCK
        return BLOCK

    def _close_member(self, name: str) -> None:
        if name == _LONG_NAME:
            self._long_name = self._meta.rstrip(b"\0").decode("utf-8", "surrogateescape")
            self._member = None
            return
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        if name == DIGESTS_FILE:
            try:
                self._claimed = orjson.loads(self._meta)
            except orjson.JSONDecodeError as exc:
                raise CheckpointTransferError(f"unreadable {DIGESTS_FILE}: {exc}") from None
        else:
            self._digests[name] = self._hash.hexdigest()
            if name == META_FILE:
                (self.work / META_FILE).write_bytes(self._meta)
        self._member = None

    def finish(self) -> dict[str, Any]:
        """Verify and move the checkpoint into place; returns its checkpoint.json. Raises CheckpointTransferError."""
        if not self._ended or self._member is not None or self._claimed is None:
            raise CheckpointTransferError(
                f"the checkpoint stream ended early after {self.received} bytes (no {DIGESTS_FILE} and end marker)")
        if self._claimed != self._digests:
            bad = sorted(k for k in set(self._claimed) | set(self._digests)
                         if self._claimed.get(k) != self._digests.get(k))
            raise CheckpointTransferError(f"checkpoint digests do not match for {', '.join(bad[:5])}")
        meta = orjson.loads((self.work / META_FILE).read_bytes())
        for root, _dirs, _files in os.walk(self.work):
            fd = os.open(root, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.rename(self.work, self.dest)
        fd = os.open(self.dest.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return meta

    def abort(self) -> None:
        """Throw away what was received."""
        if self._file is not None:
            self._file.close()
            self._file = None
        shutil.rmtree(self.work, ignore_errors=True)


__all__ = ["CheckpointReceiver", "CheckpointTransferError", "DIGESTS_FILE", "checkpoint_size", "pin_checkpoint",
           "tar_checkpoint"]
