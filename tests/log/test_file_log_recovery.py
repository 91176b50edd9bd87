"""FileLog crash recovery, corruption detection, format versions and write failures."""
from __future__ import annotations

import errno
import json
import logging
import os
import struct
import zlib
from pathlib import Path

import pytest

from log import FileLog
from log.codec import HEADER_SIZE, MAGIC, encode
from log.errors import LogCorruptError, LogFormatError, LogWriteError
from log.record import Record, Write
from log.seal import seal_path
from log.segment import list_segments


def rec(i: int, size: int = 100) -> Record:
    return Record([Write("messages", f"m{i}", (b"%d:" % i).ljust(size, b"x"))], function="f")


async def read_all(log: FileLog, start: int = 0) -> list[Record]:
    return [r async for b in log.read(start) for r in b]


async def make_log(path: Path, n: int, per_append: int = 1, segment_bytes: int = 64 << 20) -> list[Record]:
    """Write n records to a fresh log in `path` and close it."""
    log = FileLog(path, segment_bytes=segment_bytes)
    await log.open()
    recs = [rec(i) for i in range(n)]
    for i in range(0, n, per_append):
        await log.append(recs[i:i + per_append])
    await log.close()
    return recs


def frame_positions(path: Path) -> list[int]:
    """Start positions of the frames of a segment file."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        out.append(pos)
        pos += HEADER_SIZE + struct.unpack_from("<I", data, pos + 4)[0]
    return out


def last_segment(path: Path) -> Path:
    return list_segments(path)[-1][1]


def flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x10
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- torn tails

TORN_TAILS = {
    "short header": lambda frame: frame[:HEADER_SIZE - 5],
    "short body": lambda frame: frame[:HEADER_SIZE + 40],
    "crc mismatch": lambda frame: frame[:-3] + bytes(b ^ 0xFF for b in frame[-3:]),
    "zero fill": lambda frame: b"\0" * 4096,
    "garbage": lambda frame: b"\x13\x37garbage" * 50,
}


@pytest.mark.parametrize("kind", sorted(TORN_TAILS))
async def test_torn_tail_is_truncated_on_open(tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    recs = await make_log(tmp_path, 10)
    seg = last_segment(tmp_path)
    clean_size = seg.stat().st_size
    frame = encode(Record([Write("t", "torn", b"y" * 200)], offset=10, ts=recs[-1].ts + 1))
    with open(seg, "ab") as f:
        f.write(TORN_TAILS[kind](frame))

    log = FileLog(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tape.log"):
        await log.open()
    assert any("torn tail" in m and "offset 10" in m for m in caplog.messages)
    assert seg.stat().st_size == clean_size
    assert log.next_offset() == 10
    assert await read_all(log) == recs
    r = rec(10)
    await log.append([r])
    assert r.offset == 10
    await log.close()

    again = FileLog(tmp_path)
    await again.open()
    assert await read_all(again) == recs + [r]
    await again.close()


async def test_follower_does_not_repair_a_torn_tail(tmp_path: Path) -> None:
    recs = await make_log(tmp_path, 5)
    seg = last_segment(tmp_path)
    (tmp_path / "COMMITTED").unlink()  # no writer has published a durable end
    with open(seg, "ab") as f:
        f.write(b"TL\x01partial")
    size = seg.stat().st_size
    follower = FileLog(tmp_path, read_only=True)
    await follower.open()
    assert await read_all(follower) == recs
    assert seg.stat().st_size == size
    await follower.close()


async def test_torn_frame_at_the_start_of_a_new_segment(tmp_path: Path) -> None:
    recs = await make_log(tmp_path, 30, segment_bytes=1_000)
    bases = list_segments(tmp_path)
    new_base = recs[-1].offset + 1
    partial = encode(Record([Write("t", "x", b"z" * 50)], offset=new_base, ts=recs[-1].ts + 1))[:20]
    (tmp_path / f"{new_base:020d}.seg").write_bytes(partial)
    log = FileLog(tmp_path, segment_bytes=1_000)
    await log.open()
    assert log.next_offset() == 30
    assert len(list_segments(tmp_path)) == len(bases) + 1
    assert (tmp_path / f"{new_base:020d}.seg").stat().st_size == 0
    r = rec(30)
    await log.append([r])
    assert r.offset == 30
    assert await read_all(log) == recs + [r]
    await log.close()


# ---------------------------------------------------------------- corruption


async def test_bit_flip_in_the_middle_is_corruption(tmp_path: Path) -> None:
    await make_log(tmp_path, 10)
    seg = last_segment(tmp_path)
    pos = frame_positions(seg)[4]
    flip(seg, pos + HEADER_SIZE + 30)
    with pytest.raises(LogCorruptError) as info:
        await FileLog(tmp_path).open()
    msg = str(info.value)
    assert seg.name in msg and "offset 4" in msg and f"byte {pos}" in msg
    assert "intact data" in msg


async def test_bit_flip_in_a_length_field_is_corruption(tmp_path: Path) -> None:
    await make_log(tmp_path, 10)
    seg = last_segment(tmp_path)
    pos = frame_positions(seg)[6]
    data = bytearray(seg.read_bytes())
    data[pos + 6] ^= 0x40  # body length now points far past the end of the file
    seg.write_bytes(bytes(data))
    with pytest.raises(LogCorruptError, match=rf"{seg.name}.*offset 6"):
        await FileLog(tmp_path).open()


async def test_bad_frame_in_a_sealed_segment(tmp_path: Path) -> None:
    await make_log(tmp_path, 40, segment_bytes=1_000)
    segs = list_segments(tmp_path)
    base, sealed = segs[1]
    positions = frame_positions(sealed)
    flip(sealed, positions[-1] + HEADER_SIZE + 10)  # the last frame of a sealed segment
    bad_offset = base + len(positions) - 1
    # Open trusts the seal (the size matches) and does not read the segment; reading finds the damage.
    log = FileLog(tmp_path, segment_bytes=1_000)
    await log.open()
    with pytest.raises(LogCorruptError) as read_info:
        await read_all(log)
    await log.close()
    msg = str(read_info.value)
    assert sealed.name in msg and f"record offset {bad_offset}" in msg
    # Without its seal (an old-format directory), open scans the segment and refuses it.
    seal_path(sealed).unlink()
    with pytest.raises(LogCorruptError) as info:
        await FileLog(tmp_path, segment_bytes=1_000).open()
    msg = str(info.value)
    assert sealed.name in msg and f"offset {bad_offset}" in msg and "sealed" in msg


async def test_cut_sealed_segment_is_corruption(tmp_path: Path) -> None:
    await make_log(tmp_path, 40, segment_bytes=1_000)
    _, sealed = list_segments(tmp_path)[0]
    os.truncate(sealed, sealed.stat().st_size - 7)
    with pytest.raises(LogCorruptError, match=sealed.name):
        await FileLog(tmp_path).open()


async def test_missing_segment_is_a_gap(tmp_path: Path) -> None:
    await make_log(tmp_path, 40, segment_bytes=1_000)
    segs = list_segments(tmp_path)
    assert len(segs) >= 4
    base, path = segs[2]
    path.unlink()
    with pytest.raises(LogCorruptError) as info:
        await FileLog(tmp_path).open()
    msg = str(info.value)
    assert "missing segment" in msg and segs[1][1].name in msg and segs[3][1].name in msg
    assert f"offsets {base}.." in msg


async def test_missing_first_segment(tmp_path: Path) -> None:
    await make_log(tmp_path, 40, segment_bytes=1_000)
    list_segments(tmp_path)[0][1].unlink()
    with pytest.raises(LogCorruptError, match="missing segment.*00000000000000000000.seg"):
        await FileLog(tmp_path).open()


async def test_duplicate_offset_is_corruption_even_at_the_tail(tmp_path: Path) -> None:
    recs = await make_log(tmp_path, 5)
    seg = last_segment(tmp_path)
    dup = encode(Record([Write("t", "dup", None)], offset=3, ts=recs[-1].ts + 1))
    with open(seg, "ab") as f:
        f.write(dup)
    with pytest.raises(LogCorruptError, match=rf"{seg.name}.*offset 3, expected 5"):
        await FileLog(tmp_path).open()


async def test_corruption_found_while_reading_names_the_segment(tmp_path: Path) -> None:
    log = FileLog(tmp_path)
    await log.open()
    await log.append([rec(i) for i in range(10)])
    seg = last_segment(tmp_path)
    flip(seg, frame_positions(seg)[7] + HEADER_SIZE + 20)  # bit rot after open
    with pytest.raises(LogCorruptError, match=seg.name):
        await read_all(log)
    await log.close()


# ---------------------------------------------------------------- formats


async def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    await make_log(tmp_path, 3)
    fmt = tmp_path / "FORMAT"
    fmt.write_text(json.dumps({"format": "tape.filelog", "version": 2}))
    with pytest.raises(LogFormatError) as info:
        await FileLog(tmp_path).open()
    assert str(fmt) in str(info.value) and "version 2" in str(info.value)


async def test_unreadable_or_missing_format_file(tmp_path: Path) -> None:
    await make_log(tmp_path, 3)
    fmt = tmp_path / "FORMAT"
    fmt.write_text("{not json")
    with pytest.raises(LogFormatError, match="FORMAT"):
        await FileLog(tmp_path).open()
    fmt.unlink()
    with pytest.raises(LogFormatError, match="FORMAT is missing"):
        await FileLog(tmp_path).open()


async def test_new_directory_gets_a_format_file(tmp_path: Path) -> None:
    await make_log(tmp_path / "fresh", 0)
    meta = json.loads((tmp_path / "fresh" / "FORMAT").read_text())
    assert meta == {"format": "tape.filelog", "version": 1}


async def test_frame_of_an_unknown_schema_version_is_a_format_error(tmp_path: Path) -> None:
    recs = await make_log(tmp_path, 3)
    seg = last_segment(tmp_path)
    body = encode(Record([], offset=3, ts=recs[-1].ts + 1))[HEADER_SIZE:]
    prefix = struct.pack("<2sHIqq", MAGIC, 9, len(body), 3, recs[-1].ts + 1)
    with open(seg, "ab") as f:
        f.write(prefix + struct.pack("<I", zlib.crc32(body, zlib.crc32(prefix))) + body)
    with pytest.raises(LogFormatError, match=rf"{seg.name}.*version 9"):
        await FileLog(tmp_path).open()


# ---------------------------------------------------------------- write failures


def enospc_after_half(fd: int, data: bytes, pos: int) -> None:
    """A write that gets half of the data onto the disk, then runs out of space."""
    os.pwrite(fd, data[: len(data) // 2], pos)
    raise OSError(errno.ENOSPC, "No space left on device")


async def test_disk_full_rolls_back_and_the_log_stays_usable(tmp_path: Path) -> None:
    log = FileLog(tmp_path)
    await log.open()
    recs = [rec(i) for i in range(5)]
    await log.append(recs)
    seg = last_segment(tmp_path)
    size = seg.stat().st_size
    follower = FileLog(tmp_path)
    await follower.open()

    log._write = enospc_after_half  # type: ignore[method-assign]
    failed = [rec(100), rec(101)]
    with pytest.raises(LogWriteError) as info:
        await log.append(failed)
    assert "disk full" in str(info.value) and str(seg) in str(info.value)
    assert [(r.offset, r.ts) for r in failed] == [(-1, 0), (-1, 0)]  # nothing consumed
    assert seg.stat().st_size == size
    assert log.next_offset() == 5
    assert await read_all(log) == recs
    assert await read_all(follower) == recs

    del log._write  # space is back
    r = rec(5)
    await log.append([r])
    assert r.offset == 5 and r.ts > recs[-1].ts
    assert await read_all(log) == recs + [r]
    assert await read_all(follower) == recs + [r]
    await follower.close()
    await log.close()
    again = FileLog(tmp_path)
    await again.open()
    assert await read_all(again) == recs + [r]
    await again.close()


async def test_fsync_failure_fails_every_append_of_the_batch(tmp_path: Path) -> None:
    import asyncio

    log = FileLog(tmp_path)
    await log.open()
    await log.append([rec(0)])
    size = last_segment(tmp_path).stat().st_size

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    log._fsync = broken_fsync  # type: ignore[method-assign]
    results = await asyncio.gather(*(log.append([rec(i)]) for i in range(1, 9)), return_exceptions=True)
    assert all(isinstance(x, LogWriteError) and "I/O error" in str(x) for x in results)
    assert last_segment(tmp_path).stat().st_size == size
    assert log.next_offset() == 1
    del log._fsync
    r = rec(1)
    await log.append([r])
    assert r.offset == 1
    await log.close()


async def test_disk_full_while_rolling_to_a_new_segment(tmp_path: Path) -> None:
    log = FileLog(tmp_path, segment_bytes=1_000)
    await log.open()
    recs = [rec(i) for i in range(6)]  # ~800 bytes: the next batch must roll
    await log.append(recs)
    assert len(list_segments(tmp_path)) == 1
    seg = last_segment(tmp_path)
    size = seg.stat().st_size
    calls = 0
    real = log._write

    def fail_second(fd: int, data: bytes, pos: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            enospc_after_half(fd, data, pos)
        real(fd, data, pos)

    log._write = fail_second  # type: ignore[method-assign]
    with pytest.raises(LogWriteError, match="disk full"):
        await log.append([rec(i) for i in range(6, 20)])
    assert calls == 2
    assert list_segments(tmp_path) == [(0, seg)]  # the new segment is gone
    assert seg.stat().st_size == size
    del log._write
    more = [rec(i) for i in range(6, 20)]
    await log.append(more)
    assert [r.offset for r in more] == list(range(6, 20))
    assert len(list_segments(tmp_path)) > 1
    assert await read_all(log) == recs + more
    await log.close()


async def test_recovers_after_the_writer_process_is_killed(tmp_path: Path) -> None:
    """SIGKILL a writer mid-stream: every acknowledged record survives, the rest is clean."""
    import asyncio
    import signal
    import subprocess
    import sys
    import textwrap

    root = Path(__file__).resolve().parents[2]
    script = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(root)!r})
        from log import FileLog, Record, Write

        async def appender(log, k):
            i = 0
            while True:
                n = 1 + (i + k) % 4
                recs = [Record([Write("t", f"{{k}}-{{i}}-{{j}}", bytes([k]) * (50 + 37 * j))]) for j in range(n)]
                await log.append(recs)
                print(recs[-1].offset, flush=True)
                i += 1

        async def main():
            log = FileLog({str(tmp_path)!r}, segment_bytes=8000)
            await log.open()
            await asyncio.gather(*(appender(log, k) for k in range(8)))

        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked = -1
    lines = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while lines < 400 and loop.time() < deadline:
        line = await asyncio.to_thread(proc.stdout.readline)
        if not line:
            break
        acked = max(acked, int(line))
        lines += 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for line in proc.stdout:  # acknowledged before the kill
        acked = max(acked, int(line))
    assert acked > 50

    log = FileLog(tmp_path, segment_bytes=8000)
    await log.open()
    assert log.next_offset() > acked
    got = await read_all(log)
    assert [r.offset for r in got] == list(range(log.next_offset()))
    assert all(a.ts < b.ts for a, b in zip(got, got[1:]))
    for r in got:
        k, _, j = r.writes[0].id.split("-")
        assert r.writes[0].doc == bytes([int(k)]) * (50 + 37 * int(j))
    extra = rec(0)
    await log.append([extra])
    assert extra.offset == len(got)
    await log.close()
