"""Retention in the FileLog: dropping a prefix of full segments, START, the segment archive, crashes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from log import FileLog
from log.archived_log import ArchivedLog
from log.directory import read_start
from log.errors import LogTrimmedError
from log.record import Record, Write
from log.segment import list_segments
from log.segment_archive import DirectoryArchive, SegmentArchive

ROOT = Path(__file__).resolve().parents[2]
SEG = 1_000


def rec(i: int) -> Record:
    return Record([Write("messages", f"m{i}", (b"%d:" % i).ljust(100, b"x"))], function="f")


async def make_log(path: Path, n: int) -> None:
    log = FileLog(path, segment_bytes=SEG)
    await log.open()
    for i in range(n):
        await log.append([rec(i)])
    await log.close()


async def offsets(log: object, start: int) -> list[int]:
    return [r.offset async for b in log.read(start) for r in b]  # type: ignore[attr-defined]


async def test_drop_prefix_archives_then_reopens_from_start(tmp_path: Path) -> None:
    await make_log(tmp_path / "log", 100)
    archive = DirectoryArchive(tmp_path / "archive")
    assert isinstance(archive, SegmentArchive)
    log = FileLog(tmp_path / "log", segment_bytes=SEG)
    await log.open()
    segs = log.sealed_segments()
    cut = segs[3].end  # drop the first four segments
    first = await log.drop_prefix(cut, archive)
    assert first == cut and log.first_offset() == cut
    assert await offsets(log, cut) == list(range(cut, 100))
    with pytest.raises(LogTrimmedError, match=f"before {cut}"):
        await offsets(log, 0)
    await log.append([rec(100)])
    await log.close()
    assert [b for b, _ in list_segments(tmp_path / "log")][0] == cut
    assert read_start(tmp_path / "log").first_offset == cut
    assert [b for b, _ in list_segments(tmp_path / "archive")] == [s.base for s in segs[:4]]

    again = FileLog(tmp_path / "log", segment_bytes=SEG)
    await again.open()
    assert again.first_offset() == cut and again.next_offset() == 101
    assert await again.offset_for_timestamp(0) == cut
    joined = ArchivedLog(tmp_path / "archive", again)
    await joined.open()
    assert await offsets(joined, 0) == list(range(101))
    ts5 = [r.ts async for b in joined.read(5, 6) for r in b][0]
    assert await joined.offset_for_timestamp(ts5) == 5
    await joined.close()


async def test_drop_prefix_without_archive_deletes(tmp_path: Path) -> None:
    await make_log(tmp_path / "log", 60)
    log = FileLog(tmp_path / "log", segment_bytes=SEG)
    await log.open()
    active = log.sealed_segments()[-1].end  # the first offset of the active segment
    first = await log.drop_prefix(10**9)  # never the active segment
    assert first == active
    assert await offsets(log, first) == list(range(first, 60))
    await log.close()
    assert [b for b, _ in list_segments(tmp_path / "log")] == [first]


async def test_drop_prefix_keeps_segments_not_wholly_before(tmp_path: Path) -> None:
    await make_log(tmp_path / "log", 60)
    log = FileLog(tmp_path / "log", segment_bytes=SEG)
    await log.open()
    segs = log.sealed_segments()
    assert await log.drop_prefix(segs[2].end - 1) == segs[1].end  # segment 2 holds offset before-1: kept
    await log.close()


CRASH = """
import asyncio, os, signal, sys
from pathlib import Path
from log import FileLog
from log import segment_archive
from log.segment_archive import DirectoryArchive
log_dir, archive_dir, kill_after = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
calls = [0]
real = segment_archive._copy_durably
def copy(src, dest):
    real(src, dest)
    calls[0] += 1
    if calls[0] >= kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
segment_archive._copy_durably = copy
async def main():
    log = FileLog(log_dir, segment_bytes=1000)
    await log.open()
    await log.drop_prefix(log.sealed_segments()[-1].end, DirectoryArchive(archive_dir))
    if kill_after > 1000:
        os.kill(os.getpid(), signal.SIGKILL)  # after START, before nothing else
asyncio.run(main())
"""


@pytest.mark.parametrize("kill_after", [1, 4, 7, 10_000])
async def test_sigkill_during_archive_move_leaves_a_consistent_log(tmp_path: Path, kill_after: int) -> None:
    await make_log(tmp_path / "log", 80)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path / "log"), str(tmp_path / "archive"),
                           str(kill_after)], env=env, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    log = FileLog(tmp_path / "log", segment_bytes=SEG)
    await log.open()  # finishes an interrupted removal
    first = log.first_offset()
    assert [b for b, _ in list_segments(tmp_path / "log")][0] == first
    assert await offsets(log, first) == list(range(first, 80))
    if first > 0:  # every removed offset is in the archive
        joined = ArchivedLog(tmp_path / "archive", log)
        await joined.open()
        assert await offsets(joined, 0) == list(range(80))
        await joined.close()
    else:
        await log.close()
    # retention can be run again and completes
    log = FileLog(tmp_path / "log", segment_bytes=SEG)
    await log.open()
    end = await log.drop_prefix(10**9, DirectoryArchive(tmp_path / "archive"))
    joined = ArchivedLog(tmp_path / "archive", log)
    await joined.open()
    assert await offsets(joined, 0) == list(range(80)) and end > 0
    await joined.close()
