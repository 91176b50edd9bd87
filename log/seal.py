"""Seals: what opening a FileLog needs to know about a full segment, without scanning it.

When the writer rolls over to a new segment, the full one is *sealed*: a
sidecar ``<segment>.seal`` is written next to it (temp file + fsync + rename
+ directory fsync) holding

* the segment's first offset and end (next offset), i.e. its record count,
* the ts of its first and last record,
* its byte size and the CRC-32 of all of its bytes,
* its sparse offset/ts/position index entries (see `log.index`),

with a CRC-32 of the header fields and one of the whole seal. The active (last) segment is
resealed every `DEFAULT_SEAL_BYTES` or so as it grows, its seal covering the
prefix that was durable then. `open_segments` trusts a full segment whose
size on disk equals its seal's (reading only the seal's header: the index
entries are loaded when a read first needs them, see `load_index`) and the
sealed prefix of the last one, and scans only segments without a usable seal plus the last
segment's bytes after its seal (at most about `DEFAULT_SEAL_BYTES`), where a
torn tail is still truncated. A seal that does not match its segment is
ignored with a WARNING and the segment is scanned. Old directories (no
seals) open by a full scan, and the writer then seals their full segments so
the next open is fast. A leftover ``.seal.tmp`` (a crash while sealing) is
never read.

Full verification (every frame's CRC and every segment against its seal)
is `verify_seal`, used by ``tape doctor``; frame CRCs are also checked on
every read.
"""
from __future__ import annotations

import logging
import os
import struct
import sys
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path

from log.codec import HEADER, HEADER_SIZE, MAGIC
from log.directory import Start, fsync_dir
from log.errors import LogCorruptError, LogFormatError
from log.index import Growth, IndexArrays, SegmentView
from log.segment import list_segments, read_file, scan_buffer, scan_segments

logger = logging.getLogger("tape.log")

SEAL_SUFFIX = ".seal"
TMP_SUFFIX = ".seal.tmp"
SEAL_MAGIC = b"TAPESEAL"
SEAL_VERSION = 1
# magic, version, base, end, first ts, last ts, size, last index pos, segment crc, index entries;
# then the CRC-32 of those header bytes (so opening can read just the header), the entries'
# offsets, ts and positions as int64 arrays, and the CRC-32 of everything before it.
_HEAD = struct.Struct("<8sIqqqqqqII")
_TAIL = struct.Struct("<I")
_HEAD_BYTES = _HEAD.size + _TAIL.size
_SWAP = sys.byteorder != "little"
DEFAULT_SEAL_BYTES = 8 << 20  # the writer reseals the active segment after this many new bytes


@dataclass(slots=True)
class Seal:
    """The contents of one ``.seal`` file (see the module docstring)."""

    base: int
    end: int
    first_ts: int
    last_ts: int
    size: int
    last_index_pos: int
    crc: int
    index: IndexArrays | None  # None when only the header was read

    @property
    def records(self) -> int:
        """How many records the sealed segment holds."""
        return self.end - self.base


def seal_path(segment: Path) -> Path:
    """The seal file of `segment`."""
    return segment.with_name(segment.name + SEAL_SUFFIX)


def _pack(values: array) -> bytes:
    if _SWAP:
        values = array("q", values)
        values.byteswap()
    return values.tobytes()


def _unpack(raw: bytes) -> array:
    values = array("q")
    values.frombytes(raw)
    if _SWAP:
        values.byteswap()
    return values


def encode_seal(seal: Seal) -> bytes:
    """The bytes of a seal file."""
    ix = seal.index
    assert ix is not None
    head = _HEAD.pack(SEAL_MAGIC, SEAL_VERSION, seal.base, seal.end, seal.first_ts, seal.last_ts, seal.size,
                      seal.last_index_pos, seal.crc, len(ix.off))
    body = b"".join((head, _TAIL.pack(zlib.crc32(head)), _pack(ix.off), _pack(ix.ts), _pack(ix.pos)))
    return body + _TAIL.pack(zlib.crc32(body))


def _decode_head(raw: bytes) -> Seal:
    """The header of a seal file (`index` None); raises ValueError saying what is wrong with it."""
    if len(raw) < _HEAD_BYTES:
        raise ValueError(f"seal is {len(raw)} bytes, too short")
    magic, version, base, end, first_ts, last_ts, size, last_ix, crc, n = _HEAD.unpack_from(raw, 0)
    if magic != SEAL_MAGIC:
        raise ValueError(f"bad seal magic {magic!r}")
    if version != SEAL_VERSION:
        raise ValueError(f"unknown seal version {version}")
    if zlib.crc32(memoryview(raw)[:_HEAD.size]) != _TAIL.unpack_from(raw, _HEAD.size)[0]:
        raise ValueError("seal header CRC mismatch")
    if end <= base or n == 0 or size <= 0:
        raise ValueError("seal contents are inconsistent")
    return Seal(base, end, first_ts, last_ts, size, last_ix, crc, None)


def decode_seal(raw: bytes) -> Seal:
    """Parse a seal file; raises ValueError saying what is wrong with it."""
    seal = _decode_head(raw)
    n = _HEAD.unpack_from(raw, 0)[9]
    want = _HEAD_BYTES + 24 * n + _TAIL.size
    if len(raw) != want:
        raise ValueError(f"seal is {len(raw)} bytes, expected {want}")
    if zlib.crc32(memoryview(raw)[:-_TAIL.size]) != _TAIL.unpack_from(raw, len(raw) - _TAIL.size)[0]:
        raise ValueError("seal CRC mismatch")
    at = _HEAD_BYTES
    off = _unpack(raw[at:at + 8 * n])
    ts = _unpack(raw[at + 8 * n:at + 16 * n])
    pos = _unpack(raw[at + 16 * n:at + 24 * n])
    if off[0] != seal.base or pos[0] != 0 or ts[0] != seal.first_ts:
        raise ValueError("seal contents are inconsistent")
    seal.index = IndexArrays(off, ts, pos)
    return seal


def read_seal(segment: Path, head_only: bool = False) -> tuple[Seal | None, str | None]:
    """(seal of `segment`, None), (None, None) if it has none, or (None, why it is unusable).

    `head_only`: read and check just the header (the seal's `index` is then None).
    """
    try:
        if head_only:
            with open(seal_path(segment), "rb", buffering=0) as f:
                raw = f.read(_HEAD_BYTES)
        else:
            raw = seal_path(segment).read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read {seal_path(segment).name}: {exc}"
    try:
        return (_decode_head(raw) if head_only else decode_seal(raw)), None
    except ValueError as exc:
        return None, f"{seal_path(segment).name}: {exc}"


def write_seal(segment: Path, seal: Seal) -> None:
    """Write `segment`'s seal atomically: temp file, fsync, rename, directory fsync (raises OSError)."""
    final = seal_path(segment)
    tmp = segment.with_name(segment.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        data = encode_seal(seal)
        done = 0
        while done < len(data):
            done += os.write(fd, data[done:])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    fsync_dir(segment.parent)


def remove_seals(segments: list[Path]) -> bool:
    """Delete the seals (and leftover temp files) of `segments`; True if any existed.

    The caller fsyncs the directory.
    """
    removed = False
    for seg in segments:
        for path in (seal_path(seg), seg.with_name(seg.name + TMP_SUFFIX)):
            try:
                path.unlink()
                removed = True
            except FileNotFoundError:
                pass
    return removed


def seal_from_index(base: int, end: int, last_ts: int, size: int, last_index_pos: int, crc: int,
                    entries: list[tuple[int, int, int]]) -> Seal:
    """A seal from the segment's index entries as a list of (offset, ts, position)."""
    off, ts, pos = array("q"), array("q"), array("q")
    for o, t, p in entries:
        off.append(o)
        ts.append(t)
        pos.append(p)
    return Seal(base, end, ts[0] if ts else 0, last_ts, size, last_index_pos, crc, IndexArrays(off, ts, pos))


def _mismatch(seal: Seal, base: int, size: int, next_base: int | None, last_ts: int) -> str | None:
    """Why `seal` does not describe a segment of `size` bytes from offset `base`.

    A full segment (`next_base` is the following segment's base) must match
    its seal exactly; the last segment may have grown past its seal.
    """
    if seal.base != base:
        return f"the seal is for offset {seal.base}, the segment starts at {base}"
    if next_base is not None and seal.size != size:
        return f"the segment is {size} bytes, its seal covers {seal.size}"
    if next_base is None and seal.size > size:
        return f"the segment is {size} bytes, shorter than the {seal.size} its seal covers"
    if next_base is not None and seal.end != next_base:
        return f"the seal ends at offset {seal.end}, the next segment starts at {next_base}"
    if seal.first_ts <= last_ts:
        return f"the seal's first ts {seal.first_ts} is not above the previous ts {last_ts}"
    return None


def open_segments(
    directory: Path,
    index_bytes: int,
    repair: bool,
    stop: int | None,
    durable_end: int | None = None,
    start: Start | None = None,
) -> list[Growth]:
    """`log.segment.scan_segments` from scratch, trusting seals instead of scanning.

    `start` (the directory's START file) says where the log begins after
    retention; segment files before it are leftovers of an interrupted
    removal and are ignored (`FileLog` deletes them).

    A full segment (every one but the last) is taken from its seal when the
    seal matches (same size, offsets continuing into the next segment);
    otherwise it is scanned and, when `repair` (the writer), sealed. The last
    segment's seal covers a prefix of it (the writer reseals it as it grows):
    only the bytes after that prefix are scanned, torn-tail handling included.
    A seal that does not match is ignored with a WARNING (and, when `repair`,
    replaced or removed). Raises like `scan_segments`.
    """
    begin = start or Start(0, 0)
    disk = [(b, p) for b, p in list_segments(directory) if b >= begin.first_offset]
    if not disk or disk[0][0] != begin.first_offset:
        return scan_segments(directory, None, begin.prev_ts, -1, index_bytes, repair, stop, durable_end,
                             begin.first_offset)  # empty or raises
    growth: list[Growth] = []
    expect, last_ts, last_ix = begin.first_offset, begin.prev_ts, -1
    prev: SegmentView | None = None
    for i, (base, path) in enumerate(disk):
        full = i + 1 < len(disk)
        next_base = disk[i + 1][0] if full else None
        if stop is not None and expect >= stop:
            return growth
        if base != expect:
            assert prev is not None
            raise LogCorruptError(
                f"missing segment: {prev.path} ends at offset {expect} but the next "
                f"segment file is {path} (offsets {expect}..{base - 1} are missing)")
        seal, why = read_seal(path, head_only=full)  # a full segment's entries are loaded when needed
        level = logging.WARNING
        if seal is not None:
            size = os.stat(path).st_size
            why = _mismatch(seal, base, size, next_base, last_ts)
            if full and seal.size < size and seal.base == base:
                level = logging.INFO  # sealed while active; filled since (a crash or a race with the writer)
            if why is None and (stop is None or seal.end <= stop):
                # a full segment's index entries are loaded when first needed (`load_index`)
                growth.append(Growth(base, path, seal.size, seal.end, seal.last_ts, seal.last_index_pos,
                                     None if full else seal.index, True, seal.first_ts))
                expect, last_ts, last_ix = seal.end, seal.last_ts, seal.last_index_pos
                prev = SegmentView(base, path, seal.size, seal.end)
                if full:
                    continue
                return growth + scan_segments(directory, prev, last_ts, last_ix, index_bytes, repair, stop,
                                              durable_end, begin.first_offset)
        if why is not None:
            logger.log(level, "%s: ignoring its seal (%s); scanning the segment", path, why)
            if repair and not full:
                remove_seals([path])
                fsync_dir(directory)
        if not full:
            return growth + scan_segments(directory, prev, last_ts, last_ix, index_bytes, repair, stop, durable_end,
                                          begin.first_offset)
        buf = read_file(path)
        try:
            res = scan_buffer(buf, 0, base, last_ts, -1, index_bytes, stop)
        except LogFormatError as exc:
            raise LogFormatError(f"{path}: {exc}") from exc
        if res.error is not None:
            assert next_base is not None
            raise LogCorruptError(
                f"{path}: {res.error} at byte {res.error_pos} (offset {res.next_offset}); "
                f"the segment is sealed ({disk[i + 1][1].name} follows)")
        growth.append(Growth(base, path, res.end_pos, res.next_offset, res.last_ts, res.last_index_pos,
                             res.index, True))
        expect, last_ts, last_ix = res.next_offset, res.last_ts, res.last_index_pos
        prev = SegmentView(base, path, res.end_pos, res.next_offset)
        if res.end_pos != len(buf):  # stopped at `stop`, inside this segment
            return growth
        if repair and res.next_offset == next_base:
            try:
                write_seal(path, seal_from_index(base, expect, last_ts, len(buf), last_ix, zlib.crc32(buf),
                                                 res.index))
            except OSError as exc:
                logger.warning("%s: could not write its seal (%s); the next open scans it again", path, exc)
    return growth


def load_index(seg: SegmentView, index_bytes: int) -> IndexArrays:
    """The index entries of full segment `seg`: from its seal, or (if that is gone or does not
    match, e.g. after a truncation) by walking its frame headers (no CRC check)."""
    seal, why = read_seal(seg.path)
    if seal is not None and seal.index is not None and (seal.base, seal.size, seal.end) == (
            seg.base, seg.size, seg.end):
        return seal.index
    logger.info("%s: indexing it by its frame headers (%s)", seg.path,
                why or ("it has no seal" if seal is None else "its seal no longer matches"))
    return index_by_walking(seg, index_bytes)


def index_by_walking(seg: SegmentView, index_bytes: int) -> IndexArrays:
    """Sparse index entries of `seg`'s first `seg.size` bytes, walking its frame headers."""
    out = IndexArrays(array("q"), array("q"), array("q"))
    next_ix = 0
    fd = os.open(seg.path, os.O_RDONLY)
    try:
        pos = 0
        while pos < seg.size:
            buf = os.pread(fd, min(seg.size - pos, 1 << 20), pos)
            if len(buf) < HEADER_SIZE:
                raise LogCorruptError(f"{seg.path}: file ends at byte {pos + len(buf)}, expected data up to "
                                      f"{seg.size}")
            at = 0
            while at + HEADER_SIZE <= len(buf):
                magic, _, length, off, ts, _ = HEADER.unpack_from(buf, at)
                if magic != MAGIC:
                    raise LogCorruptError(f"{seg.path}: bad frame header at byte {pos + at}")
                if pos + at >= next_ix:
                    out.off.append(off)
                    out.ts.append(ts)
                    out.pos.append(pos + at)
                    next_ix = pos + at + index_bytes
                at += HEADER_SIZE + length
            pos += at
    finally:
        os.close(fd)
    return out


def segment_crc(path: Path, size: int) -> int:
    """CRC-32 of the first `size` bytes of `path` (raises OSError)."""
    crc = 0
    with open(path, "rb", buffering=0) as f:
        left = size
        while left > 0:
            chunk = f.read(min(left, 8 << 20))
            if not chunk:
                raise OSError(f"{path} ends {left} bytes before byte {size}")
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
    return crc


def verify_seal(seal: Seal, buf: bytes, base: int, next_base: int | None,
                scanned: tuple[int, int] | None = None) -> str | None:
    """Check a whole segment's bytes `buf` against its seal: None if they agree, else what differs.

    Checks size, the CRC of all bytes, the offsets (against the segment's name,
    the next segment's base and `scanned`: the (end offset, last ts) a frame
    scan found) and that every index entry points at a frame header carrying
    the entry's offset and ts; frame CRCs are the caller's. For the last
    segment (`next_base` None) the seal may cover a prefix of `buf`.
    """
    why = _mismatch(seal, base, len(buf), next_base, -1)
    if why is not None:
        return why
    if seal.size < len(buf):  # the last segment, grown past its seal: the next frame must follow on
        if seal.size + HEADER_SIZE > len(buf):
            return f"the seal ends at byte {seal.size}, inside a frame header"
        magic, _, _, f_off, f_ts, _ = HEADER.unpack_from(buf, seal.size)
        if magic != MAGIC or f_off != seal.end or f_ts <= seal.last_ts:
            return f"the seal ends at byte {seal.size}, which is not the start of the frame of offset {seal.end}"
    elif scanned is not None and (seal.end, seal.last_ts) != scanned:
        return (f"the seal says offsets up to {seal.end - 1} with last ts {seal.last_ts}, the frames "
                f"end at offset {scanned[0] - 1} with ts {scanned[1]}")
    crc = zlib.crc32(memoryview(buf)[:seal.size])
    if crc != seal.crc:
        return f"the segment's checksum is {crc:08x}, its seal says {seal.crc:08x}"
    ix = seal.index
    if ix is None:
        return "the seal's index entries were not read"
    for off, ts, pos in zip(ix.off, ix.ts, ix.pos):
        if pos + HEADER_SIZE > seal.size:
            return f"index entry for offset {off} points past the end (byte {pos})"
        magic, _, _, f_off, f_ts, _ = HEADER.unpack_from(buf, pos)
        if magic != MAGIC or f_off != off or f_ts != ts:
            return f"index entry for offset {off} does not match the frame at byte {pos}"
    return None


__all__ = [
    "SEAL_SUFFIX", "TMP_SUFFIX", "Seal", "seal_path", "read_seal", "write_seal", "remove_seals",
    "seal_from_index", "open_segments", "segment_crc", "verify_seal", "encode_seal", "decode_seal",
    "load_index", "index_by_walking", "DEFAULT_SEAL_BYTES",
]
