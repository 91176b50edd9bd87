"""Seals: opening a FileLog without scanning its full segments (log.seal), and verifying them."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from log import FileLog
from log import seal as seal_mod
from log.codec import HEADER_SIZE
from log.errors import LogCorruptError
from log.index import LogIndex
from log.record import Record, Write
from log.seal import TMP_SUFFIX, encode_seal, read_seal, seal_path, verify_seal
from log.segment import list_segments, read_file
from ops.doctor_cmd import diagnose, scan_log

ROOT = Path(__file__).resolve().parents[2]
SEG = 1_000


def rec(i: int, size: int = 100) -> Record:
    return Record([Write("messages", f"m{i}", (b"%d:" % i).ljust(size, b"x"))], function="f")


async def make_log(path: Path, n: int, per_append: int = 1) -> list[Record]:
    """Write n records to a fresh log with small segments and close it."""
    log = FileLog(path, segment_bytes=SEG)
    await log.open()
    recs = [rec(i) for i in range(n)]
    for i in range(0, n, per_append):
        await log.append(recs[i:i + per_append])
    await log.close()
    return recs


async def read_all(log: FileLog, start: int = 0) -> list[Record]:
    return [r async for b in log.read(start) for r in b]


def segs(path: Path) -> list[Path]:
    return [p for _, p in list_segments(path)]


def frame_positions(path: Path) -> list[int]:
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        out.append(pos)
        pos += HEADER_SIZE + int.from_bytes(data[pos + 4:pos + 8], "little")
    return out


def flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x10
    path.write_bytes(bytes(data))


class Reads:
    """Records which segment files `log.seal.open_segments` reads in full (monkeypatched in)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        monkeypatch.setattr(seal_mod, "read_file", self)

    def __call__(self, path: Path, start: int = 0) -> bytes:
        self.paths.append(Path(path).name)
        return read_file(path, start)


def snapshot(st: LogIndex) -> tuple[list[tuple[int, int, int]], list[int], int, int, int]:
    """Every index entry (loading all), each segment's first ts, the end, last ts and last entry position."""
    entries = [e for i in range(len(st.segs)) for e in st.segment_entries(i)]
    return entries, list(st.first_ts), st.next_offset, st.last_ts, st.last_index_pos


async def index_of(path: Path) -> tuple[list[tuple[int, int, int]], list[int], int, int, int]:
    """The sparse index and end of a log as a full scan finds it (seals moved aside, follower open)."""
    seals = list(path.glob("*.seal"))
    for p in seals:
        p.rename(p.with_name(p.name + ".aside"))
    try:
        log = FileLog(path, segment_bytes=SEG, read_only=True)
        await log.open()
        out = snapshot(log._st)
        await log.close()
    finally:
        for p in seals:
            p.with_name(p.name + ".aside").rename(p)
    return out


# ---------------------------------------------------------------- writing seals


async def test_rolling_over_seals_every_full_segment(tmp_path: Path) -> None:
    await make_log(tmp_path, 40, per_append=3)
    files = segs(tmp_path)
    assert len(files) >= 4
    for i, path in enumerate(files[:-1]):
        seal, why = read_seal(path)
        assert why is None and seal is not None
        data = path.read_bytes()
        nxt = list_segments(tmp_path)[i + 1][0]
        assert verify_seal(seal, data, list_segments(tmp_path)[i][0], nxt) is None
        assert seal.records == nxt - seal.base and seal.size == len(data)
    assert not seal_path(files[-1]).exists()  # the active segment is not sealed
    assert not list(tmp_path.glob("*" + TMP_SUFFIX))


async def test_one_commit_spanning_several_segments_seals_each(tmp_path: Path) -> None:
    await make_log(tmp_path, 40, per_append=40)
    files = segs(tmp_path)
    assert len(files) >= 4
    assert all(read_seal(p)[0] is not None for p in files[:-1])


# ---------------------------------------------------------------- opening


async def test_open_reads_only_the_unsealed_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recs = await make_log(tmp_path, 40)
    files = segs(tmp_path)
    scanned = await index_of(tmp_path)
    reads = Reads(monkeypatch)
    log = FileLog(tmp_path, segment_bytes=SEG)
    await log.open()
    assert reads.paths == []  # the sealed segments were not read (the tail goes through log.segment)
    st = log._st
    assert all(ix is None for ix in st.entries[:-1])  # full segments' entries: loaded when first needed
    assert snapshot(st) == scanned
    assert await read_all(log) == recs
    assert await read_all(log, 17) == recs[17:]
    for r in recs:
        assert await log.offset_for_timestamp(r.ts) == r.offset
    more = [rec(i) for i in range(40, 60)]
    for r in more:
        await log.append([r])
    await log.close()
    assert len(segs(tmp_path)) > len(files)
    assert all(read_seal(p)[0] is not None for p in segs(tmp_path)[:-1])
    log = FileLog(tmp_path, segment_bytes=SEG)
    await log.open()
    assert await read_all(log) == recs + more
    await log.close()


async def test_open_with_sealed_and_unsealed_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    recs = await make_log(tmp_path, 40)
    files = segs(tmp_path)
    expected = await index_of(tmp_path)
    seal_path(files[1]).unlink()  # unsealed in the middle
    other = seal_path(files[3])
    other.write_bytes(seal_path(files[2]).read_bytes())  # a seal that does not match its segment
    reads = Reads(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="tape.log"):
        log = FileLog(tmp_path, segment_bytes=SEG)
        await log.open()
    assert reads.paths == [files[1].name, files[3].name]
    assert any(files[3].name in m and "ignoring its seal" in m for m in caplog.messages)
    assert snapshot(log._st) == expected
    assert await read_all(log) == recs
    await log.close()
    for path in files[:-1]:  # the writer sealed them again
        seal, _ = read_seal(path)
        assert seal is not None and verify_seal(seal, path.read_bytes(), seal.base, None) is None
    reads.paths.clear()
    log = FileLog(tmp_path, segment_bytes=SEG)
    await log.open()
    assert reads.paths == []
    await log.close()


async def test_old_directory_without_seals_opens_and_gets_sealed(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    recs = await make_log(tmp_path, 40)
    files = segs(tmp_path)
    for path in files:
        seal_path(path).unlink(missing_ok=True)
    before = {p.name: p.read_bytes() for p in files}
    reads = Reads(monkeypatch)
    follower = FileLog(tmp_path, segment_bytes=SEG, read_only=True)
    await follower.open()
    assert await read_all(follower) == recs
    await follower.close()
    assert not any(seal_path(p).exists() for p in files)  # a follower never writes seals
    assert reads.paths == [p.name for p in files[:-1]]
    log = FileLog(tmp_path, segment_bytes=SEG)
    await log.open()
    assert await read_all(log) == recs
    await log.close()
    assert all(seal_path(p).exists() for p in files[:-1]) and not seal_path(files[-1]).exists()
    assert {p.name: p.read_bytes() for p in files} == before  # segment bytes untouched
    assert not list(tmp_path.glob("*" + TMP_SUFFIX))
    reads.paths.clear()
    log = FileLog(tmp_path, segment_bytes=SEG)
    await log.open()
    assert reads.paths == [] and await read_all(log) == recs
    await log.close()


async def test_torn_tail_is_still_truncated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    recs = await make_log(tmp_path, 40)
    tail = segs(tmp_path)[-1]
    size = tail.stat().st_size
    with open(tail, "ab") as f:
        f.write(b"TL\x01\x00partial frame")
    with caplog.at_level(logging.WARNING, logger="tape.log"):
        log = FileLog(tmp_path, segment_bytes=SEG)
        await log.open()
    assert tail.stat().st_size == size
    assert any("torn tail" in m for m in caplog.messages)
    assert await read_all(log) == recs
    r = rec(40)
    await log.append([r])
    assert r.offset == 40
    await log.close()


async def test_stale_seal_on_the_last_segment_is_removed(tmp_path: Path) -> None:
    recs = await make_log(tmp_path, 40)
    files = segs(tmp_path)
    seal_path(files[-1]).write_bytes(seal_path(files[0]).read_bytes())
    log = FileLog(tmp_path, segment_bytes=SEG)
    await log.open()
    assert not seal_path(files[-1]).exists()
    assert await read_all(log) == recs
    await log.close()


# ---------------------------------------------------------------- crashes while sealing


async def test_half_written_seal_temp_file_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL while sealing: the seal's temp file is cut short and never renamed."""
    recs = await make_log(tmp_path, 40)
    files = segs(tmp_path)
    target = files[2]
    good = seal_path(target).read_bytes()
    seal_path(target).unlink()
    tmp = target.with_name(target.name + TMP_SUFFIX)
    tmp.write_bytes(good[:len(good) // 2])
    reads = Reads(monkeypatch)
    log = FileLog(tmp_path, segment_bytes=SEG)
    await log.open()
    assert reads.paths == [target.name]  # scanned, not trusted
    assert await read_all(log) == recs
    await log.close()
    assert seal_path(target).read_bytes() == good and not tmp.exists()


async def test_damaged_seal_header_is_ignored_with_a_warning(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    recs = await make_log(tmp_path, 40)
    target = segs(tmp_path)[1]
    good = seal_path(target).read_bytes()
    seal_path(target).write_bytes(good[:30] + bytes([good[30] ^ 1]) + good[31:])
    with caplog.at_level(logging.WARNING, logger="tape.log"):
        log = FileLog(tmp_path, segment_bytes=SEG)
        await log.open()
    assert any(target.name in m and "ignoring its seal" in m and "CRC" in m for m in caplog.messages)
    assert await read_all(log) == recs
    await log.close()
    assert seal_path(target).read_bytes() == good  # the writer sealed it again


async def test_damaged_seal_entries_fall_back_to_walking_headers(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Open reads only seal headers; entries that turn out damaged when needed are rebuilt from the frames."""
    recs = await make_log(tmp_path, 40)
    expected = await index_of(tmp_path)
    target = segs(tmp_path)[1]
    good = seal_path(target).read_bytes()
    seal_path(target).write_bytes(good[:-9])
    with caplog.at_level(logging.INFO, logger="tape.log"):
        log = FileLog(tmp_path, segment_bytes=SEG)
        await log.open()
        assert await read_all(log) == recs
        assert snapshot(log._st) == expected
    assert any(target.name in m and "frame headers" in m for m in caplog.messages)
    await log.close()
    problems = scan_log(tmp_path).seal_problems
    assert len(problems) == 1 and target.name in problems[0] and "unreadable" in problems[0]


async def test_writer_killed_between_temp_file_and_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rename never happens (as if the process died there): the segment stays unsealed and opens."""
    real = os.replace

    def dies(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if str(src).endswith(TMP_SUFFIX):
            raise OSError(5, "simulated crash before rename")
        real(src, dst)

    monkeypatch.setattr(seal_mod.os, "replace", dies)
    recs = await make_log(tmp_path, 40)
    files = segs(tmp_path)
    assert not any(seal_path(p).exists() for p in files)
    assert list(tmp_path.glob("*" + TMP_SUFFIX))
    monkeypatch.setattr(seal_mod.os, "replace", real)
    log = FileLog(tmp_path, segment_bytes=SEG)
    await log.open()
    assert await read_all(log) == recs
    await log.close()
    assert all(seal_path(p).exists() for p in files[:-1])


def test_sigkill_during_sealing_is_safe(tmp_path: Path) -> None:
    """A writer process SIGKILLed mid-stream (rolling over every few records) reopens cleanly."""
    script = f"""
import asyncio, os, signal, sys
sys.path.insert(0, {str(ROOT)!r})
from log import FileLog, Record, Write
from log import seal

real = seal.write_seal
def write_and_die(segment, s):
    if s.base >= 30:  # die with the temp file half-written
        tmp = segment.with_name(segment.name + seal.TMP_SUFFIX)
        tmp.write_bytes(seal.encode_seal(s)[:20])
        os.kill(os.getpid(), signal.SIGKILL)
    real(segment, s)
seal.write_seal = write_and_die
import log.file_log
log.file_log.write_seal = write_and_die

async def main():
    log = FileLog({str(tmp_path)!r}, segment_bytes={SEG})
    await log.open()
    for i in range(1000):
        await log.append([Record([Write("t", f"k{{i}}", b"v" * 100)])])

asyncio.run(main())
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr

    async def reopen() -> list[Record]:
        log = FileLog(tmp_path, segment_bytes=SEG)
        await log.open()
        got = await read_all(log)
        r = Record([Write("t", "after", b"x")])
        await log.append([r])
        assert r.offset == len(got)
        await log.close()
        return got

    import asyncio
    got = asyncio.run(reopen())
    assert [r.offset for r in got] == list(range(len(got))) and len(got) > 30
    assert all(r.writes[0].doc == b"v" * 100 for r in got)
    files = segs(tmp_path)
    assert all(read_seal(p)[0] is not None for p in files[:-1])


# ---------------------------------------------------------------- truncation


async def test_truncate_into_a_sealed_segment_unseals_it(tmp_path: Path) -> None:
    recs = await make_log(tmp_path, 40)
    files = segs(tmp_path)
    base, path = list_segments(tmp_path)[2]
    log = FileLog(tmp_path, segment_bytes=SEG)
    await log.open()
    await log.truncate(base + 2)
    assert not seal_path(path).exists()
    assert not any(seal_path(p).exists() for p in files[3:])
    more = [rec(i) for i in range(100, 130)]
    for r in more:
        await log.append([r])
    await log.close()
    log = FileLog(tmp_path, segment_bytes=SEG)
    await log.open()
    got = await read_all(log)
    assert got == recs[:base + 2] + more
    await log.close()
    assert all(read_seal(p)[0] is not None for p in segs(tmp_path)[:-1])


# ---------------------------------------------------------------- damage in a sealed segment


async def test_damage_in_a_sealed_segment_is_found_by_reading_and_by_doctor(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    recs = await make_log(log_dir, 40)
    base, sealed = list_segments(log_dir)[1]
    positions = frame_positions(sealed)
    pos = positions[2]
    flip(sealed, pos + HEADER_SIZE + 12)
    bad = base + 2

    log = FileLog(log_dir, segment_bytes=SEG)
    await log.open()  # trusts the seal: the segment is not read
    assert log.next_offset() == 40
    assert await read_all(log, bad + 1) == recs[bad + 1:]
    with pytest.raises(LogCorruptError) as info:
        await read_all(log)
    msg = str(info.value)
    assert sealed.name in msg and f"byte {pos}" in msg and f"record offset {bad}" in msg
    with pytest.raises(LogCorruptError, match=rf"{sealed.name}.*record offset {bad}"):
        [w async for w in log.read_writes(0)]
    await log.close()

    rep = scan_log(log_dir)
    d = rep.damage
    assert d is not None and d.kind == "corrupt" and d.segment == sealed and d.offset == bad and d.byte == pos
    assert d.sealed and "seal" in d.reason
    report = diagnose(tmp_path, verify=True)
    assert not report.healthy
    assert any("server starts" in a for a in report.advice)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "ops.cli", "doctor", "--data", str(tmp_path), "--verify"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert run.returncode == 1
    out = " ".join(run.stdout.split())
    assert sealed.name in out and f"record offset {bad}" in out


async def test_doctor_checks_segments_against_their_seals(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    await make_log(log_dir, 40)
    files = segs(log_dir)
    rep = scan_log(log_dir)
    assert rep.damage is None and rep.seal_problems == [] and rep.sealed == len(files) - 1
    assert diagnose(tmp_path).healthy
    # a seal whose own CRC checks out but whose contents lie (written by a bug, say)
    seal, _ = read_seal(files[1])
    assert seal is not None
    seal.crc ^= 1
    seal_path(files[1]).write_bytes(encode_seal(seal))
    seal_path(files[2]).write_bytes(b"junk")
    rep = scan_log(log_dir)
    assert rep.damage is None and len(rep.seal_problems) == 2
    assert files[1].name in rep.seal_problems[0] and "checksum" in rep.seal_problems[0]
    assert files[2].name in rep.seal_problems[1] and "unreadable" in rep.seal_problems[1]
    report = diagnose(tmp_path)
    assert not report.healthy and any("seal" in a for a in report.advice)


async def test_doctor_truncate_log_removes_the_seals_it_invalidates(tmp_path: Path) -> None:
    from ops.doctor_cmd import truncate_log
    log_dir = tmp_path / "log"
    await make_log(log_dir, 40)
    files = segs(log_dir)
    flip(files[1], frame_positions(files[1])[1] + HEADER_SIZE + 5)
    truncate_log(tmp_path)
    assert segs(log_dir) == files[:2]
    assert not any(seal_path(p).exists() for p in files[1:])
    log = FileLog(log_dir, segment_bytes=SEG)
    await log.open()
    n = log.next_offset()
    for i in range(40):
        await log.append([rec(i)])
    await log.close()
    assert diagnose(tmp_path).healthy
    assert scan_log(log_dir).records == n + 40


# ---------------------------------------------------------------- the active segment's prefix seal


async def test_active_segment_is_resealed_as_it_grows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    log = FileLog(tmp_path, seal_bytes=1_500)
    await log.open()
    recs = [rec(i) for i in range(40)]
    for r in recs:
        await log.append([r])
    await log.close()
    (tail,) = segs(tmp_path)
    seal, _ = read_seal(tail)
    size = tail.stat().st_size
    assert seal is not None and seal.records > 20 and 0 <= size - seal.size < 1_500 + 200
    assert verify_seal(seal, tail.read_bytes(), 0, None) is None
    assert scan_log(tmp_path).seal_problems == []
    expected = await index_of(tmp_path)

    scanned: list[int] = []
    real = seal_mod.scan_segments

    def spy(directory: Path, tail_view: object, *args: object) -> object:
        scanned.append(getattr(tail_view, "size", 0))
        return real(directory, tail_view, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(seal_mod, "scan_segments", spy)
    with open(tail, "ab") as f:
        f.write(b"TL\x01\x00torn")
    with caplog.at_level(logging.WARNING, logger="tape.log"):
        log = FileLog(tmp_path, seal_bytes=1_500)
        await log.open()
    assert scanned == [seal.size]  # only the bytes after the sealed prefix were scanned
    assert tail.stat().st_size == size and any("torn tail" in m for m in caplog.messages)
    assert snapshot(log._st) == expected
    assert await read_all(log) == recs
    for r in recs:
        assert await log.offset_for_timestamp(r.ts) == r.offset
    more = [rec(i) for i in range(40, 80)]
    for r in more:
        await log.append([r])
    await log.close()
    log = FileLog(tmp_path)
    await log.open()
    assert await read_all(log) == recs + more
    await log.close()


async def test_damage_under_the_active_segments_seal(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    log = FileLog(log_dir, seal_bytes=1_500)
    await log.open()
    for i in range(40):
        await log.append([rec(i)])
    await log.close()
    (tail,) = segs(log_dir)
    pos = frame_positions(tail)[3]
    flip(tail, pos + HEADER_SIZE + 7)
    log = FileLog(log_dir)
    await log.open()
    assert log.next_offset() == 40
    with pytest.raises(LogCorruptError, match=rf"{tail.name}: damaged frame at byte {pos} \(record offset 3\)"):
        await read_all(log)
    await log.close()
    d = scan_log(log_dir).damage
    assert d is not None and d.kind == "corrupt" and d.offset == 3 and d.sealed


async def test_a_seal_longer_than_the_last_segment_is_ignored(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    log = FileLog(tmp_path, seal_bytes=1_500)
    await log.open()
    recs = [rec(i) for i in range(40)]
    for r in recs:
        await log.append([r])
    await log.close()
    (tail,) = segs(tmp_path)
    seal, _ = read_seal(tail)
    assert seal is not None
    with open(tail, "r+b") as f:  # a torn tail reaching under the seal: the seal no longer fits
        f.truncate(seal.size - 10)
    (tmp_path / "COMMITTED").unlink()  # else the cut is (rightly) called damage to acknowledged records
    with caplog.at_level(logging.WARNING, logger="tape.log"):
        log = FileLog(tmp_path, seal_bytes=1_500)
        await log.open()
    assert any("ignoring its seal" in m for m in caplog.messages)
    n = log.next_offset()
    assert await read_all(log) == recs[:n] and n < seal.records
    await log.close()
    seal2, _ = read_seal(tail)
    assert seal2 is None or seal2.size <= tail.stat().st_size


async def test_full_segment_with_a_prefix_seal_is_scanned_and_resealed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The writer died between filling a segment and sealing it whole: its seal covers a prefix."""
    import zlib
    from log.seal import seal_from_index, write_seal
    recs = await make_log(tmp_path, 40)
    base, target = list_segments(tmp_path)[1]
    data = target.read_bytes()
    first = frame_positions(target)[1]
    ts = recs[base].ts
    write_seal(target, seal_from_index(base, base + 1, ts, first, 0, zlib.crc32(data[:first]), [(base, ts, 0)]))
    reads = Reads(monkeypatch)
    with caplog.at_level(logging.INFO, logger="tape.log"):
        log = FileLog(tmp_path, segment_bytes=SEG)
        await log.open()
    assert reads.paths == [target.name]
    assert [r.levelno for r in caplog.records if target.name in r.getMessage()] == [logging.INFO]
    assert await read_all(log) == recs
    await log.close()
    seal, _ = read_seal(target)
    assert seal is not None and seal.size == len(data) and verify_seal(seal, data, base, seal.end) is None


async def test_index_of_a_segment_whose_seal_vanished_is_rebuilt_from_headers(tmp_path: Path) -> None:
    recs = await make_log(tmp_path, 40)
    expected = await index_of(tmp_path)
    log = FileLog(tmp_path, segment_bytes=SEG, read_only=True)
    await log.open()
    for p in segs(tmp_path):
        seal_path(p).unlink(missing_ok=True)
    assert await read_all(log, 13) == recs[13:]
    for r in recs:
        assert await log.offset_for_timestamp(r.ts) == r.offset
    assert snapshot(log._st) == expected
    await log.close()


@pytest.mark.parametrize("into", [0, 1])
async def test_truncate_before_any_index_was_loaded(tmp_path: Path, into: int) -> None:
    recs = await make_log(tmp_path, 40)
    base, _ = list_segments(tmp_path)[3]
    n = base + into
    log = FileLog(tmp_path, segment_bytes=SEG)
    await log.open()
    await log.truncate(n)
    assert await read_all(log) == recs[:n]
    assert await log.offset_for_timestamp(recs[5].ts) == 5
    await log.append([rec(99)])
    await log.close()
    log = FileLog(tmp_path, segment_bytes=SEG)
    await log.open()
    got = await read_all(log)
    assert got[:-1] == recs[:n] and got[-1].offset == n
    assert await log.offset_for_timestamp(0) == 0 and await log.offset_for_timestamp(got[-1].ts + 1) == n + 1
    await log.close()


async def test_writer_open_seals_a_long_unsealed_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An old directory's active segment gets a prefix seal on the first writer open."""
    log = FileLog(tmp_path)  # one 64 MB segment, resealed every 8 MB: no seal yet
    await log.open()
    recs = [rec(i) for i in range(30)]
    for r in recs:
        await log.append([r])
    await log.close()
    (tail,) = segs(tmp_path)
    seal_path(tail).unlink(missing_ok=True)
    log = FileLog(tmp_path, seal_bytes=1_000)
    await log.open()
    await log.close()
    seal, _ = read_seal(tail)
    assert seal is not None and seal.size == tail.stat().st_size and seal.records == 30
    scanned: list[int] = []
    real = seal_mod.scan_segments

    def spy(directory: Path, tail_view: object, *args: object) -> object:
        scanned.append(getattr(tail_view, "size", -1))
        return real(directory, tail_view, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(seal_mod, "scan_segments", spy)
    log = FileLog(tmp_path, seal_bytes=1_000)
    await log.open()
    assert scanned == [tail.stat().st_size] and await read_all(log) == recs
    await log.close()


@pytest.mark.parametrize("upto", [7, 20, 39])
async def test_follower_stops_at_the_committed_marker_inside_sealed_data(tmp_path: Path, upto: int) -> None:
    """A follower never reads past COMMITTED, even where a seal vouches for more."""
    from log.directory import Marker, open_marker, read_marker, write_marker
    recs = await make_log(tmp_path, 40)
    mark = read_marker(tmp_path)
    assert mark is not None
    fd = open_marker(tmp_path)
    try:
        write_marker(fd, Marker(upto, recs[upto - 1].ts, mark.epoch))
    finally:
        os.close(fd)
    log = FileLog(tmp_path, segment_bytes=SEG, read_only=True)
    await log.open()
    assert log.next_offset() == upto and log.last_ts() == recs[upto - 1].ts
    assert await read_all(log) == recs[:upto]
    await log.close()
