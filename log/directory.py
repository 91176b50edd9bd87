"""The files of a FileLog directory besides its segments: FORMAT, LOCK and COMMITTED.

* ``FORMAT`` names the on-disk format and its version; a newer version is
  refused with LogFormatError naming the file.
* ``LOCK`` is ``flock()``ed by the one FileLog that may append.
* ``START`` (only once retention removed a prefix) holds the first offset
  the directory still has and the ts of the record before it (+ CRC); it is
  replaced atomically (tmp, fsync, rename) *before* the segments it excludes
  are removed, so a crash in between leaves segments the next open removes.
* ``COMMITTED`` is the writer's published durable end (next offset, last ts,
  epoch + CRC), rewritten in place after every fsync, so followers (other
  processes) never read past durable data. It is a hint, not the truth: it is
  not fsynced, and the writer rewrites it on open.
"""
from __future__ import annotations

import fcntl
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from log.errors import LogCorruptError, LogFormatError

FORMAT_NAME = "tape.filelog"
FORMAT_VERSION = 1
FORMAT_FILE = "FORMAT"
LOCK_FILE = "LOCK"
COMMITTED_FILE = "COMMITTED"
START_FILE = "START"
_MARK = struct.Struct("<qqqI")


@dataclass(frozen=True, slots=True)
class Marker:
    """The writer's published durable end; `epoch` grows with every truncate."""

    next_offset: int
    last_ts: int
    epoch: int


def fsync_path(path: Path) -> None:
    """Make a file's contents, or a directory's entries (created/removed files), durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries (created/removed files) durable."""
    fsync_path(directory)


def move_into_place(work: Path, dest: Path) -> None:
    """Durably rename the finished directory `work` to `dest` (an existing, empty `dest` is replaced)."""
    if dest.exists():
        dest.rmdir()
    os.rename(work, dest)
    fsync_dir(dest.parent)


def check_format(directory: Path, create: bool, has_segments: bool) -> None:
    """Check FORMAT (or, if `create` and the directory holds no log, write it)."""
    path = directory / FORMAT_FILE
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if has_segments:
            raise LogFormatError(
                f"{path} is missing but {directory} holds segment files: "
                "not a Tape FileLog directory, or written by an unknown format") from None
        if create:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION}) + "\n")
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            fsync_dir(directory)
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


def try_lock(directory: Path) -> int | None:
    """Take the writer lock: the locked fd (keep it open), or None if it is held."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def read_marker(directory: Path, busy: Marker | None = None) -> Marker | None:
    """The COMMITTED marker; None if there is none, `busy` if caught mid-update."""
    try:
        with open(directory / COMMITTED_FILE, "rb", buffering=0) as f:
            for _ in range(3):
                raw = f.read(_MARK.size)
                if len(raw) == _MARK.size:
                    nxt, last_ts, epoch, crc = _MARK.unpack(raw)
                    if zlib.crc32(raw[:24]) == crc:
                        return Marker(nxt, last_ts, epoch)
                f.seek(0)
    except FileNotFoundError:
        return None
    return busy


def open_marker(directory: Path) -> int:
    """Open (creating) COMMITTED for `write_marker`."""
    return os.open(directory / COMMITTED_FILE, os.O_RDWR | os.O_CREAT, 0o644)


def write_marker(fd: int, marker: Marker) -> None:
    """Publish `marker` (one small in-place write; raises OSError)."""
    head = struct.pack("<qqq", marker.next_offset, marker.last_ts, marker.epoch)
    os.pwrite(fd, head + struct.pack("<I", zlib.crc32(head)), 0)


@dataclass(frozen=True, slots=True)
class Start:
    """Where a FileLog begins after retention: its first offset and the ts of the record before it."""

    first_offset: int
    prev_ts: int


_START = struct.Struct("<qqI")


def read_start(directory: Path) -> Start:
    """The START file (``Start(0, 0)`` when there is none); LogCorruptError if it is damaged."""
    path = directory / START_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Start(0, 0)
    if len(raw) != _START.size:
        raise LogCorruptError(f"{path}: damaged ({len(raw)} bytes, expected {_START.size})")
    first, prev_ts, crc = _START.unpack(raw)
    if zlib.crc32(raw[:16]) != crc or first < 0:
        raise LogCorruptError(f"{path}: damaged (checksum mismatch)")
    return Start(first, prev_ts)


def write_start(directory: Path, start: Start) -> None:
    """Durably replace START (tmp file, fsync, rename, fsync the directory)."""
    head = struct.pack("<qq", start.first_offset, start.prev_ts)
    tmp = directory / (START_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, head + struct.pack("<I", zlib.crc32(head)))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / START_FILE)
    fsync_dir(directory)
