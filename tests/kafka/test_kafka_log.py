"""KafkaLog against a real Kafka-protocol broker (Tansu): the Log interface and its failure modes."""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from log import open_log
from log.codec import encode
from log.errors import LogOutcomeUnknown, LogClosedError, LogCorruptError, LogError, LogWriteError
from log.kafka_log import KafkaLog, parse_kafka_url
from log.record import Record, Write
from tests.kafka_broker import TansuBroker, TcpProxy, create_topic


def rec(i: int, size: int = 60, ts: int = 0) -> Record:
    return Record([Write("messages", f"m{i}", (b"%d:" % i).ljust(size, b"x"))], ts=ts,
                  session_id="s", request_id=i, function="messages:send", result=b"null")


async def read_all(log: KafkaLog, start: int = 0, end: int | None = None, batch: int = 4096) -> list[Record]:
    return [r async for b in log.read(start, end, batch) for r in b]


@pytest.fixture
async def klog(kafka_url: str) -> AsyncIterator[KafkaLog]:
    log = KafkaLog(kafka_url, append_timeout=3.0)
    await log.open()
    yield log
    await log.close()


async def raw_values(bootstrap: str, topic: str) -> list[tuple[int, bytes]]:
    """Every (offset, value) of the topic, read directly with aiokafka."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10)
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    out: list[tuple[int, bytes]] = []
    try:
        while True:
            got = await consumer.getmany(tp, timeout_ms=300)
            if not got:
                return out
            out += [(m.offset, m.value) for m in got[tp]]
    finally:
        await consumer.stop()


async def produce_raw(bootstrap: str, topic: str, values: list[bytes]) -> int:
    """Produce `values` as one batch behind Tape's back; returns the base offset."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        batch = producer.create_batch()
        for v in values:
            assert batch.append(key=None, value=v, timestamp=None) is not None
        batch.close()
        md = await (await producer.send_batch(batch, topic, partition=0))
        return int(md.offset)
    finally:
        await producer.stop()


# ------------------------------------------------------------------ interface


def test_url_parsing() -> None:
    assert parse_kafka_url("kafka://a:9092,b:9092/tape.main?append_timeout=2") == (
        "a:9092,b:9092", "tape.main", {"append_timeout": "2"})
    for bad in ("kafka://host:1/", "kafka:///topic", "kafka://h:1/bad topic"):
        with pytest.raises(LogError):
            parse_kafka_url(bad)
    with pytest.raises(LogError, match="unknown option"):
        KafkaLog("kafka://h:1/t?colour=red")
    log = KafkaLog("kafka://h:1/t?append_timeout=2.5&fetch_wait_ms=3")
    assert log.append_timeout == 2.5 and log.fetch_wait_ms == 3


async def test_open_log_url_gives_a_kafka_log(kafka_url: str) -> None:
    log = open_log(kafka_url)
    assert isinstance(log, KafkaLog)
    async with log:
        assert log.next_offset() == 0 and log.last_ts() == 0


async def test_append_assigns_dense_offsets_increasing_ts_and_round_trips(klog: KafkaLog) -> None:
    first = [rec(0), rec(1), rec(2)]
    await klog.append(first)
    second = [rec(3)]
    await klog.append(second)
    records = first + second
    assert [r.offset for r in records] == [0, 1, 2, 3]
    assert all(b.ts > a.ts for a, b in zip(records, records[1:]))
    assert klog.next_offset() == 4 and klog.last_ts() == records[-1].ts
    back = await read_all(klog)
    assert back == records
    assert [r.offset for r in await read_all(klog, 1, 3)] == [1, 2]
    assert [r.offset for r in await read_all(klog, 2)] == [2, 3]
    assert await read_all(klog, 4) == []
    batches = [[r.offset for r in b] async for b in klog.read(0, None, batch=2)]
    assert [o for b in batches for o in b] == [0, 1, 2, 3] and max(map(len, batches)) <= 2


async def test_caller_ts_is_kept_only_when_it_keeps_ts_increasing(klog: KafkaLog) -> None:
    base = time.time_ns() + 10**12  # in the future, so the clock never wins
    records = [rec(0, ts=base), rec(1, ts=base + 5), rec(2, ts=base + 5), rec(3, ts=1)]
    await klog.append(records)
    assert records[0].ts == base and records[1].ts == base + 5
    assert records[2].ts == base + 6 and records[3].ts == base + 7
    later = [rec(4, ts=base)]
    await klog.append(later)
    assert later[0].ts == base + 8
    assert [r.ts for r in await read_all(klog)] == [base, base + 5, base + 6, base + 7, base + 8]


async def test_empty_append_and_bad_record(klog: KafkaLog) -> None:
    await klog.append([])
    with pytest.raises((ValueError, TypeError)):
        await klog.append([Record([Write("t", "x", "not bytes")])])  # type: ignore[arg-type]
    assert klog.next_offset() == 0
    await klog.append([rec(0)])
    assert klog.next_offset() == 1


async def test_reopen_learns_end_and_last_ts(kafka_url: str) -> None:
    async with KafkaLog(kafka_url) as log:
        for i in range(0, 30, 3):
            await log.append([rec(i), rec(i + 1), rec(i + 2)])
        last = log.last_ts()
    async with KafkaLog(kafka_url) as again:
        assert again.next_offset() == 30 and again.last_ts() == last
        more = [rec(30, ts=1)]
        await again.append(more)
        assert more[0].offset == 30 and more[0].ts > last
        assert [r.offset for r in await read_all(again)] == list(range(31))


async def test_many_records_in_one_append_span_batches(kafka_url: str) -> None:
    async with KafkaLog(kafka_url, max_batch_bytes=16_384) as log:
        records = [rec(i, size=500) for i in range(200)]  # ~110 kB: several Kafka batches
        await log.append(records)
        assert [r.offset for r in records] == list(range(200))
        back = await read_all(log, 0, None, batch=64)
        assert [r.offset for r in back] == list(range(200))
        assert [r.writes for r in back] == [r.writes for r in records]


async def test_tail_follows_appends_from_another_instance(klog: KafkaLog, kafka_url: str) -> None:
    await klog.append([rec(0), rec(1)])
    seen: list[int] = []
    async with KafkaLog(kafka_url) as reader:
        async def follow() -> None:
            async for batch in reader.tail(1):
                seen.extend(r.offset for r in batch)
                if seen[-1] >= 4:
                    return
        task = asyncio.create_task(follow())
        await asyncio.sleep(0.2)
        await klog.append([rec(2), rec(3)])
        await klog.append([rec(4)])
        await asyncio.wait_for(task, 10)
        assert seen == [1, 2, 3, 4]
        assert reader.next_offset() == 5 and reader.last_ts() == klog.last_ts()


async def test_tail_latency_is_low(klog: KafkaLog, kafka_url: str) -> None:
    lags: list[float] = []
    sent: dict[int, float] = {}
    async with KafkaLog(kafka_url) as reader:
        async def follow() -> None:
            async for batch in reader.tail(0):
                now = time.perf_counter()
                for r in batch:
                    lags.append(now - sent[r.offset])
                if batch[-1].offset >= 49:
                    return
        task = asyncio.create_task(follow())
        await asyncio.sleep(0.3)
        for i in range(50):
            sent[i] = time.perf_counter()
            await klog.append([rec(i)])
            await asyncio.sleep(0.005)
        await asyncio.wait_for(task, 10)
    lags.sort()
    assert lags[len(lags) // 2] < 0.05, lags


async def test_offset_for_timestamp(klog: KafkaLog) -> None:
    assert await klog.offset_for_timestamp(123) == 0
    base = time.time_ns() + 10**12
    records = [rec(i, ts=base + 1000 * i) for i in range(40)]
    for i in range(0, 40, 8):
        await klog.append(records[i:i + 8])
    assert await klog.offset_for_timestamp(0) == 0
    assert await klog.offset_for_timestamp(base) == 0
    assert await klog.offset_for_timestamp(base + 1) == 1
    assert await klog.offset_for_timestamp(base + 17_000) == 17
    assert await klog.offset_for_timestamp(base + 16_999) == 17
    assert await klog.offset_for_timestamp(base + 39_000) == 39
    assert await klog.offset_for_timestamp(base + 39_001) == 40


async def test_truncate_only_as_a_no_op(klog: KafkaLog) -> None:
    await klog.append([rec(0), rec(1)])
    await klog.truncate(2)
    await klog.truncate(5)
    with pytest.raises(LogError, match="cannot be truncated"):
        await klog.truncate(1)
    assert klog.next_offset() == 2


async def test_closed_log_refuses_use(kafka_url: str) -> None:
    log = KafkaLog(kafka_url)
    with pytest.raises(LogClosedError):
        await log.append([rec(0)])
    await log.open()
    await log.close()
    await log.close()
    with pytest.raises(LogClosedError):
        await log.append([rec(0)])
    with pytest.raises(LogClosedError):
        await log.open()


async def test_multi_partition_topic_is_refused(kafka_broker: TansuBroker, kafka_topic: str) -> None:
    await create_topic(kafka_broker.bootstrap, kafka_topic, partitions=3)
    with pytest.raises(LogError, match="3 partitions"):
        await KafkaLog(kafka_broker.url(kafka_topic)).open()


async def test_unreachable_broker_fails_open_clearly() -> None:
    log = KafkaLog("kafka://127.0.0.1:1/nothing-here", open_timeout=3)
    with pytest.raises(LogError, match="127.0.0.1:1"):
        await log.open()


async def test_record_values_are_filelog_frames(klog: KafkaLog, kafka_broker: TansuBroker) -> None:
    records = [rec(0), rec(1)]
    await klog.append(records)
    raw = await raw_values(kafka_broker.bootstrap, klog.topic)
    assert [v for _, v in raw] == [encode(r) for r in records]


# ------------------------------------------------------------------ duplicates and foreign records


async def test_duplicate_batch_from_a_retried_produce_is_skipped(klog: KafkaLog, kafka_broker: TansuBroker) -> None:
    first = [rec(0), rec(1), rec(2)]
    await klog.append(first)
    # what a produce retried after a lost acknowledgement leaves behind: the same batch again
    raw = await raw_values(kafka_broker.bootstrap, klog.topic)
    assert await produce_raw(kafka_broker.bootstrap, klog.topic, [v for _, v in raw]) == 3
    second = [rec(3)]
    await klog.append(second)  # the log sees offsets 3..5 are copies and carries on
    assert second[0].offset == 6
    back = await read_all(klog)
    assert [r.offset for r in back] == [0, 1, 2, 6]
    assert [r.ts for r in back] == [r.ts for r in first + second]
    assert [r.offset for r in await read_all(klog, 4)] == [6]  # starting inside the copies
    assert klog.duplicates_skipped >= 3
    async with KafkaLog(klog.url) as again:  # a fresh reader and the tail skip them too
        assert [r.offset for r in await read_all(again)] == [0, 1, 2, 6]
        tail = again.tail(1)
        got = await asyncio.wait_for(tail.__anext__(), 10)
        await tail.aclose()
        assert [r.offset for r in got] == [1, 2, 6]


async def test_foreign_records_fence_the_writer(klog: KafkaLog, kafka_broker: TansuBroker) -> None:
    await klog.append([rec(0)])
    stray = rec(99, ts=klog.last_ts() + 1000)
    stray.offset = 1
    await produce_raw(kafka_broker.bootstrap, klog.topic, [encode(stray)])
    with pytest.raises(LogWriteError, match="did not write"):
        await klog.append([rec(1)])
    assert klog.fenced
    with pytest.raises(LogWriteError, match="did not write"):
        await klog.append([rec(2)])
    async with KafkaLog(klog.url) as again:  # what a restarted committer would replay
        assert [r.request_id for r in await read_all(again)][:2] == [0, 99]



async def test_a_damaged_record_is_a_clear_corruption_error(klog: KafkaLog, kafka_broker: TansuBroker) -> None:
    await klog.append([rec(0)])
    frame = bytearray(encode(rec(1)))
    frame[-1] ^= 0xFF  # a flipped bit: the frame's CRC no longer matches
    await produce_raw(kafka_broker.bootstrap, klog.topic, [bytes(frame)])
    with pytest.raises(LogCorruptError, match="offset 1"):  # opening reads the end of the topic
        await KafkaLog(klog.url).open()
    good = []
    for i in range(2, 142):  # push the damaged record out of what opening reads
        r = rec(i, ts=klog.last_ts() + i)
        r.offset = i
        good.append(encode(r))
    await produce_raw(kafka_broker.bootstrap, klog.topic, good[:70])
    await produce_raw(kafka_broker.bootstrap, klog.topic, good[70:])
    async with KafkaLog(klog.url) as reader:
        with pytest.raises(LogCorruptError, match="offset 1"):
            await read_all(reader)
        tail = reader.tail(0)
        with pytest.raises(LogCorruptError, match="offset 1"):
            await asyncio.wait_for(tail.__anext__(), 10)


# ------------------------------------------------------------------ broker outages


async def test_broker_down_makes_appends_unknown_within_the_bound_then_settles(
        proxied_broker: tuple[TansuBroker, TcpProxy], kafka_topic: str) -> None:
    broker, proxy = proxied_broker
    async with KafkaLog(broker.url(kafka_topic), append_timeout=1.5) as log:
        await log.append([rec(0), rec(1)])
        proxy.down()
        doubtful = [rec(2)]
        with pytest.raises(LogOutcomeUnknown, match="failed .*outcome is unknown"):
            await log.append(doubtful)
        assert doubtful[0].offset == -1 and log.next_offset() == 2 and log.in_doubt
        refused = [rec(3)]  # the next append settles the doubt first: with the broker away it cannot
        with pytest.raises(LogWriteError, match="not written .*still in doubt"):
            await log.append(refused)
        with pytest.raises(LogWriteError, match="still does not answer"):
            await log.settle()
        assert log.fenced is None and log.in_doubt
        proxy.up()
        attempts = 0
        while True:  # the log settles without a restart once the broker is back
            attempts += 1
            try:
                assert await log.settle()
                break
            except LogWriteError:
                assert attempts < 100, "the doubt was never settled"
                await asyncio.sleep(0.2)
        assert not log.in_doubt and doubtful[0].offset == 2 and log.next_offset() == 3
        assert not await log.settle()  # nothing left in doubt
        again = [rec(4)]
        await log.append(again)
        assert again[0].offset == 3
        assert [r.request_id for r in await read_all(log)] == [0, 1, 2, 4]


@pytest.mark.parametrize("landed", [True, False])
async def test_stalled_append_is_unknown_and_settles_exactly_once(
        proxied_broker: tuple[TansuBroker, TcpProxy], kafka_topic: str, landed: bool) -> None:
    """A held produce request lands (or is dropped) after the timeout: either way the record is in once."""
    broker, proxy = proxied_broker
    async with KafkaLog(broker.url(kafka_topic), append_timeout=1.0) as log:
        await log.append([rec(0)])
        proxy.stall()
        stalled = [rec(1)]
        with pytest.raises(LogOutcomeUnknown, match="no acknowledgement within 1s"):  # the bound fired, not a hang
            await log.append(stalled)
        assert stalled[0].offset == -1 and log.next_offset() == 1
        if landed:
            proxy.up()  # the held produce request now reaches the broker: it committed after all
            await asyncio.sleep(0.5)
        else:
            proxy.down()  # the held request is dropped with its connection
            proxy.up()
        deadline = time.monotonic() + 20
        while True:
            try:
                await log.settle()
                break
            except LogWriteError:
                assert time.monotonic() < deadline, "the doubt was never settled"
                await asyncio.sleep(0.2)
        later = [rec(2)]
        await log.append(later)
        async with KafkaLog(log.url) as reader:
            back = await read_all(reader)
        assert [r.request_id for r in back] == [0, 1, 2]
        assert [r.ts for r in back] == sorted({r.ts for r in back})
        assert back[1].offset == stalled[0].offset and back[2].offset == later[0].offset
        if landed:  # the first send is the record readers apply; the re-sent copy (offset 2) is skipped
            assert [r.offset for r in back] == [0, 1, 3] and log.duplicates_skipped >= 1
        else:  # only the re-send reached the topic
            assert [r.offset for r in back] == [0, 1, 2]
        assert log.fenced is None


async def test_reader_keeps_its_records_while_the_broker_is_down(
        proxied_broker: tuple[TansuBroker, TcpProxy], kafka_topic: str) -> None:
    broker, proxy = proxied_broker
    url = broker.url(kafka_topic)
    # Nothing is appended while the broker is down. The writer's bound must leave room for the
    # first produce after the outage (reconnect + metadata) on a loaded machine: an append that
    # times out while its request is already at the broker lands anyway, and the log then
    # (rightly) fences itself, which is not what this test is about.
    async with KafkaLog(url, append_timeout=5.0) as writer, KafkaLog(url) as reader:
        seen: list[int] = []
        errors: list[BaseException] = []

        async def follow() -> None:
            try:
                async for batch in reader.tail(0):
                    seen.extend(r.request_id or 0 for r in batch)
            except LogError as exc:
                errors.append(exc)

        task = asyncio.create_task(follow())
        await writer.append([rec(0)])
        proxy.down()
        await asyncio.sleep(2.5)
        proxy.up()
        deadline = time.monotonic() + 20
        while True:
            try:
                await writer.append([rec(1)])
                break
            except LogWriteError as exc:
                assert time.monotonic() < deadline, f"the writer did not recover: {exc} (fenced: {writer.fenced})"
                await asyncio.sleep(0.2)
        while seen != [0, 1] and not errors and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert not errors, f"the reader failed: {errors[0]}"
        assert seen == [0, 1]


async def test_memory_broker_restart_fences_the_writer(own_broker: TansuBroker, kafka_topic: str) -> None:
    async with KafkaLog(own_broker.url(kafka_topic), append_timeout=2.0) as log:
        await log.append([rec(0), rec(1), rec(2)])
        own_broker.restart()  # memory storage: the topic and its three records are gone
        with pytest.raises(LogWriteError, match="lost committed records|refuses"):
            await log.append([rec(3)])
        assert log.fenced and "refuses to write a new history" in log.fenced
        with pytest.raises(LogWriteError, match="refuses"):
            await log.append([rec(4)])


async def test_watchdog_notices_a_lost_topic_without_appends(own_broker: TansuBroker, kafka_topic: str) -> None:
    async with KafkaLog(own_broker.url(kafka_topic), append_timeout=2.0, watch_interval=0.2) as log:
        await log.append([rec(0), rec(1)])
        own_broker.restart()
        deadline = time.monotonic() + 15
        while log.fenced is None:
            assert time.monotonic() < deadline, "the lost topic went unnoticed"
            await asyncio.sleep(0.1)
        assert "no longer exists" in log.fenced or "ends at offset" in log.fenced


async def test_tail_reports_a_lost_topic(own_broker: TansuBroker, kafka_topic: str) -> None:
    url = own_broker.url(kafka_topic)
    async with KafkaLog(url) as writer:
        await writer.append([rec(0), rec(1)])
    async with KafkaLog(url) as reader:
        tail = reader.tail(0)
        first = await asyncio.wait_for(tail.__anext__(), 10)
        assert [r.offset for r in first] == [0, 1]
        own_broker.restart()
        with pytest.raises(LogError, match="lost|no longer exists|empty"):
            await asyncio.wait_for(tail.__anext__(), 30)
