"""FileLog: the embedded commit log: segment files on local disk with group commit.

Directory layout::

    FORMAT                  {"format": "tape.filelog", "version": 1}
    LOCK                    flock()ed by the one process that may append
    COMMITTED               durable end (next offset, last ts, epoch) for followers
    00000000000000000000.seg, ...   frames, see log.codec / log.segment

One FileLog per directory holds the writer lock and appends; any further
FileLog on the same directory (another process or the same one) opens as a
*follower*: it reads and tails, and learns about new durable records by
polling COMMITTED, which the writer updates after every fsync. Segment data is
the truth; COMMITTED only says how far followers may read.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import struct
import time
import zlib
from array import array
from bisect import bisect_left, bisect_right
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

from log.base import Log
from log.codec import encode_payload, frame_from_payload
from log.errors import LogClosedError, LogCorruptError, LogError, LogFormatError, LogWriteError
from log.record import Record
from log.segment import (
    list_segments,
    read_file,
    read_frames,
    scan_buffer,
    segment_name,
    valid_frame_after,
    walk_headers,
)

logger = logging.getLogger("tape.log")

FORMAT_NAME = "tape.filelog"
FORMAT_VERSION = 1
FORMAT_FILE = "FORMAT"
LOCK_FILE = "LOCK"
COMMITTED_FILE = "COMMITTED"
DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_INDEX_BYTES = 4096
_INLINE_READ_BYTES = 64 << 10
_MARK = struct.Struct("<qqqI")  # next offset, last ts, epoch, CRC32 of the rest


@dataclass(slots=True)
class _Seg:
    """A segment as readers see it: only durable frames count."""

    base: int
    path: Path
    size: int
    end: int


@dataclass(slots=True)
class _SegDelta:
    """Growth of one segment (possibly a new one) found by a scan or a commit."""

    base: int
    path: Path
    size: int
    end: int
    last_ts: int
    last_index_pos: int
    index: list[tuple[int, int, int]]
    new: bool


@dataclass(slots=True)
class _Pending:
    """One waiting append: its records, their encoded payloads, its future."""

    records: list[Record]
    payloads: list[bytes]
    fut: asyncio.Future[None]


@dataclass(slots=True)
class _Truncate:
    """A queued truncate(next_offset): runs when no commit is in flight."""

    next_offset: int
    fut: asyncio.Future[None]


@dataclass(slots=True)
class _Chunk:
    """The part of a commit that goes into one segment file."""

    base: int
    path: Path
    start: int
    parts: list[bytes]
    new: bool
    fd: int = -1
    size: int = 0
    end: int = 0
    last_ts: int = 0
    last_index_pos: int = -1
    index: list[tuple[int, int, int]] = field(default_factory=list)


class _State:
    """What readers may see: durable segments and the sparse index over them.

    Mutated only on the event loop thread (or before the log is published).
    """

    def __init__(self) -> None:
        self.segs: list[_Seg] = []
        self.bases: list[int] = []
        self.ix_off = array("q")
        self.ix_ts = array("q")
        self.ix_pos = array("q")
        self.next_offset = 0
        self.last_ts = 0
        self.last_index_pos = -1

    def apply(self, d: _SegDelta) -> None:
        """Take in the growth described by `d`."""
        if d.new:
            self.segs.append(_Seg(d.base, d.path, d.size, d.end))
            self.bases.append(d.base)
        else:
            seg = self.segs[-1]
            seg.size = d.size
            seg.end = d.end
        for off, ts, pos in d.index:
            self.ix_off.append(off)
            self.ix_ts.append(ts)
            self.ix_pos.append(pos)
        self.next_offset = d.end
        self.last_ts = d.last_ts
        self.last_index_pos = d.last_index_pos

    def seg_index(self, offset: int) -> int:
        """Index in `segs` of the segment holding `offset` (< next_offset)."""
        return bisect_right(self.bases, offset) - 1

    def locate(self, offset: int) -> tuple[int, int]:
        """(segment index, file position) of an index entry at or before `offset`."""
        k = bisect_right(self.ix_off, offset) - 1
        i = self.seg_index(offset)
        if k < 0 or self.ix_off[k] < self.segs[i].base:
            return i, 0
        return i, self.ix_pos[k]


class FileLog(Log):
    """The commit log in a local directory (see the module docstring)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        index_bytes: int = DEFAULT_INDEX_BYTES,
        read_only: bool | None = None,
        poll_interval: float = 0.01,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """`read_only`: None = writer if the directory is free, else follower;
        True = always follower; False = writer or LogError."""
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be positive")
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.index_bytes = index_bytes
        self.poll_interval = poll_interval
        self._read_only = read_only
        self._clock = clock
        self._st = _State()
        self._opened = False
        self._closed = False
        self._closing = False
        self._writer = False
        self._lock_fd = -1
        self._mark_fd = -1
        self._fds: dict[Path, int] = {}
        self._broken: str | None = None
        self._epoch = 0  # bumped by truncate(); tells followers to start over
        # writer side (touched only by the writer thread)
        self._w_fd = -1
        self._w_base = 0
        self._w_path = Path()
        self._w_size = 0
        self._w_next = 0
        self._w_last_ts = 0
        self._w_ix_pos = -1
        self._pending: list[_Pending | _Truncate] = []
        self._executor: ThreadPoolExecutor | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._refresh_lock: asyncio.Lock | None = None
        self._new_data: asyncio.Event | None = None

    # ------------------------------------------------------------ properties

    @property
    def is_writer(self) -> bool:
        """True if this instance holds the directory's writer lock."""
        return self._writer

    def next_offset(self) -> int:
        """The number of durable records (= the offset of the next append)."""
        return self._st.next_offset

    def last_ts(self) -> int:
        """The ts of the last durable record, 0 if there is none."""
        return self._st.last_ts

    # ------------------------------------------------------------ open/close

    async def open(self) -> None:
        """Open the directory: take the writer lock if free, scan and recover."""
        if self._opened:
            if self._closed:
                raise LogClosedError(f"{self.directory}: a closed FileLog cannot be reopened")
            return
        self._wake = asyncio.Event()
        self._refresh_lock = asyncio.Lock()
        self._new_data = asyncio.Event()
        await asyncio.to_thread(self._open_sync)
        self._opened = True
        if self._writer:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tape-log-writer")
            self._writer_task = asyncio.create_task(self._writer_loop(), name=f"filelog-writer:{self.directory}")

    def _open_sync(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._read_only is not True:
            self._take_lock()
        try:
            self._check_format()
            if self._writer:
                self._load(repair=True, stop=None)
                self._start_writer_side()
            else:
                mark = self._read_marker()
                self._epoch = mark[1] if mark else 0
                self._load(repair=False, stop=mark[0] if mark else None)
        except BaseException:
            self._release_fds()
            self._writer = False
            raise

    def _take_lock(self) -> None:
        path = self.directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if self._read_only is False:
                raise LogError(f"{path}: another FileLog holds the writer lock") from None
            return
        self._lock_fd = fd
        self._writer = True

    def _check_format(self) -> None:
        path = self.directory / FORMAT_FILE
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if list_segments(self.directory):
                raise LogFormatError(
                    f"{path} is missing but {self.directory} holds segment files: "
                    "not a Tape FileLog directory, or written by an unknown format") from None
            if self._writer:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION}) + "\n")
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
                self._fsync_dir()
            return
        try:
            meta = json.loads(raw)
            name, version = meta["format"], int(meta["version"])
        except (ValueError, KeyError, TypeError) as exc:
            raise LogFormatError(f"{path}: unreadable format file ({exc})") from exc
        if name != FORMAT_NAME:
            raise LogFormatError(f"{path}: format {name!r} is not {FORMAT_NAME!r}")
        if version > FORMAT_VERSION:
            raise LogFormatError(
                f"{path}: log written by format version {version}; this build reads "
                f"versions up to {FORMAT_VERSION} (upgrade Tape to open it)")

    def _load(self, repair: bool, stop: int | None) -> None:
        st = _State()
        for d in self._scan_forward(None, 0, -1, repair, stop):
            st.apply(d)
        self._st = st

    def _start_writer_side(self) -> None:
        st = self._st
        if not st.segs:
            path = self.directory / segment_name(0)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.fsync(fd)
            self._fsync_dir()
            st.apply(_SegDelta(0, path, 0, 0, 0, -1, [], True))
        else:
            fd = os.open(st.segs[-1].path, os.O_WRONLY)
        seg = st.segs[-1]
        self._w_fd, self._w_base, self._w_path, self._w_size = fd, seg.base, seg.path, seg.size
        self._w_next, self._w_last_ts, self._w_ix_pos = st.next_offset, st.last_ts, st.last_index_pos
        old = self._read_marker()
        self._epoch = old[1] if old else 0
        self._mark_fd = os.open(self.directory / COMMITTED_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        self._write_marker(st.next_offset, st.last_ts)

    async def close(self) -> None:
        """Wait for pending appends, stop the writer and release the directory."""
        if self._closed or not self._opened:
            self._closed = True
            return
        self._closing = True
        if self._writer_task is not None:
            assert self._wake is not None
            self._wake.set()
            await asyncio.shield(self._writer_task)
        self._closed = True
        if self._new_data is not None:
            self._new_data.set()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._release_fds()

    def _release_fds(self) -> None:
        for fd in list(self._fds.values()):
            os.close(fd)
        self._fds.clear()
        for name in ("_w_fd", "_mark_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise LogClosedError(f"{self.directory}: log is closed")
        if not self._opened:
            raise LogClosedError(f"{self.directory}: log is not open")

    # ------------------------------------------------------------ scanning

    def _scan_forward(
        self, tail: _Seg | None, last_ts: int, last_ix_pos: int, repair: bool, stop: int | None
    ) -> list[_SegDelta]:
        """Verify frames after the known end (`tail`, None = from scratch).

        Returns the growth found; raises LogCorruptError / LogFormatError for
        damage that is not a torn tail of the last segment. A torn tail is
        truncated away when `repair` (writer), else just not read (follower).
        """
        deltas: list[_SegDelta] = []
        disk: list[tuple[int, Path]] | None = None
        if tail is None:
            disk = list_segments(self.directory)
            if not disk:
                return deltas
            base, path = disk[0]
            if base != 0:
                raise LogCorruptError(
                    f"missing segment: the first segment file is {path}, expected "
                    f"{self.directory / segment_name(0)} (offsets 0..{base - 1} are missing)")
            cur = _Seg(base, path, 0, base)
            new = True
        else:
            cur = _Seg(tail.base, tail.path, tail.size, tail.end)
            new = False
        while True:
            buf = read_file(cur.path, cur.size)
            try:
                res = scan_buffer(buf, 0, cur.end, last_ts, last_ix_pos, self.index_bytes, stop, cur.size)
            except LogFormatError as exc:
                raise LogFormatError(f"{cur.path}: {exc}") from exc
            delta = _SegDelta(cur.base, cur.path, res.end_pos, res.next_offset, res.last_ts,
                              res.last_index_pos, res.index, new)
            if res.error is not None:
                if disk is None:
                    disk = list_segments(self.directory)
                later = [p for b, p in disk if b > cur.base]
                where = f"{cur.path}: {res.error} at byte {res.error_pos} (offset {res.next_offset})"
                if later:
                    raise LogCorruptError(f"{where}; the segment is sealed ({later[0].name} follows)")
                if not res.torn:
                    raise LogCorruptError(where)
                follow = valid_frame_after(buf, res.error_pos - cur.size)
                if follow is not None:
                    raise LogCorruptError(
                        f"{where}, followed by intact data at byte {cur.size + follow}")
                if repair:
                    dropped = cur.size + len(buf) - res.error_pos
                    logger.warning("%s: truncating torn tail at byte %d (offset %d): %s; %d bytes dropped",
                                   cur.path, res.error_pos, res.next_offset, res.error, dropped)
                    fd = os.open(cur.path, os.O_WRONLY)
                    try:
                        os.ftruncate(fd, res.error_pos)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                deltas.append(delta)
                return deltas
            if new or res.end_pos != cur.size:
                deltas.append(delta)
            last_ts = res.last_ts
            if stop is not None and res.next_offset >= stop:
                return deltas
            if disk is None:
                disk = list_segments(self.directory)
            nxt = next(((b, p) for b, p in disk if b > cur.base), None)
            if nxt is None:
                return deltas
            if nxt[0] != res.next_offset:
                raise LogCorruptError(
                    f"missing segment: {cur.path} ends at offset {res.next_offset} but the next "
                    f"segment file is {nxt[1]} (offsets {res.next_offset}..{nxt[0] - 1} are missing)")
            cur = _Seg(nxt[0], nxt[1], 0, nxt[0])
            new = True
            last_ix_pos = -1

    # ------------------------------------------------------------ followers

    def _read_marker(self) -> tuple[int, int] | None:
        """The writer's published (durable end, epoch); None if there is no marker.

        A marker caught mid-update (bad CRC three times running) reads as "no
        news": what this instance already knows.
        """
        try:
            with open(self.directory / COMMITTED_FILE, "rb", buffering=0) as f:
                for _ in range(3):
                    raw = f.read(_MARK.size)
                    if len(raw) == _MARK.size:
                        nxt, _ts, epoch, crc = _MARK.unpack(raw)
                        if zlib.crc32(raw[:24]) == crc:
                            return nxt, epoch
                    f.seek(0)
        except FileNotFoundError:
            return None
        return self._st.next_offset, self._epoch

    async def _refresh(self) -> None:
        """Follower: catch up with what the writer has made durable since."""
        assert self._refresh_lock is not None
        async with self._refresh_lock:
            marker = self._read_marker()
            mark = marker[0] if marker else None
            st = self._st
            before = st.next_offset
            if marker is not None and marker[1] != self._epoch or mark is not None and mark < before:
                # The writer truncated the log: start over.
                await asyncio.to_thread(self._load, False, mark)
                self._epoch = marker[1] if marker else 0
                for fd in list(self._fds.values()):
                    os.close(fd)
                self._fds.clear()
            elif mark is not None and mark == before:
                return
            else:
                tail = st.segs[-1] if st.segs else None
                snap = _Seg(tail.base, tail.path, tail.size, tail.end) if tail else None
                deltas = await asyncio.to_thread(
                    self._scan_forward, snap, st.last_ts, st.last_index_pos, False, mark)
                if self._st is st:
                    for d in deltas:
                        st.apply(d)
            if self._st.next_offset != before or self._st is not st:
                self._notify()

    def _notify(self) -> None:
        ev = self._new_data
        self._new_data = asyncio.Event()
        if ev is not None:
            ev.set()

    # ------------------------------------------------------------ appending

    async def append(self, records: list[Record]) -> None:
        """Append durably (group commit); sets each record's offset and ts.

        See `Log.append` for how ts is chosen.
        """
        self._check_open()
        if not self._writer:
            raise LogError(f"{self.directory}: this FileLog is a read-only follower")
        if not records:
            return
        payloads = [encode_payload(r) for r in records]
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(records, payloads, fut))
        assert self._wake is not None
        self._wake.set()
        await fut

    def _take_batch(self) -> list[_Pending]:
        """Remove the appends at the head of the queue (up to a truncate)."""
        queue = self._pending
        n = 0
        while n < len(queue) and isinstance(queue[n], _Pending):
            n += 1
        taken, self._pending = queue[:n], queue[n:]
        return [p for p in taken if isinstance(p, _Pending) and not p.fut.done()]

    async def _writer_loop(self) -> None:
        """The single writer: one write + one fsync per batch of queued appends.

        Pipelined: as soon as a commit is durable, the appends queued while it
        ran are handed to the writer thread, and only then are the finished
        batch's appenders woken, so their next appends (on the event loop)
        overlap the next fsync (in the thread).
        """
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        inflight: asyncio.Future[list[_Chunk]] | None = None
        batch: list[_Pending] = []
        while True:
            if inflight is None:
                while not self._pending:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                head = self._pending[0]
                if isinstance(head, _Truncate):
                    self._pending.pop(0)
                    await self._run_truncate(head)
                    continue
                batch = self._take_batch()
                if not batch:
                    continue
                inflight = loop.run_in_executor(self._executor, self._commit_sync, batch)
            error: BaseException | None = None
            try:
                chunks = await inflight
            except BaseException as exc:
                error = exc
            done, inflight = batch, None
            if error is None:
                try:
                    for c in chunks:
                        self._st.apply(_SegDelta(c.base, c.path, c.size, c.end, c.last_ts,
                                                 c.last_index_pos, c.index, c.new))
                except Exception as exc:  # a bug: fail loudly rather than hang appenders
                    self._broken = f"{self.directory}: internal error publishing a commit: {exc!r}"
                    logger.exception("%s", self._broken)
                    error = LogWriteError(self._broken)
            if self._pending and isinstance(self._pending[0], _Pending) and not isinstance(
                    error, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                batch = self._take_batch()
                if batch:
                    inflight = loop.run_in_executor(self._executor, self._commit_sync, batch)
            if error is None:
                for p in done:
                    if not p.fut.done():
                        p.fut.set_result(None)
                self._notify()
                continue
            msg = str(error) if isinstance(error, LogWriteError) else f"append failed: {error!r}"
            for p in done:
                if not p.fut.done():
                    p.fut.set_exception(LogWriteError(msg))
            if isinstance(error, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                for q in self._pending:  # the writer is going away: nobody will serve these
                    if not q.fut.done():
                        q.fut.set_exception(LogClosedError(f"{self.directory}: log writer stopped"))
                self._pending = []
                raise error

    def _write(self, fd: int, data: bytes, pos: int) -> None:
        """Write all of `data` at `pos` (a test may replace this to inject errors)."""
        view = memoryview(data)
        done = 0
        while done < len(view):
            n = os.pwrite(fd, view[done:], pos + done)
            if n <= 0:
                raise OSError(errno.EIO, "short write")
            done += n

    def _fsync(self, fd: int) -> None:
        """Make `fd`'s data durable (a test may replace this to count or fail syncs)."""
        os.fdatasync(fd)

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _commit_sync(self, batch: list[_Pending]) -> list[_Chunk]:
        """Writer thread: assign offsets/ts, write, fsync; all or nothing."""
        if self._broken:
            raise LogWriteError(self._broken)
        now = self._clock()
        nxt, last_ts = self._w_next, self._w_last_ts
        cur = _Chunk(self._w_base, self._w_path, self._w_size, [], False, self._w_fd)
        chunks = [cur]
        size, ix_pos = self._w_size, self._w_ix_pos
        limit, every = self.segment_bytes, self.index_bytes
        stamps: list[tuple[int, int]] = []
        for p in batch:
            for rec, payload in zip(p.records, p.payloads):
                ts = rec.ts  # a caller-chosen commit ts is kept if it keeps ts increasing
                if ts <= last_ts:
                    ts = now if now > last_ts else last_ts + 1
                frame = frame_from_payload(payload, nxt, ts)
                if size > 0 and size + len(frame) > limit:
                    cur.size, cur.end, cur.last_ts, cur.last_index_pos = size, nxt, last_ts, ix_pos
                    cur = _Chunk(nxt, self.directory / segment_name(nxt), 0, [], True)
                    chunks.append(cur)
                    size, ix_pos = 0, -1
                if ix_pos < 0 or size - ix_pos >= every:
                    cur.index.append((nxt, ts, size))
                    ix_pos = size
                cur.parts.append(frame)
                size += len(frame)
                stamps.append((nxt, ts))
                nxt += 1
                last_ts = ts
        cur.size, cur.end, cur.last_ts, cur.last_index_pos = size, nxt, last_ts, ix_pos
        done: list[_Chunk] = []
        try:
            for c in chunks:
                if c.new:
                    c.fd = os.open(c.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                done.append(c)
                if not c.parts:
                    continue
                self._write(c.fd, b"".join(c.parts), c.start)
                self._fsync(c.fd)
                if c.new:
                    self._fsync_dir()
        except BaseException as exc:
            self._rollback(done)
            if not isinstance(exc, OSError):
                raise
            reason = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "I/O error"
            path = done[-1].path if done else self._w_path
            raise LogWriteError(
                f"append failed: {reason} writing {path} ({exc.strerror or exc}); "
                "nothing of the batch was written") from exc
        # durable: advance the writer state
        last = chunks[-1]
        if last is not chunks[0]:
            os.close(self._w_fd)
            for c in chunks[1:-1]:
                os.close(c.fd)
        self._w_fd, self._w_base, self._w_path = last.fd, last.base, last.path
        self._w_size, self._w_next, self._w_last_ts, self._w_ix_pos = size, nxt, last_ts, ix_pos
        i = 0
        for p in batch:
            for rec in p.records:
                rec.offset, rec.ts = stamps[i]
                i += 1
        self._write_marker(nxt, last_ts)
        return chunks

    def _rollback(self, chunks: list[_Chunk]) -> None:
        """Undo a failed commit: cut the active segment back, remove new ones."""
        try:
            for c in reversed(chunks):
                if c.new:
                    os.close(c.fd)
                    os.unlink(c.path)
                else:
                    os.ftruncate(c.fd, c.start)
                    os.fsync(c.fd)
            if any(c.new for c in chunks):
                self._fsync_dir()
        except OSError as exc:
            self._broken = (f"{self.directory}: the log could not be rolled back after a failed "
                            f"append ({exc}); reopen it to recover")
            logger.error("%s", self._broken)

    def _write_marker(self, next_offset: int, last_ts: int) -> None:
        head = struct.pack("<qqq", next_offset, last_ts, self._epoch)
        try:
            os.pwrite(self._mark_fd, head + struct.pack("<I", zlib.crc32(head)), 0)
        except OSError as exc:  # followers lag until the next commit; data is safe
            logger.warning("%s: could not update %s: %s", self.directory, COMMITTED_FILE, exc)

    # ------------------------------------------------------------ reading

    def _fd_for(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            old = self._fds.setdefault(path, fd)
            if old != fd:
                os.close(fd)
                fd = old
        return fd

    async def read(self, start: int, end: int | None = None, batch: int = 4096) -> AsyncIterator[list[Record]]:
        """Yield durable records with start <= offset < end, `batch` at a time."""
        self._check_open()
        if start < 0 or batch < 1:
            raise ValueError("read needs start >= 0 and batch >= 1")
        if not self._writer:
            await self._refresh()
        st = self._st
        stop = st.next_offset if end is None else min(end, st.next_offset)
        if start >= stop:
            return
        i, pos = st.locate(start)
        off = start
        while off < stop:
            self._check_open()
            st = self._st
            if i >= len(st.segs):
                return
            seg = st.segs[i]
            if pos >= seg.size:
                i += 1
                pos = 0
                continue
            args = (self._fd_for(seg.path), str(seg.path), pos, seg.size, off, stop, batch)
            if seg.size - pos <= _INLINE_READ_BYTES:
                recs, pos, done = read_frames(*args)
            else:
                recs, pos, done = await asyncio.to_thread(read_frames, *args)
            if recs:
                off = recs[-1].offset + 1
                yield recs
            elif done:
                return

    async def tail(self, start: int, batch: int = 4096) -> AsyncIterator[list[Record]]:
        """Yield records from `start` on, forever, waiting for new ones.

        In the writer, appends wake tails at once; a follower polls the
        writer's COMMITTED marker every `poll_interval` seconds.
        """
        off = start
        while True:
            self._check_open()
            if off < self._st.next_offset:
                async for recs in self.read(off, None, batch):
                    off = recs[-1].offset + 1
                    yield recs
                continue
            if self._writer:
                ev = self._new_data
                assert ev is not None
                if off >= self._st.next_offset:
                    await ev.wait()
            else:
                await asyncio.sleep(self.poll_interval)
                await self._refresh()

    async def offset_for_timestamp(self, ts: int) -> int:
        """The first offset whose ts >= `ts` (next_offset() if none)."""
        self._check_open()
        if not self._writer:
            await self._refresh()
        st = self._st
        if st.next_offset == 0 or ts > st.last_ts:
            return st.next_offset
        j = bisect_left(st.ix_ts, ts)
        if j == 0:
            return st.ix_off[0]
        start = st.ix_off[j - 1]
        seg = st.segs[st.seg_index(start)]
        found = walk_headers(self._fd_for(seg.path), str(seg.path), st.ix_pos[j - 1], seg.size, ts=ts)
        return found[0] if found is not None else seg.end

    # ------------------------------------------------------------ truncation

    async def truncate(self, next_offset: int) -> None:
        """Durably drop every record with offset >= `next_offset`.

        Appends queued before the call are committed first; later ones follow
        the truncated log. Followers notice and start over.
        """
        self._check_open()
        if not self._writer:
            raise LogError(f"{self.directory}: this FileLog is a read-only follower")
        if next_offset < 0:
            raise ValueError("next_offset must be >= 0")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Truncate(next_offset, fut))
        assert self._wake is not None
        self._wake.set()
        await fut

    async def _run_truncate(self, op: _Truncate) -> None:
        """Writer task, no commit in flight: truncate in the writer thread."""
        try:
            if op.next_offset < self._st.next_offset:
                loop = asyncio.get_running_loop()
                new_st, removed = await loop.run_in_executor(self._executor, self._truncate_sync, op.next_offset)
                self._st = new_st
                for path in removed:
                    fd = self._fds.pop(path, None)
                    if fd is not None:
                        os.close(fd)
                self._notify()
        except Exception as exc:
            if not op.fut.done():
                op.fut.set_exception(exc)
            return
        if not op.fut.done():
            op.fut.set_result(None)

    def _truncate_sync(self, n: int) -> tuple[_State, list[Path]]:
        """Writer thread: cut the files back to `n` records; returns the new state."""
        st = self._st
        i = st.seg_index(n)
        seg = st.segs[i]
        pos = 0
        if n > seg.base:
            k = bisect_right(st.ix_off, n) - 1
            found = walk_headers(self._fd_for(seg.path), str(seg.path), st.ix_pos[k], seg.size, offset=n)
            if found is None or found[0] != n:
                raise LogCorruptError(f"{seg.path}: no frame for offset {n}")
            pos = found[2]
        last_ts = 0
        if n > 0:
            k = bisect_right(st.ix_off, n - 1) - 1
            pseg = st.segs[st.seg_index(n - 1)]
            found = walk_headers(self._fd_for(pseg.path), str(pseg.path), st.ix_pos[k], pseg.size, offset=n - 1)
            if found is None:
                raise LogCorruptError(f"{pseg.path}: no frame for offset {n - 1}")
            last_ts = found[1]
        removed = [s.path for s in st.segs[i + 1:]]
        try:
            for path in reversed(removed):
                os.unlink(path)
            if removed:
                self._fsync_dir()
            if seg.path != self._w_path:
                os.close(self._w_fd)
                self._w_fd = -1
                self._w_fd = os.open(seg.path, os.O_WRONLY)
            os.ftruncate(self._w_fd, pos)
            os.fsync(self._w_fd)
        except OSError as exc:
            self._broken = (f"{self.directory}: truncate to offset {n} failed ({exc}); "
                            "reopen the log to recover")
            raise LogWriteError(self._broken) from exc
        new = _State()
        new.segs = [_Seg(s.base, s.path, s.size, s.end) for s in st.segs[:i + 1]]
        new.segs[-1].size, new.segs[-1].end = pos, n
        new.bases = st.bases[:i + 1]
        cut = bisect_left(st.ix_off, n)
        new.ix_off, new.ix_ts, new.ix_pos = st.ix_off[:cut], st.ix_ts[:cut], st.ix_pos[:cut]
        new.next_offset, new.last_ts = n, last_ts
        new.last_index_pos = new.ix_pos[-1] if cut and new.ix_off[-1] >= seg.base else -1
        self._w_base, self._w_path, self._w_size = seg.base, seg.path, pos
        self._w_next, self._w_last_ts, self._w_ix_pos = n, last_ts, new.last_index_pos
        self._epoch += 1
        self._write_marker(n, last_ts)
        return new, removed


__all__ = ["FileLog", "FORMAT_VERSION"]
