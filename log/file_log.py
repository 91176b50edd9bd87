"""FileLog: the embedded commit log: segment files on local disk with group commit.

Directory layout::

    FORMAT                  {"format": "tape.filelog", "version": 1}
    LOCK                    flock()ed by the one process that may append
    COMMITTED               durable end (next offset, last ts, epoch) for followers
    00000000000000000000.seg, ...   frames, see log.codec / log.segment
    00000000000000000000.seg.seal   what opening needs of a full segment, see log.seal

One FileLog per directory holds the writer lock and appends; any further
FileLog on the same directory (another process or the same one) opens as a
*follower*: it reads and tails, and learns about new durable records by
polling COMMITTED, which the writer updates after every fsync. Segment data is
the truth; COMMITTED only says how far followers may read.

Opening reads the seals of full segments and scans only the rest (normally
just the last segment), so it takes about as long for any length of history.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

from log.base import Log
from log.codec import FlatRecord, FlatWrite, encode_payload, frame_from_payload
from log.directory import (
    FORMAT_VERSION,
    Marker,
    Start,
    check_format,
    fsync_dir,
    open_marker,
    read_marker,
    read_start,
    try_lock,
    write_marker,
    write_start,
)
from log.errors import LogClosedError, LogCorruptError, LogError, LogTrimmedError, LogWriteError
from log.index import Growth, IndexArrays, LogIndex, SegmentView
from log.record import Record
from log.seal import (
    DEFAULT_SEAL_BYTES,
    load_index,
    open_segments,
    read_seal,
    remove_seals,
    seal_from_index,
    segment_crc,
    write_seal,
)
from log.segment_archive import SegmentArchive
from log.segment import list_segments, read_frames, read_writes, scan_segments, segment_name, walk_headers

logger = logging.getLogger("tape.log")

DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_INDEX_BYTES = 4096
_INLINE_READ_BYTES = 64 << 10


@dataclass(slots=True)
class _PendingAppend:
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
    crc: int | None = None  # CRC-32 of the segment's bytes up to `size`, None if unknown


class FileLog(Log):
    """The commit log in a local directory (see the module docstring)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        index_bytes: int = DEFAULT_INDEX_BYTES,
        seal_bytes: int = DEFAULT_SEAL_BYTES,
        read_only: bool | None = None,
        poll_interval: float = 0.01,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """`read_only`: None = writer if the directory is free, else follower;
        True = always follower; False = writer or LogError. `seal_bytes`: the
        writer reseals the active segment after this many new bytes (0: only
        full segments are sealed), which bounds what the next open scans."""
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be positive")
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.index_bytes = index_bytes
        self.seal_bytes = seal_bytes
        self.poll_interval = poll_interval
        self._read_only = read_only
        self._clock = clock
        self._st = LogIndex(self._load_index)
        self._opened = False
        self._closed = False
        self._closing = False
        self._writer = False
        self._lock_fd = -1
        self._mark_fd = -1
        self._broken: str | None = None
        self._epoch = 0  # bumped by truncate(); tells followers to start over
        self._start = Start(0, 0)  # where the log begins (START: retention removed what came before)
        # writer side (touched only by the writer thread)
        self._w_fd = -1
        self._w_base = 0
        self._w_path = Path()
        self._w_size = 0
        self._w_next = 0
        self._w_last_ts = 0
        self._w_ix_pos = -1
        self._w_crc: int | None = None  # CRC-32 of the active segment's bytes; None: read it when sealing
        self._w_index: list[tuple[int, int, int]] = []  # the active segment's index entries
        self._w_sealed = 0  # bytes of the active segment its seal covers
        self._pending: list[_PendingAppend | _Truncate] = []
        self._executor: ThreadPoolExecutor | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._refresh_lock: asyncio.Lock | None = None
        self._new_data: asyncio.Event | None = None
        #: called (on the writer thread) with the seconds each fsync of appended data took; for metrics
        self.on_sync: Callable[[float], None] | None = None

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

    def first_offset(self) -> int:
        """The first offset this directory still holds (0 unless retention removed segments)."""
        return self._start.first_offset

    @property
    def start(self) -> Start:
        """The first offset held and the ts of the record before it (`log.directory.Start`)."""
        return self._start

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
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise LogError(f"{self.directory} is a file, but a FileLog is a directory of segment files: "
                           "give the log a directory path") from None
        except OSError as exc:
            raise LogError(f"{self.directory}: cannot create the log directory ({exc.strerror or exc})") from None
        if self._read_only is not True:
            fd = try_lock(self.directory)
            if fd is None and self._read_only is False:
                raise LogError(f"{self.directory}: another FileLog holds the writer lock")
            self._lock_fd, self._writer = (fd, True) if fd is not None else (-1, False)
        try:
            check_format(self.directory, self._writer, bool(list_segments(self.directory)))
            if self._writer:
                mark = read_marker(self.directory)
                self._load(repair=True, stop=None, durable_end=mark.next_offset if mark else None)
                self._start_writer_side()
            else:
                mark = read_marker(self.directory)
                self._epoch = mark.epoch if mark else 0
                self._load(repair=False, stop=mark.next_offset if mark else None)
        except BaseException:
            self._release_fds()
            self._writer = False
            raise

    def _load(self, repair: bool, stop: int | None, durable_end: int | None = None) -> None:
        start = read_start(self.directory)
        if repair:
            self._remove_before(start.first_offset)
        st = LogIndex(self._load_index)
        for g in open_segments(self.directory, self.index_bytes, repair, stop, durable_end, start):
            st.apply(g)
        self._st, self._start = st, start

    def _remove_before(self, first: int) -> list[Path]:
        """Delete the segment files (and seals) below offset `first` (what START excludes); returns them."""
        old = [path for base, path in list_segments(self.directory) if base < first]
        if old:
            remove_seals(old)
            for path in old:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            fsync_dir(self.directory)
            logger.info("%s: removed %d segment file(s) before offset %d (retention)", self.directory,
                        len(old), first)
        return old

    def _load_index(self, seg: SegmentView) -> IndexArrays:
        """`LogIndex.loader`: a full segment's index entries, from its seal."""
        return load_index(seg, self.index_bytes)

    def _start_writer_side(self) -> None:
        st = self._st
        if not st.segs:
            path = self.directory / segment_name(0)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.fsync(fd)
            fsync_dir(self.directory)
            st.apply(Growth(0, path, 0, 0, 0, -1, [], True))
        else:
            fd = os.open(st.segs[-1].path, os.O_WRONLY)
        seg = st.segs[-1]
        self._w_fd, self._w_base, self._w_path, self._w_size = fd, seg.base, seg.path, seg.size
        self._w_next, self._w_last_ts, self._w_ix_pos = st.next_offset, st.last_ts, st.last_index_pos
        self._w_crc, self._w_index = None, st.segment_entries(len(st.segs) - 1)
        seal, _ = read_seal(seg.path, head_only=True)  # open_segments removed one that does not match
        self._w_sealed = seal.size if seal is not None else 0
        if self.seal_bytes > 0 and seg.size - self._w_sealed >= self.seal_bytes:  # e.g. an old directory
            self._seal_active(seg.path, seg.base, seg.size, st.next_offset, st.last_ts, st.last_index_pos)
        old = read_marker(self.directory)
        self._epoch = old.epoch if old else 0
        self._mark_fd = open_marker(self.directory)
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

    # ------------------------------------------------------------ followers

    async def _refresh(self) -> None:
        """Follower: catch up with what the writer has made durable since."""
        assert self._refresh_lock is not None
        async with self._refresh_lock:
            st = self._st
            before = st.next_offset
            marker = read_marker(self.directory, busy=Marker(before, st.last_ts, self._epoch))
            mark = marker.next_offset if marker else None
            if marker is not None and marker.epoch != self._epoch or mark is not None and mark < before:
                # The writer truncated the log: start over.
                await asyncio.to_thread(self._load, False, mark)
                self._epoch = marker.epoch if marker else 0
            elif mark is not None and mark == before:
                return
            else:
                tail = st.segs[-1] if st.segs else None
                snap = SegmentView(tail.base, tail.path, tail.size, tail.end) if tail else None
                growth = await asyncio.to_thread(
                    scan_segments, self.directory, snap, st.last_ts, st.last_index_pos,
                    self.index_bytes, False, mark)
                if self._st is st:
                    for g in growth:
                        st.apply(g)
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
        self._pending.append(_PendingAppend(records, payloads, fut))
        assert self._wake is not None
        self._wake.set()
        await fut

    def _take_batch(self) -> list[_PendingAppend]:
        """Remove the appends at the head of the queue (up to a truncate)."""
        queue = self._pending
        n = 0
        while n < len(queue) and isinstance(queue[n], _PendingAppend):
            n += 1
        taken, self._pending = queue[:n], queue[n:]
        return [p for p in taken if isinstance(p, _PendingAppend) and not p.fut.done()]

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
        batch: list[_PendingAppend] = []
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
                        self._st.apply(Growth(c.base, c.path, c.size, c.end, c.last_ts,
                                                 c.last_index_pos, c.index, c.new))
                except Exception as exc:  # a bug: fail loudly rather than hang appenders
                    self._broken = f"{self.directory}: internal error publishing a commit: {exc!r}"
                    logger.exception("%s", self._broken)
                    error = LogWriteError(self._broken)
            if self._pending and isinstance(self._pending[0], _PendingAppend) and not isinstance(
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

    def _commit_sync(self, batch: list[_PendingAppend]) -> list[_Chunk]:
        """Writer thread: assign offsets/ts, write, fsync; all or nothing."""
        if self._broken:
            raise LogWriteError(self._broken)
        now = self._clock()
        nxt, last_ts = self._w_next, self._w_last_ts
        cur = _Chunk(self._w_base, self._w_path, self._w_size, [], False, self._w_fd, crc=self._w_crc)
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
                    cur = _Chunk(nxt, self.directory / segment_name(nxt), 0, [], True, crc=0)
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
                    remove_seals([c.path])  # a stale seal by this name must not vouch for the new file
                    c.fd = os.open(c.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                done.append(c)
                if not c.parts:
                    continue
                data = b"".join(c.parts)
                self._write(c.fd, data, c.start)
                on_sync = self.on_sync
                if on_sync is None:
                    self._fsync(c.fd)
                else:
                    synced = time.perf_counter()
                    self._fsync(c.fd)
                    on_sync(time.perf_counter() - synced)
                if c.crc is not None:
                    c.crc = zlib.crc32(data, c.crc)
                if c.new:
                    fsync_dir(self.directory)
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
            self._seal(chunks[:-1])
            self._w_index = list(last.index)
            self._w_sealed = 0
        else:
            self._w_index.extend(last.index)
        self._w_crc = last.crc
        if self.seal_bytes > 0 and size - self._w_sealed >= self.seal_bytes:
            self._seal_active(last.path, last.base, size, nxt, last_ts, ix_pos)
        self._w_fd, self._w_base, self._w_path = last.fd, last.base, last.path
        self._w_size, self._w_next, self._w_last_ts, self._w_ix_pos = size, nxt, last_ts, ix_pos
        i = 0
        for p in batch:
            for rec in p.records:
                rec.offset, rec.ts = stamps[i]
                i += 1
        self._write_marker(nxt, last_ts)
        return chunks

    def _seal(self, full: list[_Chunk]) -> None:
        """Writer thread: write the seals of segments this commit filled (they are durable).

        A seal is only a shortcut for opening: if it cannot be written, the
        next open scans the segment (and seals it).
        """
        for c in full:
            entries = self._w_index + c.index if not c.new else c.index
            try:
                crc = c.crc if c.crc is not None else segment_crc(c.path, c.size)
                write_seal(c.path, seal_from_index(c.base, c.end, c.last_ts, c.size, c.last_index_pos, crc, entries))
            except OSError as exc:
                logger.warning("%s: could not write its seal (%s); the next open scans it", c.path, exc)

    def _seal_active(self, path: Path, base: int, size: int, end: int, last_ts: int, ix_pos: int) -> None:
        """Writer thread: reseal the active segment up to its durable `size` (so open skips that part)."""
        try:
            if self._w_crc is None:
                self._w_crc = segment_crc(path, size)
            write_seal(path, seal_from_index(base, end, last_ts, size, ix_pos, self._w_crc, self._w_index))
            self._w_sealed = size
        except OSError as exc:
            logger.warning("%s: could not write its seal (%s); the next open scans more of it", path, exc)
            self._w_sealed = size  # try again after another `seal_bytes`

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
                fsync_dir(self.directory)
        except OSError as exc:
            self._broken = (f"{self.directory}: the log could not be rolled back after a failed "
                            f"append ({exc}); reopen it to recover")
            logger.error("%s", self._broken)

    def _write_marker(self, next_offset: int, last_ts: int) -> None:
        try:
            write_marker(self._mark_fd, Marker(next_offset, last_ts, self._epoch))
        except OSError as exc:  # followers lag until the next commit; data is safe
            logger.warning("%s: could not update the COMMITTED marker: %s", self.directory, exc)

    # ------------------------------------------------------------ reading

    async def _walk_segments(self, reader: Any, start: int, end: int | None, batch: int,
                             what: str) -> AsyncIterator[Any]:
        """Run `reader(path, pos, size, off, stop, batch)` over the durable frames in [start, end).

        `reader` returns `(result, next offset or None, pos, done)`; results with a next offset
        are yielded. Large reads go to a thread so the event loop keeps serving.
        """
        self._check_open()
        if start < 0 or batch < 1:
            raise ValueError(f"{what} needs start >= 0 and batch >= 1")
        if not self._writer:
            await self._refresh()
        st = self._st
        if start < self._start.first_offset and (end is None or end > start):
            raise LogTrimmedError(
                f"{self.directory}: offset {start} is no longer in the log: retention removed offsets "
                f"before {self._start.first_offset} (read them from the segment archive, or start from a "
                "checkpoint)")
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
            args = (seg.path, pos, seg.size, off, stop, batch)
            try:
                if seg.size - pos <= _INLINE_READ_BYTES:
                    result, nxt, pos, done = reader(*args)
                else:
                    result, nxt, pos, done = await asyncio.to_thread(reader, *args)
            except FileNotFoundError:
                start_now = read_start(self.directory)
                if off < start_now.first_offset:  # the writer removed it meanwhile (retention)
                    self._start = start_now
                    raise LogTrimmedError(
                        f"{self.directory}: offset {off} is no longer in the log: retention removed offsets "
                        f"before {start_now.first_offset}") from None
                raise
            if nxt is not None:
                off = nxt
                yield result
            elif done:
                return

    async def read(self, start: int, end: int | None = None, batch: int = 4096) -> AsyncIterator[list[Record]]:
        """Yield durable records with start <= offset < end, `batch` at a time."""
        def records(*args: Any) -> tuple[list[Record], int | None, int, bool]:
            recs, pos, done = read_frames(*args)
            return recs, (recs[-1].offset + 1 if recs else None), pos, done
        async for recs in self._walk_segments(records, start, end, batch, "read"):
            yield recs

    async def read_writes(
        self, start: int, end: int | None = None, batch: int = 4096,
    ) -> AsyncIterator[tuple[list[FlatWrite], int, int, int]]:
        """`read`, for replaying into a projection: each batch as its records' writes, flattened.

        Yields (writes, number of records, offset of the last record, its ts)
        per batch of up to `batch` records, where `writes` holds each write as
        ``(record offset, table, document id as UTF-8, doc, prev)`` (see
        `log.codec.decode_frame_writes`); no `Record` objects are built.
        """
        def flat(*args: Any) -> tuple[tuple[list[FlatWrite], int, int, int], int | None, int, bool]:
            writes, count, last_off, last_ts, pos, done = read_writes(*args)
            return (writes, count, last_off, last_ts), (last_off + 1 if count else None), pos, done
        async for item in self._walk_segments(flat, start, end, batch, "read_writes"):
            yield item

    async def read_changes(
        self, start: int, end: int | None = None, batch: int = 4096,
        encode: Callable[[list[FlatWrite], list[FlatRecord]], Any] | None = None,
    ) -> AsyncIterator[tuple[Any, int, int]]:
        """`read`, for exporting changes: each batch as ``encode(writes, records)``, computed where decoded.

        `writes` holds the batch's writes flattened (as for `read_writes`) and
        `records` one `log.codec.FlatRecord` (offset, ts, function, end of its
        writes) per record. Yields (encoded batch, number of records, offset
        of the last record); without `encode`, the batch is ``(writes, records)``.
        """
        def changes(*args: Any) -> tuple[tuple[Any, int, int], int | None, int, bool]:
            records: list[FlatRecord] = []
            writes, count, last_off, _last_ts, pos, done = read_writes(*args, records)
            result = (writes, records) if encode is None else encode(writes, records)
            return (result, count, last_off), (last_off + 1 if count else None), pos, done
        async for item in self._walk_segments(changes, start, end, batch, "read_changes"):
            yield item

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
        at = st.locate_ts(ts)
        if at is None:
            return st.segs[0].base if st.segs else self._start.first_offset
        seg = st.segs[at[0]]
        found = walk_headers(seg.path, at[1], seg.size, ts=ts)
        return found[0] if found is not None else seg.end

    # ------------------------------------------------------------ retention

    def sealed_segments(self) -> list[SegmentView]:
        """The full (sealed, never written again) segments, oldest first: all but the active one."""
        return [SegmentView(s.base, s.path, s.size, s.end) for s in self._st.segs[:-1]]

    async def drop_prefix(self, before: int, archive: SegmentArchive | None = None) -> int:
        """Remove the full segments holding only offsets < `before` (retention); returns the new first offset.

        Each removed segment is first stored durably in `archive` (None: just
        deleted); then START is replaced atomically; then the files are
        unlinked. A crash at any step leaves a consistent log: before START
        changes nothing is removed (an archived copy may exist twice: the
        archive replaces it), after it the next open deletes the leftovers.
        Only the writer may do this; readers of removed offsets then get
        `LogTrimmedError`.
        """
        self._check_open()
        if not self._writer:
            raise LogError(f"{self.directory}: this FileLog is a read-only follower")
        st = self._st
        victims = [s for s in st.segs[:-1] if s.end <= before]
        if not victims:
            return self._start.first_offset
        new_first = victims[-1].end
        if archive is not None:
            for seg in victims:
                prev = self._start.prev_ts if seg.base <= self._start.first_offset else await self._ts_before(st, seg.base)
                await asyncio.to_thread(archive.put, seg.path, seg.base, seg.end, prev)
        start = Start(new_first, await self._ts_before(st, new_first))
        await asyncio.to_thread(write_start, self.directory, start)
        if self._st is st:
            self._st = st.without_prefix(len(victims))
        self._start = start
        await asyncio.to_thread(self._remove_before, new_first)
        return new_first

    async def _ts_before(self, st: LogIndex, offset: int) -> int:
        """The ts of record `offset - 1` (which `st` holds)."""
        return (await asyncio.to_thread(self._find_frame, st, offset - 1))[0]

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
                self._st = await loop.run_in_executor(self._executor, self._truncate_sync, op.next_offset)
                self._notify()
        except Exception as exc:
            if not op.fut.done():
                op.fut.set_exception(exc)
            return
        if not op.fut.done():
            op.fut.set_result(None)

    def _find_frame(self, st: LogIndex, n: int) -> tuple[int, int]:
        """(ts, file position) of the frame of durable offset `n`."""
        i, pos = st.locate(n)
        seg = st.segs[i]
        found = walk_headers(seg.path, pos, seg.size, offset=n)
        if found is None or found[0] != n:
            raise LogCorruptError(f"{seg.path}: no frame for offset {n}")
        return found[1], found[2]

    def _truncate_sync(self, n: int) -> LogIndex:
        """Writer thread: cut the files back to `n` records; returns the new index."""
        st = self._st
        i = st.seg_index(n)
        seg = st.segs[i]
        pos = self._find_frame(st, n)[1] if n > seg.base else 0
        last_ts = self._find_frame(st, n - 1)[0] if n > 0 else 0
        removed = [s.path for s in st.segs[i + 1:]]
        try:
            if remove_seals([s.path for s in st.segs[i:]]):  # seals first: a crash leaves no stale seal
                fsync_dir(self.directory)
            for path in reversed(removed):
                os.unlink(path)
            if removed:
                fsync_dir(self.directory)
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
        new = st.cut(n, pos, last_ts)
        self._w_base, self._w_path, self._w_size = seg.base, seg.path, pos
        self._w_next, self._w_last_ts, self._w_ix_pos = n, last_ts, new.last_index_pos
        self._w_crc, self._w_index = None, new.segment_entries(len(new.segs) - 1)
        self._w_sealed = 0
        self._epoch += 1
        self._write_marker(n, last_ts)
        return new



__all__ = ["FileLog", "FORMAT_VERSION"]
