"""FileLog behaviour: appends, group commit, reads, tails, timestamps, truncate."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import AsyncIterator, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from log import FileLog, open_log
from log.codec import decode_frames
from log.errors import LogClosedError, LogError
from log.record import Record, Write
from log.segment import list_segments

ROOT = Path(__file__).resolve().parents[2]


def rec(i: int, size: int = 100) -> Record:
    return Record([Write("messages", f"m{i}", (b"%d:" % i).ljust(size, b"x"))], session_id="s", request_id=i)


async def read_all(log: FileLog, start: int = 0, end: int | None = None, batch: int = 4096) -> list[Record]:
    return [r async for b in log.read(start, end, batch) for r in b]


def step_clock(start: int = 1_000, step: int = 10) -> Callable[[], int]:
    """A fake clock that advances by `step` on every reading."""
    now = [start]

    def clock() -> int:
        now[0] += step
        return now[0]

    return clock


@pytest.fixture
async def flog(tmp_path: Path) -> AsyncIterator[FileLog]:
    log = FileLog(tmp_path / "log")
    await log.open()
    yield log
    await log.close()


async def test_append_assigns_dense_offsets_and_round_trips(flog: FileLog) -> None:
    assert flog.next_offset() == 0 and flog.last_ts() == 0
    first = [rec(0), rec(1)]
    await flog.append(first)
    second = [rec(2)]
    await flog.append(second)
    assert [r.offset for r in first + second] == [0, 1, 2]
    assert flog.next_offset() == 3
    assert flog.last_ts() == second[0].ts
    got = await read_all(flog)
    assert got == first + second
    assert got[1].writes[0].doc == rec(1).writes[0].doc


async def test_empty_append_is_a_no_op(flog: FileLog) -> None:
    await flog.append([])
    assert flog.next_offset() == 0


async def test_ts_strictly_increasing_with_a_frozen_clock(tmp_path: Path) -> None:
    log = FileLog(tmp_path, clock=lambda: 5_000)
    await log.open()
    recs = [rec(i) for i in range(5)]
    await log.append(recs[:3])
    await log.append(recs[3:])
    assert [r.ts for r in recs] == [5_000, 5_001, 5_002, 5_003, 5_004]
    await log.close()


async def test_ts_strictly_increasing_across_reopen_even_if_clock_goes_back(tmp_path: Path) -> None:
    log = FileLog(tmp_path, clock=lambda: 10**18)
    await log.open()
    await log.append([rec(0), rec(1)])
    last = log.last_ts()
    await log.close()

    again = FileLog(tmp_path, clock=lambda: 5)  # a clock far in the past
    await again.open()
    assert again.last_ts() == last == 10**18 + 1
    r = rec(2)
    await again.append([r])
    assert r.offset == 2 and r.ts == last + 1
    await again.close()


async def test_a_caller_chosen_ts_is_kept_only_if_it_keeps_ts_increasing(tmp_path: Path) -> None:
    log = FileLog(tmp_path, clock=lambda: 1_000)
    await log.open()
    chosen = rec(0)
    chosen.ts = 50_000
    await log.append([chosen])
    assert chosen.ts == 50_000
    stale, fresh, unset = rec(1), rec(2), rec(3)
    stale.ts = 40_000  # not above the last ts: replaced
    fresh.ts = 60_000
    await log.append([stale, fresh, unset])
    assert [r.ts for r in (stale, fresh, unset)] == [50_001, 60_000, 60_001]
    assert [r.ts for r in await read_all(log)] == [50_000, 50_001, 60_000, 60_001]
    await log.close()


async def test_real_clock_ts_is_wall_clock_ns(flog: FileLog) -> None:
    import time

    before = time.time_ns()
    r = rec(0)
    await flog.append([r])
    assert before <= r.ts <= time.time_ns()


async def test_group_commit_batches_concurrent_appends(tmp_path: Path) -> None:
    log = FileLog(tmp_path)
    await log.open()
    syncs = 0
    real = log._fsync

    def counting(fd: int) -> None:
        nonlocal syncs
        syncs += 1
        real(fd)

    log._fsync = counting  # type: ignore[method-assign]
    appended: list[Record] = []

    async def appender(k: int) -> None:
        for j in range(10):
            r = rec(k * 100 + j)
            await log.append([r])
            appended.append(r)

    await asyncio.gather(*(appender(k) for k in range(64)))
    assert sorted(r.offset for r in appended) == list(range(640))
    assert syncs <= 640 // 4, f"{syncs} fsyncs for 640 appends: no group commit"
    assert len(await read_all(log)) == 640
    await log.close()


async def test_multi_record_appends_stay_contiguous(flog: FileLog) -> None:
    batches = [[rec(k * 10 + j) for j in range(3)] for k in range(20)]
    await asyncio.gather(*(flog.append(b) for b in batches))
    for b in batches:
        assert [r.offset for r in b] == list(range(b[0].offset, b[0].offset + 3))
    assert flog.next_offset() == 60


async def test_a_bad_record_fails_only_its_own_append(flog: FileLog) -> None:
    good1, good2 = rec(1), rec(2)
    bad = Record([Write("t", "x", "not bytes")])  # type: ignore[arg-type]
    results = await asyncio.gather(flog.append([good1]), flog.append([bad]), flog.append([good2]),
                                   return_exceptions=True)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], ValueError)
    assert sorted([good1.offset, good2.offset]) == [0, 1]
    assert bad.offset == -1
    assert flog.next_offset() == 2


async def test_reads_across_segment_rolls(tmp_path: Path) -> None:
    log = FileLog(tmp_path, segment_bytes=2_000, index_bytes=512)
    await log.open()
    recs = [rec(i, size=50 + (i * 37) % 200) for i in range(300)]
    for i in range(0, 300, 7):
        await log.append(recs[i:i + 7])
    segs = list_segments(tmp_path)
    assert len(segs) > 20
    for base, path in segs:
        data = path.read_bytes()
        assert len(data) <= 2_000
        first, _, _ = decode_frames(data, 0, len(data), 0, 1 << 62, 1)
        assert first[0].offset == base, f"{path.name} starts at offset {first[0].offset}"
    assert await read_all(log) == recs
    for start, end in [(0, 1), (5, 6), (13, 200), (150, None), (299, None), (299, 300), (300, None), (40, 10)]:
        want = recs[start:end if end is not None else 300]
        assert await read_all(log, start, end) == want, (start, end)
    batches = [b async for b in log.read(3, 100, batch=9)]
    assert all(1 <= len(b) <= 9 for b in batches)
    assert [r for b in batches for r in b] == recs[3:100]
    await log.close()

    reopened = FileLog(tmp_path, segment_bytes=2_000, index_bytes=512)
    await reopened.open()
    assert await read_all(reopened, 123, 256) == recs[123:256]
    r = rec(300)
    await reopened.append([r])
    assert r.offset == 300
    await reopened.close()


def flat(recs: list[Record]) -> list[tuple]:
    return [(r.offset, w.table, w.id.encode(), w.doc, w.prev) for r in recs for w in r.writes]


async def read_writes_all(log: FileLog, start: int = 0, end: int | None = None, batch: int = 4096) -> list[tuple]:
    out: list[tuple] = []
    async for writes, count, last_off, last_ts in log.read_writes(start, end, batch):
        assert 1 <= count <= batch
        assert not writes or writes[-1][0] <= last_off
        out.extend(writes)
    return out


async def test_read_writes_matches_read(tmp_path: Path) -> None:
    log = FileLog(tmp_path, segment_bytes=2_000, index_bytes=512)
    await log.open()
    recs = [Record([Write("t", f"d{i}", b"x" * (i % 90), b"p" if i % 3 else None)] * (i % 3), session_id="s")
            for i in range(300)]
    for i in range(0, 300, 7):
        await log.append(recs[i:i + 7])
    assert len(list_segments(tmp_path)) > 10
    for start, end, batch in [(0, None, 4096), (0, None, 1), (5, 6, 3), (13, 200, 9), (299, None, 2), (300, None, 5),
                              (40, 10, 4)]:
        assert await read_writes_all(log, start, end, batch) == flat(recs[start:end if end is not None else 300])
    batches = [(n, last_off, last_ts) async for _, n, last_off, last_ts in log.read_writes(3, 100, batch=9)]
    offsets = [last_off for _, last_off, _ in batches]
    assert offsets == sorted(offsets) and offsets[-1] == 99 and sum(n for n, _, _ in batches) == 97
    assert all(last_ts == recs[last_off].ts for _, last_off, last_ts in batches)
    with pytest.raises(ValueError):
        await read_writes_all(log, -1)
    await log.close()
    follower = FileLog(tmp_path, segment_bytes=2_000, index_bytes=512, read_only=True)
    await follower.open()
    assert await read_writes_all(follower, 123, 256) == flat(recs[123:256])
    await follower.close()


async def test_read_writes_of_a_record_larger_than_the_read_chunk(tmp_path: Path) -> None:
    log = FileLog(tmp_path)
    await log.open()
    big = Record([Write("blobs", "b", os.urandom(3 << 20))])
    recs = [rec(0), big, rec(2)]
    await log.append(recs)
    assert await read_writes_all(log, 1, 2) == flat([big])
    assert await read_writes_all(log, batch=1) == flat(recs)
    await log.close()


async def test_read_of_a_record_larger_than_the_read_chunk(tmp_path: Path) -> None:
    log = FileLog(tmp_path)
    await log.open()
    big = Record([Write("blobs", "b", os.urandom(3 << 20))])
    recs = [rec(0), big, rec(2)]
    await log.append(recs)
    assert await read_all(log, 1, 2) == [big]
    assert await read_all(log) == recs
    assert await read_all(log, batch=1) == recs
    await log.close()


async def test_offset_for_timestamp(tmp_path: Path) -> None:
    log = FileLog(tmp_path, segment_bytes=3_000, index_bytes=600, clock=step_clock(1_000, 10))
    await log.open()
    assert await log.offset_for_timestamp(123) == 0
    recs = [rec(i) for i in range(200)]
    for r in recs:
        await log.append([r])
    assert [r.ts for r in recs[:3]] == [1_010, 1_020, 1_030]
    for r in recs:
        assert await log.offset_for_timestamp(r.ts) == r.offset
        assert await log.offset_for_timestamp(r.ts - 5) == r.offset
    assert await log.offset_for_timestamp(0) == 0
    assert await log.offset_for_timestamp(recs[-1].ts + 1) == 200
    await log.close()


async def test_tail_in_the_same_process(flog: FileLog) -> None:
    await flog.append([rec(0)])
    got: list[int] = []

    async def consume() -> None:
        async for batch in flog.tail(0):
            got.extend(r.offset for r in batch)
            if got[-1] >= 5:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.02)
    assert got == [0]
    await flog.append([rec(1), rec(2)])
    await asyncio.sleep(0.01)
    assert got == [0, 1, 2]
    for i in range(3, 6):
        await flog.append([rec(i)])
    await asyncio.wait_for(task, 5)
    assert got == list(range(6))


async def test_tail_from_a_second_instance_follows_the_writer(tmp_path: Path) -> None:
    writer = FileLog(tmp_path, segment_bytes=1_500)
    await writer.open()
    await writer.append([rec(0)])
    follower = FileLog(tmp_path, poll_interval=0.005)
    await follower.open()
    assert writer.is_writer and not follower.is_writer
    assert follower.next_offset() == 1
    got: list[Record] = []

    async def consume() -> None:
        async for batch in follower.tail(0):
            got.extend(batch)
            if got[-1].offset >= 40:
                return

    task = asyncio.create_task(consume())
    recs = [rec(i) for i in range(1, 41)]
    for i in range(0, 40, 4):
        await writer.append(recs[i:i + 4])
        await asyncio.sleep(0.003)
    await asyncio.wait_for(task, 5)
    assert [r.offset for r in got] == list(range(41))
    assert got[1:] == recs
    assert len(list_segments(tmp_path)) > 1  # the follower crossed segment rolls
    with pytest.raises(LogError, match="read-only"):
        await follower.append([rec(99)])
    await follower.close()
    await writer.close()


async def test_tail_follows_a_writer_in_another_process(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(ROOT)!r})
        from log import FileLog, Record, Write

        async def main():
            log = FileLog({str(tmp_path)!r}, segment_bytes=4000)
            await log.open()
            for i in range(60):
                await log.append([Record([Write("t", f"id{{i}}", b"d" * 90)])])
                if i % 10 == 0:
                    await asyncio.sleep(0.01)
            await log.close()

        asyncio.run(main())
    """)
    follower = FileLog(tmp_path, read_only=True, poll_interval=0.005)
    await follower.open()
    assert follower.next_offset() == 0
    proc = subprocess.Popen([sys.executable, "-c", script])
    got: list[Record] = []

    async def consume() -> None:
        async for batch in follower.tail(0):
            got.extend(batch)
            if len(got) >= 60:
                return

    try:
        await asyncio.wait_for(consume(), 30)
    finally:
        assert await asyncio.to_thread(proc.wait, 30) == 0
    assert [r.offset for r in got] == list(range(60))
    assert [r.writes[0].id for r in got] == [f"id{i}" for i in range(60)]
    await follower.close()


async def test_readers_never_see_records_before_they_are_durable(tmp_path: Path) -> None:
    log = FileLog(tmp_path)
    await log.open()
    await log.append([rec(0)])
    follower = FileLog(tmp_path, read_only=True)
    await follower.open()
    entered, release = threading.Event(), threading.Event()
    real = log._fsync

    def slow_fsync(fd: int) -> None:
        entered.set()
        release.wait(10)
        real(fd)

    log._fsync = slow_fsync  # type: ignore[method-assign]
    task = asyncio.create_task(log.append([rec(1)]))
    assert await asyncio.to_thread(entered.wait, 10)
    # written but not yet durable: invisible to the writer's readers and followers
    assert log.next_offset() == 1
    assert [r.offset for r in await read_all(log)] == [0]
    assert [r.offset for r in await read_all(follower)] == [0]
    release.set()
    await task
    assert [r.offset for r in await read_all(log)] == [0, 1]
    assert [r.offset for r in await read_all(follower)] == [0, 1]
    await follower.close()
    await log.close()


async def test_truncate_drops_the_tail_durably(tmp_path: Path) -> None:
    log = FileLog(tmp_path, segment_bytes=1_500, clock=step_clock())
    await log.open()
    recs = [rec(i) for i in range(100)]
    for i in range(0, 100, 5):
        await log.append(recs[i:i + 5])
    segs_before = len(list_segments(tmp_path))
    await log.truncate(37)
    assert log.next_offset() == 37
    assert log.last_ts() == recs[36].ts
    assert await read_all(log) == recs[:37]
    assert len(list_segments(tmp_path)) < segs_before
    assert all(base <= 37 for base, _ in list_segments(tmp_path))
    r = rec(1000)
    await log.append([r])
    assert r.offset == 37 and r.ts > recs[36].ts
    await log.truncate(500)  # beyond the end: nothing happens
    assert log.next_offset() == 38
    await log.close()

    again = FileLog(tmp_path, segment_bytes=1_500)
    await again.open()
    assert again.next_offset() == 38
    assert await read_all(again) == recs[:37] + [r]
    await again.close()


async def test_truncate_at_a_segment_boundary_and_to_zero(tmp_path: Path) -> None:
    log = FileLog(tmp_path, segment_bytes=1_000)
    await log.open()
    recs = [rec(i) for i in range(40)]
    await log.append(recs)
    bases = [b for b, _ in list_segments(tmp_path)]
    boundary = bases[2]
    await log.truncate(boundary)
    assert await read_all(log) == recs[:boundary]
    assert [b for b, _ in list_segments(tmp_path)] == bases[:3]
    await log.truncate(0)
    assert log.next_offset() == 0 and log.last_ts() == 0
    assert await read_all(log) == []
    r = rec(7)
    await log.append([r])
    assert r.offset == 0
    await log.close()
    again = FileLog(tmp_path)
    await again.open()
    assert await read_all(again) == [r]
    await again.close()


async def test_truncate_is_ordered_with_queued_appends(flog: FileLog) -> None:
    first, before, after = rec(0), rec(1), rec(2)
    await flog.append([first])
    t1 = asyncio.create_task(flog.append([before]))
    t2 = asyncio.create_task(flog.truncate(1))
    t3 = asyncio.create_task(flog.append([after]))
    await asyncio.gather(t1, t2, t3)
    assert before.offset == 1  # committed, then cut off by the truncate queued after it
    assert after.offset == 1
    assert await read_all(flog) == [first, after]


async def test_follower_sees_truncation(tmp_path: Path) -> None:
    log = FileLog(tmp_path)
    await log.open()
    await log.append([rec(i) for i in range(10)])
    follower = FileLog(tmp_path)
    await follower.open()
    assert follower.next_offset() == 10
    await log.truncate(4)
    assert [r.offset for r in await read_all(follower)] == [0, 1, 2, 3]
    # truncate, then grow past the old end before the follower looks again
    await log.truncate(2)
    fresh = [rec(100 + i) for i in range(12)]
    await log.append(fresh)
    got = await read_all(follower)
    assert [r.offset for r in got] == list(range(14))
    assert got[2:] == fresh
    await follower.close()
    await log.close()


async def test_closed_log_refuses_use(tmp_path: Path) -> None:
    log = FileLog(tmp_path)
    with pytest.raises(LogClosedError):
        await log.append([rec(0)])
    await log.open()
    await log.append([rec(0)])
    waiting: list[Exception] = []

    async def tailer() -> None:
        try:
            async for _ in log.tail(1):
                pass
        except LogClosedError as exc:
            waiting.append(exc)

    task = asyncio.create_task(tailer())
    await asyncio.sleep(0.01)
    await log.close()
    await asyncio.wait_for(task, 2)
    assert len(waiting) == 1
    with pytest.raises(LogClosedError):
        await log.append([rec(1)])
    with pytest.raises(LogClosedError):
        await read_all(log)
    await log.close()  # idempotent


async def test_close_finishes_pending_appends(tmp_path: Path) -> None:
    log = FileLog(tmp_path)
    await log.open()
    tasks = [asyncio.create_task(log.append([rec(i)])) for i in range(50)]
    await asyncio.sleep(0)
    await log.close()
    await asyncio.gather(*tasks)
    again = FileLog(tmp_path)
    await again.open()
    assert again.next_offset() == 50
    await again.close()


async def test_writer_lock(tmp_path: Path) -> None:
    writer = FileLog(tmp_path)
    await writer.open()
    with pytest.raises(LogError, match="writer lock"):
        await FileLog(tmp_path, read_only=False).open()
    await writer.close()
    second = FileLog(tmp_path, read_only=False)  # free again after close
    await second.open()
    assert second.is_writer
    await second.close()


def test_open_log_factory(tmp_path: Path) -> None:
    a = open_log(str(tmp_path / "a"))
    b = open_log(f"file://{tmp_path / 'b'}")
    assert isinstance(a, FileLog) and a.directory == tmp_path / "a"
    assert isinstance(b, FileLog) and b.directory == tmp_path / "b"
    with pytest.raises(LogError, match="unsupported"):
        open_log("s3://bucket/log")


def test_open_log_kafka_url_gives_an_unopened_kafka_log() -> None:
    from log.kafka_log import KafkaLog

    log = open_log("kafka://127.0.0.1:9/tape")  # nothing listens there: opening is deferred to open()
    assert isinstance(log, KafkaLog)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=25),
    segment_bytes=st.integers(300, 3_000),
    index_bytes=st.integers(1, 2_000),
    ranges=st.lists(st.tuples(st.integers(0, 160), st.integers(0, 160)), max_size=6),
)
def test_property_reads_match_appends(
    sizes: list[int], segment_bytes: int, index_bytes: int, ranges: list[tuple[int, int]]
) -> None:
    async def scenario(path: str) -> None:
        log = FileLog(path, segment_bytes=segment_bytes, index_bytes=index_bytes)
        await log.open()
        model: list[Record] = []
        n = 0
        for size in sizes:
            batch = [rec(n + j, size=20 + (n + j) * 13 % 150) for j in range(size)]
            n += size
            await log.append(batch)
            model.extend(batch)
        assert await read_all(log) == model
        for a, b in ranges:
            assert await read_all(log, a, b, batch=3) == model[a:b]
            assert await read_writes_all(log, a, b, batch=3) == flat(model[a:b])
        for r in model[:: max(1, len(model) // 10)]:
            assert await log.offset_for_timestamp(r.ts) == r.offset
        await log.close()
        again = FileLog(path, segment_bytes=segment_bytes, index_bytes=index_bytes)
        await again.open()
        assert again.next_offset() == len(model) and again.last_ts() == model[-1].ts
        assert await read_all(again) == model
        await again.close()

    with tempfile.TemporaryDirectory() as d:
        asyncio.run(scenario(d))


async def test_read_changes_encoded_where_decoded(tmp_path: Path) -> None:
    """`encode` maps each batch of changes where it is decoded."""
    log = FileLog(tmp_path, segment_bytes=2_000, index_bytes=512)
    await log.open()
    recs = [Record([Write("t", f"d{i}", b"x" * (i % 90), b"p" if i % 3 else None)] * (i % 3), session_id="s")
            for i in range(300)]
    for i in range(0, 300, 7):
        await log.append(recs[i:i + 7])
    for start, end, batch in [(0, None, 4096), (0, None, 1), (5, 6, 3), (13, 200, 9), (299, None, 2)]:
        assert await read_writes_all(log, start, end, batch) == flat(recs[start:end if end is not None else 300])
        writes = [(n, last_off) async for _, n, last_off, _ts in log.read_writes(start, end, batch)]
        got = [item async for item in log.read_changes(start, end, batch, encode=lambda ws, rs: [w[2] for w in ws])]
        assert [i for ids, *_ in got for i in ids] == [w[2] for w in flat(recs[start:end])]
        assert [(n, last_off) for _, n, last_off in got] == writes
    await log.close()


async def test_damage_found_by_read_writes_names_the_segment_and_byte(tmp_path: Path) -> None:
    """… and by `read_changes`."""
    from log.codec import HEADER_SIZE
    from log.errors import LogCorruptError
    log = FileLog(tmp_path)
    await log.open()
    recs = [rec(i) for i in range(10)]
    await log.append(recs)
    seg = list_segments(tmp_path)[-1][1]
    data = bytearray(seg.read_bytes())
    pos = 0
    for _ in range(7):
        pos += HEADER_SIZE + int.from_bytes(data[pos + 4:pos + 8], "little")
    data[pos + HEADER_SIZE + 20] ^= 0x10  # bit rot in frame 7, after open
    seg.write_bytes(bytes(data))
    with pytest.raises(LogCorruptError, match=rf"{seg.name}: damaged frame at byte {pos} \(record offset 7\): frame CRC mismatch"):
        await read_writes_all(log)
    with pytest.raises(LogCorruptError, match=rf"{seg.name}: damaged frame at byte {pos} \(record offset 7\): frame CRC mismatch"):
        [item async for item in log.read_changes(0, None)]
    assert await read_writes_all(log, 0, 7) == flat(recs[:7])
    await log.close()
