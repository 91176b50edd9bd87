"""Copying a prefix of a log (the records with offset <= N) into a new FileLog.

From a FileLog the segment bytes are copied (whole sealed segments with
copy_file_range, the last one cut right after the frame of offset N) and the
copy is verified by opening it as its writer, which checks every frame. From
any other log the records are appended one batch at a time, keeping their
timestamps.
"""
from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Iterator

from history.errors import RestoreError
from history.progress import Reporter
from history.sources import Source
from log import FileLog
from log.codec import HEADER, HEADER_SIZE
from log.directory import FORMAT_FILE, fsync_dir, read_start, write_start
from log.segment import list_segments, walk_headers

COPY_BATCH = 4096


def _copy_range(src: Path, dest: Path, length: int) -> None:
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        done = 0
        while done < length:
            try:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), length - done)
            except (AttributeError, OSError):
                fin.seek(done)
                fout.seek(done)
                while done < length:
                    chunk = fin.read(min(8 << 20, length - done))
                    if not chunk:
                        break
                    fout.write(chunk)
                    done += len(chunk)
                n = 0
            if n == 0:
                break
            done += n
        if done != length:
            raise RestoreError(f"{src} ended after {done} bytes, expected {length}")
        fout.flush()
        os.fsync(fout.fileno())


def _frame_end(path: Path, offset: int) -> int:
    """The file position right after the frame of `offset` in segment `path`."""
    found = walk_headers(path, 0, os.path.getsize(path), offset=offset)
    if found is None or found[0] != offset:
        raise RestoreError(f"{path}: no frame for offset {offset}")
    pos = found[2]
    with open(path, "rb") as f:
        f.seek(pos)
        head = f.read(HEADER_SIZE)
    return pos + HEADER_SIZE + HEADER.unpack(head)[2]


def copy_segments(src_dir: Path, dest_dir: Path, n: int, archive_dir: Path | None = None) -> int:
    """Copy the frames of offsets < `n` of the FileLog in `src_dir` into `dest_dir` (bytes copied).

    Whole sealed segments are copied with copy_file_range; the segment holding
    offset n-1 is cut right after that frame. The copy is verified when it is
    opened as a FileLog (every frame's CRC, dense offsets, increasing ts).
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    if n <= 0:
        return 0
    fmt = src_dir / FORMAT_FILE
    if fmt.exists():
        shutil.copy2(fmt, dest_dir / FORMAT_FILE)
    start = read_start(src_dir)
    segs = [(b, p) for b, p in list_segments(src_dir) if b >= start.first_offset]
    if archive_dir is not None and start.first_offset > 0:  # the archived prefix first
        start = read_start(archive_dir)
        segs = [(b, p) for b, p in list_segments(archive_dir) if b < segs[0][0]] + segs
    if start.first_offset > 0:
        if n <= start.first_offset:
            raise RestoreError(f"offset {n - 1} is before the first offset {start.first_offset} {src_dir} holds")
        write_start(dest_dir, start)
    total = 0
    for i, (base, path) in enumerate(segs):
        if base >= n:
            break
        following = segs[i + 1][0] if i + 1 < len(segs) else None
        length = os.path.getsize(path) if following is not None and following <= n else _frame_end(path, n - 1)
        _copy_range(path, dest_dir / path.name, length)
        total += length
    fsync_dir(dest_dir)
    return total


async def copy_verified_log_prefix(src_dir: Path, dest_dir: Path, upto: int, reporter: Reporter,
                                   archive_dir: Path | None = None) -> None:
    """`copy_log_prefix` from the FileLog in `src_dir`, leaving the copy closed.

    The copy is verified by opening it as its writer (which scans every
    frame). The byte copy runs on a thread, so the event loop keeps serving.
    """
    n = upto + 1
    task = reporter.task("copy log", n)
    if n > 0:
        await asyncio.to_thread(copy_segments, src_dir, dest_dir, n, *((archive_dir,) if archive_dir else ()))
        got = await _open_and_close(dest_dir)
        if got != n:
            raise RestoreError(f"the copied log ends at offset {got - 1}, expected {n - 1}")
    else:
        await _open_and_close(dest_dir)
    task.update(n)
    task.finish()


async def _open_and_close(log_dir: Path) -> int:
    """Open the FileLog in `log_dir` as its writer (scanning and verifying it) and close it; its next offset."""
    log_ = FileLog(log_dir, read_only=False)
    await log_.open()
    try:
        return log_.next_offset()
    finally:
        await log_.close()


async def copy_log_prefix(src: Source, dest_dir: Path, upto: int, reporter: Reporter) -> FileLog:
    """A new FileLog in `dest_dir` holding the records of `src` with offset <= `upto`; returned open.

    From a FileLog the segment bytes are copied (same offsets, timestamps and
    contents, verified on open). From any other log the records are appended
    one batch at a time, keeping their timestamps; a source whose offsets have
    gaps (a KafkaLog skips duplicate copies) gets dense offsets in the copy,
    so its projection must then be built from the copy (`restore_to_dir` does).
    """
    n = upto + 1
    task = reporter.task("copy log", n)
    if src.log_dir is not None and n > 0:
        await asyncio.to_thread(copy_segments, src.log_dir, dest_dir, n, *((src.archive_dir,) if src.archive_dir else ()))
        dest = FileLog(dest_dir, read_only=False)
        await dest.open()  # scans and verifies every copied frame
        if dest.next_offset() != n:
            got = dest.next_offset()
            await dest.close()
            raise RestoreError(f"the copied log ends at offset {got - 1}, expected {n - 1}")
    else:
        dest = FileLog(dest_dir, read_only=False)
        await dest.open()
        if dest.next_offset() != 0:
            await dest.close()
            raise RestoreError(f"{dest_dir} already holds a log")
        start = getattr(src.log, "first_offset", lambda: 0)()
        if start != 0 and n > start:
            await dest.close()
            raise RestoreError("an archive of a log tail cannot be restored on its own (it does not start at offset 0)")
        done = 0
        try:
            async for batch in src.log.read(0, n, COPY_BATCH):
                stamps = [r.ts for r in batch]
                await dest.append(batch)  # keeps each record's (increasing) ts; offsets become dense
                if [r.ts for r in batch] != stamps:
                    raise RestoreError(f"copying up to offset {batch[-1].offset}: the new log changed a timestamp")
                done += len(batch)
                task.update(done)
        except BaseException:
            await dest.close()
            raise
    task.update(n)
    task.finish()
    return dest


__all__ = ["COPY_BATCH", "copy_log_prefix", "copy_segments", "copy_verified_log_prefix"]
