"""Change data capture: `log.changes` events and the `history.stream` exporter (sinks, Kafka, resume)."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.app import App
from engine.runtime import Runtime
from history.errors import StreamError
from history.sinks import JsonlSink, KafkaSink, parse_kafka_url
from history.stream import StreamState, run_stream
from log.changes import TableFilter, change_events, encode_changes, event_from_avro, iter_changes, jsonl_chunk
from log.file_log import FileLog
from log.record import Record, Write
from projections.store import Projection
from values import encode_doc

APPS = Path(__file__).resolve().parents[1] / "apps"


async def start(data: Path, app_name: str = "kitchen") -> Runtime:
    app = App.load(APPS / app_name)
    log = FileLog(data / "log")
    await log.open()
    runtime = Runtime(app, log, Projection(data / "projection", app.schema.index_catalog()))
    await runtime.start()
    return runtime


async def stop(runtime: Runtime) -> None:
    await runtime.stop()
    runtime.projection.close()
    await runtime.log.close()


async def workload(rt: Runtime, n: int = 20) -> list[Any]:
    """Inserts, updates and deletes (some through idempotent requests, which write _requests)."""
    outs = []
    lid = (await rt.run_mutation("lists:create", {"name": "l"})).value
    ids = []
    for i in range(n):
        if i % 4 == 2:
            out = await rt.run_mutation("lists:toggle", {"id": ids[-1]}, session_id="s1", request_id=i)
        elif i % 6 == 5:
            out = await rt.run_mutation("lists:remove", {"id": ids.pop(0)})
        else:
            out = await rt.run_mutation("lists:add", {"list_id": lid, "text": f"t{i}", "rank": i})
            ids.append(out.value)
        outs.append(out)
    return outs


def build(tmp_path: Path, n: int = 20) -> Path:
    async def go() -> None:
        rt = await start(tmp_path / "data")
        await workload(rt, n)
        await stop(rt)
    asyncio.run(go())
    return tmp_path / "data"


async def all_records(data: Path) -> list[Record]:
    log = FileLog(data / "log", read_only=True)
    await log.open()
    try:
        return [r for b in [x async for x in log.read(0)] for r in b]
    finally:
        await log.close()


# ----------------------------------------------------------------- events


def _doc(doc_id: str, **fields: Any) -> bytes:
    return encode_doc({"_id": doc_id, "_creationTime": 1.5, **fields})


def test_change_event_shapes() -> None:
    a0, a1 = _doc("A", n=1, b=b"\x00\x01", f=2.0), _doc("A", n=2, b=b"\x00\x01", f=2.0)
    rec = Record(writes=[Write("things", "A", a0, None), Write("things", "A", a1, a0), Write("things", "A", None, a1),
                         Write("_requests", "R", _doc("R", x=1), None)],
                 offset=7, ts=1_700_000_000_123_456_789, function="things:do")
    events = change_events(rec)
    assert [e["op"] for e in events] == ["c", "u", "d"]
    c, u, d = events
    assert c["before"] is None and c["after"] == {"_id": "A", "_creationTime": 1.5, "n": 1, "b": {"$bytes": "AAE="},
                                                  "f": 2.0}
    assert u["before"]["n"] == 1 and u["after"]["n"] == 2
    assert d["before"]["n"] == 2 and d["after"] is None
    assert c["source"] == {"table": "things", "id": "A", "offset": 7, "ts_ns": 1_700_000_000_123_456_789,
                           "ts_ms": 1_700_000_000_123, "txId": 7, "function": "things:do"}
    assert c["ts_ms"] == 1_700_000_000_123
    # system tables only when asked for
    assert [e["source"]["table"] for e in change_events(rec, TableFilter(include_system=True))][-1] == "_requests"
    assert [e["source"]["table"] for e in change_events(rec, TableFilter(["_requests"]))] == ["_requests"]
    assert change_events(rec, TableFilter(["other"])) == []
    # Convex JSON: int64 as $integer
    convex = change_events(rec, doc_format="convex")[0]["after"]
    assert convex["n"] == {"$integer": "AQAAAAAAAAA="} and convex["f"] == 2.0
    # the fast encoders agree with the dict form, for both document formats
    for fmt in ("json", "convex"):
        fast = [orjson.loads(e) for _id, _off, e in encode_changes([rec], None, fmt)]
        assert fast == change_events(rec, doc_format=fmt)
        chunk, n = jsonl_chunk([rec], None, fmt)
        assert n == 3 and [orjson.loads(x) for x in chunk.splitlines()] == fast


async def test_events_of_engine_records(tmp_path: Path) -> None:
    rt = await start(tmp_path / "data")
    outs = await workload(rt, 12)
    await stop(rt)
    records = await all_records(tmp_path / "data")
    events = list(iter_changes(records))
    assert {e["source"]["table"] for e in events} == {"lists", "items"}
    assert {e["op"] for e in events} == {"c", "u", "d"}
    assert [e["source"]["offset"] for e in events] == sorted(e["source"]["offset"] for e in events)
    # replaying the events reproduces the final documents
    state: dict[str, Any] = {}
    for e in events:
        if e["op"] == "d":
            assert state.pop(e["source"]["id"]) == e["before"]
        else:
            assert state.get(e["source"]["id"]) == e["before"]
            state[e["source"]["id"]] = e["after"]
    projection = Projection(tmp_path / "data" / "projection")
    try:
        expected = {orjson.loads(raw)["_id"]: orjson.loads(raw) for t in ("lists", "items")
                    for raw in projection.iter_documents(t)}
    finally:
        projection.close()
    assert state == expected
    assert outs[-1].offset == records[-1].offset


# ----------------------------------------------------------------- live follow


async def test_follow_live_log(tmp_path: Path) -> None:
    rt = await start(tmp_path / "data")
    await workload(rt, 4)
    follower = FileLog(tmp_path / "data" / "log", read_only=True, poll_interval=0.005)
    await follower.open()
    lines: list[bytes] = []

    class Collect:
        durable = False

        async def open(self) -> None: ...

        async def write(self, records: list[Record]) -> int:
            chunk, n = jsonl_chunk(records, TableFilter(), "json")
            lines.extend(chunk.splitlines())
            return n

        async def commit(self) -> None: ...

        async def close(self) -> None: ...

    task = asyncio.create_task(run_stream(follower, 0, Collect(), follow=True))  # type: ignore[arg-type]
    lid = (await rt.run_mutation("lists:create", {"name": "live"})).value
    out = await rt.run_mutation("lists:add", {"list_id": lid, "text": "hello"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(orjson.loads(x)["source"]["offset"] == out.offset for x in lines):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert orjson.loads(lines[-1])["after"]["text"] == "hello"
    await follower.close()
    await stop(rt)


# ----------------------------------------------------------------- Kafka


class FakeProducer:
    """Records what would be published; `fail_at` makes the n-th message's delivery fail."""

    def __init__(self, sent: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]], fail_at: int | None = None):
        self.sent = sent
        self.fail_at = fail_at
        self.started = self.stopped = False
        self.count = 0

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]) -> "asyncio.Future[Any]":
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.count += 1
        if self.fail_at is not None and self.count >= self.fail_at:
            fut.set_exception(RuntimeError("broker unavailable"))
        else:
            self.sent.append((topic, key, value, headers))
            fut.set_result(None)
        return fut


def test_parse_kafka_url() -> None:
    t = parse_kafka_url("kafka://a:9092,b:9093/tape.changes?client_id=x")
    assert t.servers == ["a:9092", "b:9093"] and t.topic == "tape.changes" and t.options == {"client_id": "x"}
    for bad in ("kafka://a:9092", "kafka:///t", "http://a/t", "kafka://a:9092/t/u"):
        with pytest.raises(StreamError):
            parse_kafka_url(bad)


async def test_kafka_export_resumes_without_gaps(tmp_path: Path) -> None:
    rt = await start(tmp_path / "data")
    await workload(rt, 30)
    await stop(rt)
    records = await all_records(tmp_path / "data")
    expected = [(e["source"]["id"], e) for e in iter_changes(records)]
    log = FileLog(tmp_path / "data" / "log", read_only=True)
    await log.open()
    state = StreamState(tmp_path / "state.json")
    sent: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = []
    # first run: the broker fails part-way; the state only covers fully acknowledged batches
    producer = FakeProducer(sent, fail_at=12)
    sink = KafkaSink("kafka://localhost:9092/changes", TableFilter(), "json", producer_factory=lambda t: producer)
    await sink.open()
    with pytest.raises(RuntimeError, match="broker unavailable"):
        await run_stream(log, 0, sink, state=state, batch=4)
    await sink.producer.stop()
    saved = state.load()
    assert saved is not None
    acked_offsets = {orjson.loads(v)["source"]["offset"] for _t, _k, v, _h in sent}
    assert set(range(saved["next_offset"])) & {r.offset for r in records if any(
        not w.table.startswith("_") for w in r.writes)} <= acked_offsets
    # second run resumes at the saved position
    producer2 = FakeProducer(sent)
    sink = KafkaSink("kafka://localhost:9092/changes", TableFilter(), "json", producer_factory=lambda t: producer2)
    await sink.open()
    stats = await run_stream(log, saved["next_offset"], sink, state=state, batch=4)
    await sink.close()
    await log.close()
    assert producer2.stopped and state.load()["next_offset"] == len(records) == stats.next_offset
    # at-least-once: every event arrived, in order per document; duplicates only from the failed batch
    got = [(k.decode(), orjson.loads(v)) for _t, k, v, _h in sent]
    assert all(t == "changes" for t, _k, _v, _h in sent)
    assert all(dict(h)["tape.offset"] == str(e["source"]["offset"]).encode() for (_t, _k, _v, h), (_i, e)
               in zip(sent, got))
    unique = []
    for item in got:
        if item not in unique:
            unique.append(item)
    assert unique == expected
    assert len(got) - len(unique) < 4 * 3  # at most one re-sent batch of 4 records


async def test_kafka_avro_values(tmp_path: Path) -> None:
    import io

    from fastavro import parse_schema, schemaless_reader

    from log.changes import AVRO_SCHEMA
    rt = await start(tmp_path / "data")
    await workload(rt, 5)
    await stop(rt)
    records = await all_records(tmp_path / "data")
    log = FileLog(tmp_path / "data" / "log", read_only=True)
    await log.open()
    sent: list[Any] = []
    producer = FakeProducer(sent)
    sink = KafkaSink("kafka://k:9092/t", TableFilter(), "json", "avro", producer_factory=lambda t: producer)
    await sink.open()
    await run_stream(log, 0, sink)
    await sink.close()
    await log.close()
    schema = parse_schema(AVRO_SCHEMA)
    got = [event_from_avro(schemaless_reader(io.BytesIO(v), schema)) for _t, _k, v, _h in sent]
    assert got == list(iter_changes(records))


# ----------------------------------------------------------------- the flat (fast) export path


@pytest.mark.parametrize("doc_format", ["json", "convex"])
def test_flat_jsonl_chunks_equal_record_ones(tmp_path: Path, doc_format: str) -> None:
    from log.changes import jsonl_flat_chunk
    data = build(tmp_path, 25)

    async def check() -> None:
        log = FileLog(data / "log", read_only=True)
        await log.open()
        try:
            records = [r for b in [x async for x in log.read(0)] for r in b]
            for tables in (TableFilter(), TableFilter(["items"]), TableFilter(include_system=True)):
                for batch in (1, 4, 4096):
                    flat = [item async for item in log.read_changes(0, None, batch)]
                    assert sum(count for _, count, _ in flat) == len(records)
                    got = b"".join(jsonl_flat_chunk(w, r, tables, doc_format)[0] for (w, r), _, _ in flat)
                    assert got == jsonl_chunk(records, tables, doc_format)[0]
                    assert [last for _, _, last in flat][-1] == records[-1].offset
        finally:
            await log.close()

    asyncio.run(check())


def test_run_stream_to_a_file(tmp_path: Path) -> None:
    data = build(tmp_path, 30)
    records = asyncio.run(all_records(data))
    state = StreamState(tmp_path / "state.json")
    seen: list[int] = []

    async def export() -> Any:
        log = FileLog(data / "log", read_only=True)
        await log.open()
        try:
            with open(tmp_path / "events.jsonl", "wb") as f:
                sink = JsonlSink(f, TableFilter(), "json")
                stats = await run_stream(log, 3, sink, batch=5, until=len(records) - 2, state=state,
                                         on_batch=lambda s: seen.append(s.next_offset))
                await sink.close()
            return stats
        finally:
            await log.close()

    stats = asyncio.run(export())
    expected, n = jsonl_chunk(records[3:-1])
    assert (tmp_path / "events.jsonl").read_bytes() == expected
    assert (stats.events, stats.records, stats.next_offset) == (n, len(records) - 4, len(records) - 1)
    assert seen == sorted(seen) and seen[-1] == len(records) - 1
    assert orjson.loads((tmp_path / "state.json").read_bytes())["next_offset"] == len(records) - 1
