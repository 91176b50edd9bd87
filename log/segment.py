"""Segment files: naming, listing, integrity scans, recovery and frame reads.

A segment is a file ``<20-digit first offset>.seg`` holding consecutive
frames (see `log.codec`) and nothing else. Everything here is synchronous and
works on plain file descriptors / buffers; `log.file_log` decides what runs in
a thread.
"""
from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from log.codec import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    CURRENT_VERSION,
    MAX_BODY,
    SCHEMAS,
    FrameError,
    UnknownSchemaError,
    FlatRecord,
    FlatWrite,
    check_frame,
    decode_frame_writes,
    decode_frames,
)
from log.errors import LogCorruptError, LogFormatError
from log.index import Growth, SegmentView
from log.record import Record

logger = logging.getLogger("tape.log")

SUFFIX = ".seg"
READ_CHUNK = 1 << 20


def segment_name(base: int) -> str:
    """File name of the segment whose first record has offset `base`."""
    return f"{base:020d}{SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """All segment files in `directory` as (base offset, path), sorted by base."""
    found: list[tuple[int, Path]] = []
    for entry in os.scandir(directory):
        name = entry.name
        if name.endswith(SUFFIX) and len(name) == 20 + len(SUFFIX) and name[:20].isdigit():
            found.append((int(name[:20]), Path(entry.path)))
    found.sort()
    return found


@dataclass(slots=True)
class ScanResult:
    """Outcome of scanning frames of one segment buffer.

    `end_pos` is the position after the last good frame; `error` describes
    the first frame that did not check out (None if the scan ran cleanly to
    the end or to `stop`), at byte `error_pos`.
    """

    end_pos: int
    next_offset: int
    last_ts: int
    last_index_pos: int
    index: list[tuple[int, int, int]] = field(default_factory=list)  # (offset, ts, pos)
    error: str | None = None
    error_pos: int = -1
    torn: bool = False


def scan_buffer(
    buf: bytes,
    pos: int,
    next_offset: int,
    last_ts: int,
    last_index_pos: int,
    index_bytes: int,
    stop: int | None = None,
    shift: int = 0,
) -> ScanResult:
    """Verify consecutive frames of `buf` from `pos` and build sparse index entries.

    Each frame must be intact (magic, length, CRC, known schema version), carry
    offset `next_offset` (then +1 each) and a ts above the previous one. An
    index entry is made for the frame at position 0 and whenever a frame
    starts `index_bytes` or more after the previous entry (`last_index_pos`,
    -1 for none yet). Stops before a frame with offset >= `stop`. `buf`
    holds the file from byte `shift` on: every position in the result
    (index entries, `end_pos`, `error_pos`, `last_index_pos`) is a file
    position, i.e. already includes `shift`.
    """
    res = ScanResult(pos, next_offset, last_ts, last_index_pos)
    index = res.index
    end = len(buf)
    unpack = HEADER.unpack_from
    crc32 = zlib.crc32
    hsize = HEADER_SIZE
    if stop is None:
        stop = 1 << 62
    expect = next_offset
    ix_pos = last_index_pos
    next_ix = -1 if ix_pos < 0 else ix_pos + index_bytes - shift  # buffer position of the next index entry
    while pos < end and expect < stop:
        if end - pos < hsize:
            res.error, res.error_pos, res.torn = (
                f"short frame header ({end - pos} of {hsize} bytes)", pos, True)
            break
        magic, version, length, offset, ts, crc = unpack(buf, pos)
        body = pos + hsize
        nxt = body + length
        if magic != MAGIC or length > MAX_BODY:
            res.error, res.error_pos, res.torn = (
                f"bad frame header (magic {magic!r}, length {length})", pos, True)
            break
        if nxt > end:
            res.error, res.error_pos, res.torn = (
                f"short frame body ({end - body} of {length} bytes)", pos, True)
            break
        if crc32(buf[body:nxt], crc32(buf[pos:pos + 24])) != crc:
            res.error, res.error_pos, res.torn = ("frame CRC mismatch", pos, True)
            break
        if version != CURRENT_VERSION and version not in SCHEMAS:  # intact, but we cannot read it
            raise UnknownSchemaError(version, pos + shift)
        if offset != expect:
            res.error, res.error_pos = (f"frame carries offset {offset}, expected {expect}", pos)
            break
        if ts <= last_ts:
            res.error, res.error_pos = (
                f"frame ts {ts} is not above the previous ts {last_ts}", pos)
            break
        if pos >= next_ix:
            ix_pos = pos + shift
            index.append((offset, ts, ix_pos))
            next_ix = ix_pos + index_bytes - shift
        last_ts = ts
        expect += 1
        pos = nxt
    res.end_pos = pos + shift
    if res.error is not None:
        res.error_pos += shift
    res.next_offset = expect
    res.last_ts = last_ts
    res.last_index_pos = ix_pos
    return res


def valid_frame_after(buf: bytes, pos: int) -> int | None:
    """Position of the first intact frame starting after `pos`, or None.

    Used to tell a torn tail (nothing valid follows) from corruption in the
    middle of the data (valid frames follow the damaged one).
    """
    end = len(buf)
    at = buf.find(MAGIC, pos + 1)
    while at >= 0:
        try:
            check_frame(buf, at, end)
            return at
        except FrameError:
            pass
        except LogFormatError:  # intact frame of an unknown schema version
            return at
        at = buf.find(MAGIC, at + 1)
    return None


def read_file(path: Path, start: int = 0) -> bytes:
    """The bytes of `path` from position `start` to its end."""
    with open(path, "rb", buffering=0) as f:
        if start:
            f.seek(start)
        return f.read()


def read_frames(
    path: Path, pos: int, limit: int, start: int, stop: int, max_records: int
) -> tuple[list[Record], int, bool]:
    """Decode records start <= offset < stop from segment `path` between `pos` and `limit`.

    Returns (records, position after the last frame consumed, done) where done
    means `stop` or `max_records` was reached. Raises LogCorruptError naming
    `path` for a damaged frame or a file shorter than `limit`. Opens and
    closes the file itself, so it is safe to run in a thread that may outlive
    its caller.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        return _read_frames(fd, str(path), pos, limit, start, stop, max_records)
    finally:
        os.close(fd)


def _read_frames(
    fd: int, path: str, pos: int, limit: int, start: int, stop: int, max_records: int
) -> tuple[list[Record], int, bool]:
    out: list[Record] = []
    done = False
    chunk = min(READ_CHUNK, max(64 << 10, max_records << 9))
    while pos < limit and not done:
        want = min(limit - pos, chunk)
        buf = _pread_exactly(fd, path, want, pos, limit)
        recs, used, done = _decode(buf, path, pos, start, stop, max_records - len(out))
        if used == 0 and not done:
            # One frame larger than the chunk: read exactly that frame.
            need = HEADER_SIZE + HEADER.unpack_from(buf, 0)[2]
            if pos + need > limit:
                raise LogCorruptError(f"{path}: frame at byte {pos}{_offset_note(path, pos)} runs past "
                                      "the end of the data")
            buf = _pread_exactly(fd, path, need, pos, limit)
            recs, used, done = _decode(buf, path, pos, start, stop, max_records - len(out))
            if used == 0:
                raise LogCorruptError(f"{path}: unreadable frame at byte {pos}{_offset_note(path, pos)}")
        out.extend(recs)
        pos += used
    return out, pos, done


def _pread_exactly(fd: int, path: str, size: int, pos: int, limit: int) -> bytes:
    buf = os.pread(fd, size, pos)
    if len(buf) < size:
        raise LogCorruptError(f"{path}: file ends at byte {pos + len(buf)}, expected data up to {limit}")
    return buf


def _decode(
    buf: bytes, path: str, pos: int, start: int, stop: int, limit: int
) -> tuple[list[Record], int, bool]:
    """`decode_frames` over a buffer read from byte `pos` of `path`, errors naming both."""
    try:
        return decode_frames(buf, 0, len(buf), start, stop, limit)
    except FrameError as exc:
        at = pos + exc.pos
        raise LogCorruptError(f"{path}: damaged frame at byte {at}{_offset_note(path, at)}: {exc}") from exc
    except UnknownSchemaError as exc:
        raise LogFormatError(f"{path}: at byte {pos + exc.pos}: {exc}") from exc


def _offset_note(path: str, pos: int) -> str:
    """" (record offset N)" for the frame at byte `pos` of segment `path`, found by walking the
    frame headers before it (only on an error path); "" if they do not lead there."""
    name = os.path.basename(path)
    if not (name.endswith(SUFFIX) and name[:20].isdigit()):
        return ""
    off = int(name[:20])
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return ""
    try:
        at = 0
        while at < pos:
            head = os.pread(fd, HEADER_SIZE, at)
            if len(head) < HEADER_SIZE:
                return ""
            magic, _, length, _, _, _ = HEADER.unpack(head)
            if magic != MAGIC:
                return ""
            at += HEADER_SIZE + length
            off += 1
    except OSError:
        return ""
    finally:
        os.close(fd)
    return f" (record offset {off})" if at == pos else ""


def read_writes(
    path: Path, pos: int, limit: int, start: int, stop: int, max_records: int,
    records: list[FlatRecord] | None = None,
) -> tuple[list[FlatWrite], int, int, int, int, bool]:
    """`read_frames`, collecting only the records' writes (see `log.codec.decode_frame_writes`).

    Returns (writes, number of records, offset and ts of the last record (-1
    and 0 if none), position after the last frame consumed, done); raises
    like `read_frames`. With `records`, a `FlatRecord` per record is appended to it.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        return _read_writes(fd, str(path), pos, limit, start, stop, max_records, records)
    finally:
        os.close(fd)


def _read_writes(
    fd: int, path: str, pos: int, limit: int, start: int, stop: int, max_records: int,
    records: list[FlatRecord] | None,
) -> tuple[list[FlatWrite], int, int, int, int, bool]:
    out: list[FlatWrite] = []
    count = 0
    last_off, last_ts = -1, 0
    done = False
    chunk = min(READ_CHUNK, max(64 << 10, max_records << 9))
    while pos < limit and not done:
        want = min(limit - pos, chunk)
        buf = _pread_exactly(fd, path, want, pos, limit)
        n, off, ts, used, done = _decode_writes(buf, path, pos, start, stop, max_records - count, out, records)
        if used == 0 and not done:
            # One frame larger than the chunk: read exactly that frame.
            need = HEADER_SIZE + HEADER.unpack_from(buf, 0)[2]
            if pos + need > limit:
                raise LogCorruptError(f"{path}: frame at byte {pos}{_offset_note(path, pos)} runs past "
                                      "the end of the data")
            buf = _pread_exactly(fd, path, need, pos, limit)
            n, off, ts, used, done = _decode_writes(buf, path, pos, start, stop, max_records - count, out, records)
            if used == 0:
                raise LogCorruptError(f"{path}: unreadable frame at byte {pos}{_offset_note(path, pos)}")
        if n:
            count += n
            last_off, last_ts = off, ts
        pos += used
    return out, count, last_off, last_ts, pos, done


def _decode_writes(
    buf: bytes, path: str, pos: int, start: int, stop: int, limit: int, out: list[FlatWrite],
    records: list[FlatRecord] | None,
) -> tuple[int, int, int, int, bool]:
    """`decode_frame_writes` over a buffer read from byte `pos` of `path`, errors naming both."""
    try:
        return decode_frame_writes(buf, 0, len(buf), start, stop, limit, out, records)
    except FrameError as exc:
        at = pos + exc.pos
        raise LogCorruptError(f"{path}: damaged frame at byte {at}{_offset_note(path, at)}: {exc}") from exc
    except UnknownSchemaError as exc:
        raise LogFormatError(f"{path}: at byte {pos + exc.pos}: {exc}") from exc


def walk_headers(
    path: Path, pos: int, limit: int, offset: int | None = None, ts: int | None = None
) -> tuple[int, int, int] | None:
    """Walk the frame headers of segment `path` from `pos` (no decoding, no CRC check).

    Returns (offset, ts, position) of the first frame whose offset is >=
    `offset` or whose ts is >= `ts`; None if no frame before `limit` matches.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        return _walk_headers(fd, str(path), pos, limit, offset, ts)
    finally:
        os.close(fd)


def _walk_headers(
    fd: int, path: str, pos: int, limit: int, offset: int | None, ts: int | None
) -> tuple[int, int, int] | None:
    while pos < limit:
        buf = os.pread(fd, min(limit - pos, READ_CHUNK), pos)
        if len(buf) < HEADER_SIZE:
            raise LogCorruptError(f"{path}: file ends at byte {pos + len(buf)}, expected data up to {limit}")
        at = 0
        while at + HEADER_SIZE <= len(buf):
            magic, _, length, off, fts, _ = HEADER.unpack_from(buf, at)
            if magic != MAGIC:
                raise LogCorruptError(f"{path}: bad frame header at byte {pos + at}")
            if (offset is not None and off >= offset) or (ts is not None and fts >= ts):
                return off, fts, pos + at
            at += HEADER_SIZE + length
        pos += at
    return None


def scan_segments(
    directory: Path,
    tail: SegmentView | None,
    last_ts: int,
    last_index_pos: int,
    index_bytes: int,
    repair: bool,
    stop: int | None,
    durable_end: int | None = None,
    first: int = 0,
) -> list[Growth]:
    """Verify the frames of `directory` after the known end `tail` (None: from scratch, from offset `first`).

    Walks the rest of the last known segment, then every following segment
    file, and returns the growth found (up to offset `stop` if given). Raises
    LogCorruptError (naming the file, byte position and offset) for damage
    that is not a torn tail of the last segment, and for a missing segment;
    LogFormatError for a frame of an unknown schema version. A torn tail is
    truncated away (and logged) when `repair`, else just left unread. A damaged
    frame below `durable_end` (the COMMITTED marker: records up to there were
    fsynced and acknowledged) is never a torn write: it raises LogCorruptError.
    """
    growth: list[Growth] = []
    disk: list[tuple[int, Path]] | None = None
    if tail is None:
        disk = list_segments(directory)
        if not disk:
            return growth
        disk = [(b, p) for b, p in disk if b >= first]
        if not disk:
            return growth
        base, path = disk[0]
        if base != first:
            raise LogCorruptError(
                f"missing segment: the first segment file is {path}, expected "
                f"{directory / segment_name(first)} (offsets {first}..{base - 1} are missing)")
        cur = SegmentView(base, path, 0, base)
        new = True
    else:
        cur = SegmentView(tail.base, tail.path, tail.size, tail.end)
        new = False
    while True:
        buf = read_file(cur.path, cur.size)
        try:
            res = scan_buffer(buf, 0, cur.end, last_ts, last_index_pos, index_bytes, stop, cur.size)
        except LogFormatError as exc:
            raise LogFormatError(f"{cur.path}: {exc}") from exc
        g = Growth(cur.base, cur.path, res.end_pos, res.next_offset, res.last_ts,
                   res.last_index_pos, res.index, new)
        if res.error is not None:
            if disk is None:
                disk = list_segments(directory)
            later = [p for b, p in disk if b > cur.base]
            where = f"{cur.path}: {res.error} at byte {res.error_pos} (offset {res.next_offset})"
            if later:
                raise LogCorruptError(f"{where}; the segment is sealed ({later[0].name} follows)")
            if not res.torn:
                raise LogCorruptError(where)
            follow = valid_frame_after(buf, res.error_pos - cur.size)
            if follow is not None:
                raise LogCorruptError(f"{where}, followed by intact data at byte {cur.size + follow}")
            if durable_end is not None and res.next_offset < durable_end:
                raise LogCorruptError(
                    f"{where}; the COMMITTED marker says records up to offset {durable_end - 1} were made "
                    "durable and acknowledged, so this is damage, not a torn write")
            if repair:
                logger.warning("%s: truncating torn tail at byte %d (offset %d): %s; %d bytes dropped",
                               cur.path, res.error_pos, res.next_offset, res.error,
                               cur.size + len(buf) - res.error_pos)
                fd = os.open(cur.path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, res.error_pos)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            growth.append(g)
            return growth
        if new or res.end_pos != cur.size:
            growth.append(g)
        last_ts = res.last_ts
        if stop is not None and res.next_offset >= stop:
            return growth
        if disk is None:
            disk = list_segments(directory)
        nxt = next(((b, p) for b, p in disk if b > cur.base), None)
        if nxt is None:
            return growth
        if nxt[0] != res.next_offset:
            raise LogCorruptError(
                f"missing segment: {cur.path} ends at offset {res.next_offset} but the next "
                f"segment file is {nxt[1]} (offsets {res.next_offset}..{nxt[0] - 1} are missing)")
        cur = SegmentView(nxt[0], nxt[1], 0, nxt[0])
        new = True
        last_index_pos = -1
