"""Point-in-time restore: `history.restore` (new directory and in place) and the points in time it takes."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from engine.app import App
from engine.runtime import Runtime
from history.archive import ArchiveLog
from history.errors import RestoreError
from history.points import Point, format_ns, iso_to_ns, parse_point
from history.restore import restore_in_place, restore_to_dir
from history.sources import Source
from log.file_log import FileLog
from projections.checkpoints import checkpoint_live, list_checkpoints, take_checkpoint
from projections.rebuild import rebuild
from projections.store import Projection
from tests.projections.test_checkpoint_indexes import all_matches, count_backfills, fill, vector_answers

APPS = Path(__file__).resolve().parents[1] / "apps"


# ----------------------------------------------------------------- helpers


async def start(data: Path, app_name: str = "kitchen") -> Runtime:
    app = App.load(APPS / app_name)
    log = FileLog(data / "log")
    await log.open()
    projection = Projection(data / "projection", app.schema.index_catalog())
    runtime = Runtime(app, log, projection)
    await runtime.start()
    return runtime


async def stop(runtime: Runtime) -> None:
    await runtime.stop()
    runtime.projection.close()
    await runtime.log.close()


async def kitchen_workload(rt: Runtime, n: int = 30, checkpoint_every: int = 0,
                           data: Path | None = None) -> tuple[str, list[tuple[int, int, Any]]]:
    """Create a list and mutate it; returns (list id, [(offset, ts, items query value) after each mutation])."""
    history: list[tuple[int, int, Any]] = []
    out = await rt.run_mutation("lists:create", {"name": "groceries"})
    lid = out.value
    history.append((out.offset, out.ts, rt.run_query("lists:items", {"list_id": lid}).value))
    ids: list[str] = []
    for i in range(n):
        if i % 5 == 3 and ids:
            out = await rt.run_mutation("lists:toggle", {"id": ids[i % len(ids)]})
        elif i % 7 == 6 and ids:
            out = await rt.run_mutation("lists:remove", {"id": ids.pop(0)})
        else:
            out = await rt.run_mutation("lists:add", {"list_id": lid, "text": f"item {i}", "rank": float(i)})
            ids.append(out.value)
        history.append((out.offset, out.ts, rt.run_query("lists:items", {"list_id": lid}).value))
        if checkpoint_every and data is not None and i % checkpoint_every == checkpoint_every - 1:
            take_checkpoint(rt.projection, data, keep=100)
    return lid, history


async def reference_digest(log_dir: Path, upto: int, tmp: Path, catalog: dict[str, Any]) -> str:
    """Digest of a fresh replay of records 0..upto of the log in `log_dir`."""
    log = FileLog(log_dir, read_only=True)
    await log.open()
    try:
        projection = await rebuild(log, tmp, catalog, upto=upto)
    finally:
        await log.close()
    try:
        return projection.content_digest()
    finally:
        projection.close()


async def read_all(log_dir: Path) -> list[Any]:
    log = FileLog(log_dir, read_only=True)
    await log.open()
    out = []
    try:
        async for batch in log.read(0):
            out.extend(batch)
    finally:
        await log.close()
    return out


def digest_of(projection_dir: Path) -> tuple[str, int]:
    p = Projection(projection_dir)
    try:
        return p.content_digest(), p.applied_offset
    finally:
        p.close()


def kitchen_catalog() -> dict[str, Any]:
    return App.load(APPS / "kitchen").schema.index_catalog()


# ----------------------------------------------------------------- parsing


def test_parse_point_forms() -> None:
    assert parse_point("offset:12") == Point("offset", 12)
    assert parse_point("offset:-1") == Point("offset", -1)
    assert parse_point("ts:1700000000000000001") == Point("ts", 1700000000000000001)
    assert parse_point("1700000000000000001") == Point("ts", 1700000000000000001)
    assert parse_point("17", bare="offset") == Point("offset", 17)
    assert parse_point("end") == Point("end")
    assert parse_point("2024-05-01T12:00:00.123456789Z") == Point("ts", 1714564800123456789)
    assert parse_point("2024-05-01T14:00:00.5+02:00") == Point("ts", 1714564800500000000)
    for bad in ("yesterday", "offset:x", "offset:-5", "ts:-1", "2024-13-01T00:00:00Z"):
        with pytest.raises(RestoreError):
            parse_point(bad)


def test_iso_round_trip_and_local_time() -> None:
    ts = 1714564800123456789
    assert iso_to_ns(format_ns(ts)) == ts
    naive = dt.datetime(2024, 5, 1, 12, 0, 0)
    assert iso_to_ns("2024-05-01T12:00:00") == int(naive.astimezone().timestamp()) * 1_000_000_000


# ----------------------------------------------------------------- restore into a new directory


async def test_restore_to_new_dir_matches_history(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rt = await start(data)
    lid, history = await kitchen_workload(rt, 30, checkpoint_every=8, data=data)
    assert len(list_checkpoints(data)) >= 3
    catalog = kitchen_catalog()
    # Restore while the deployment keeps running (the source is only read).
    for k, (offset, ts, items) in enumerate(history):
        if k % 6 and k != len(history) - 1:
            continue
        for point, name in ((Point("offset", offset), "o"), (Point("ts", ts), "t"),
                            (parse_point(format_ns(ts)), "i")):
            dest = tmp_path / f"r-{k}-{name}"
            report = await restore_to_dir(str(data), point, dest)
            assert report.upto == offset and report.ts == ts
            digest, applied = digest_of(dest / "projection")
            assert applied == offset
            assert digest == await reference_digest(data / "log", offset, tmp_path / f"ref-{k}-{name}", catalog)
            assert (dest / "admin_key").exists() is (data / "admin_key").exists()
            # the restored deployment serves the past state and keeps committing after it
            rt2 = await start(dest)
            try:
                assert rt2.run_query("lists:items", {"list_id": lid}).value == items
                out = await rt2.run_mutation("lists:add", {"list_id": lid, "text": "after restore"})
                assert out.offset == offset + 1 and out.ts > ts
            finally:
                await stop(rt2)
    # the restored log is a byte-for-byte prefix (same records, offsets and timestamps)
    src = await read_all(data / "log")
    dest = tmp_path / "prefix"
    await restore_to_dir(str(data), Point("offset", 17), dest)
    assert await read_all(dest / "log") == src[:18]
    await stop(rt)


async def test_checkpoints_and_full_replay_agree(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rt = await start(data)
    await kitchen_workload(rt, 25, checkpoint_every=5, data=data)
    await stop(rt)
    a = await restore_to_dir(str(data), Point("offset", 18), tmp_path / "a")
    b = await restore_to_dir(str(data), Point("offset", 18), tmp_path / "b", use_checkpoints=False)
    assert a.projection.base.startswith("checkpoint") and a.projection.replayed < 5
    assert b.projection.base == "empty" and b.projection.replayed == 19
    assert digest_of(tmp_path / "a" / "projection") == digest_of(tmp_path / "b" / "projection")


async def test_restore_never_splits_a_transaction(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rt = await start(data, "bank")
    owners = [f"u{i}" for i in range(5)]
    await rt.run_mutation("accounts:seed", {"owners": owners, "balance": 100.0})
    stamps = []
    for i in range(40):
        out = await rt.run_mutation("accounts:transfer", {"src": owners[i % 5], "dst": owners[(i * 3 + 1) % 5],
                                                          "amount": float(i % 7 + 1)})
        stamps.append(out.ts)
    await stop(rt)
    for k, ts in enumerate(stamps):
        if k % 4:
            continue
        # a ts between two commits, and exactly at a commit
        for t in (ts, ts - 1):
            dest = tmp_path / f"r{k}-{t - ts}"
            await restore_to_dir(str(data), Point("ts", t), dest)
            rt2 = await start(dest, "bank")
            try:
                assert rt2.run_query("accounts:total", {}).value == 500.0
            finally:
                await stop(rt2)


async def test_restore_sources_and_errors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rt = await start(data)
    await kitchen_workload(rt, 10)
    await stop(rt)
    for i, source in enumerate((str(data / "log"), f"file://{data / 'log'}")):
        report = await restore_to_dir(source, Point("offset", 5), tmp_path / f"s{i}")
        assert digest_of(tmp_path / f"s{i}" / "projection")[1] == 5 and report.records == 6
    # empty state
    await restore_to_dir(str(data), Point("offset", -1), tmp_path / "empty")
    assert digest_of(tmp_path / "empty" / "projection")[1] == -1
    assert await read_all(tmp_path / "empty" / "log") == []
    # a time before the first commit is the empty state too
    await restore_to_dir(str(data), Point("ts", 1), tmp_path / "before")
    assert digest_of(tmp_path / "before" / "projection")[1] == -1
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(RestoreError, match="not empty"):
        await restore_to_dir(str(data), Point("end"), tmp_path / "busy")
    with pytest.raises(RestoreError, match="past the end"):
        await restore_to_dir(str(data), Point("offset", 999), tmp_path / "far")
    with pytest.raises(RestoreError, match="does not exist"):
        await restore_to_dir(str(tmp_path / "nowhere"), Point("end"), tmp_path / "x")
    assert not (tmp_path / "far").exists() and not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if ".restoring-" in p.name]


# ----------------------------------------------------------------- in place


async def test_restore_in_place(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rt = await start(data)
    lid, history = await kitchen_workload(rt, 30, checkpoint_every=6, data=data)
    # while the deployment runs, in-place restore refuses
    with pytest.raises(RestoreError, match="Stop the server"):
        await restore_in_place(data, Point("offset", 10), lambda plan: True)
    await stop(rt)
    full = await read_all(data / "log")
    target_offset, target_ts, items = history[12]
    plans = []

    def no(plan: Any) -> bool:
        plans.append(plan)
        return False
    assert await restore_in_place(data, Point("ts", target_ts), no) is None
    assert plans[0].discarded == len(full) - target_offset - 1
    assert await read_all(data / "log") == full  # nothing changed

    report = await restore_in_place(data, Point("ts", target_ts), lambda plan: True)
    assert report is not None and report.discarded == len(full) - target_offset - 1
    assert await read_all(data / "log") == full[:target_offset + 1]
    assert digest_of(data / "projection") == (
        await reference_digest(data / "log", target_offset, tmp_path / "ref", kitchen_catalog()), target_offset)
    assert all(c.offset <= target_offset for c in list_checkpoints(data))
    # the discarded tail was saved and reads back as the same records
    archive = ArchiveLog(report.archive)
    await archive.open()
    saved = [r for batch in [b async for b in archive.read(0)] for r in batch]
    assert saved == full[target_offset + 1:]
    assert archive.next_offset() == len(full)
    # the rewound deployment serves the old state and continues from there
    rt = await start(data)
    assert rt.run_query("lists:items", {"list_id": lid}).value == items
    out = await rt.run_mutation("lists:add", {"list_id": lid, "text": "new timeline"})
    assert out.offset == target_offset + 1
    await stop(rt)
    assert not [p for p in data.iterdir() if p.name.startswith(".restore-")]


# ----------------------------------------------------------------- logs that are not FileLogs


class GappyLog:
    """A read-only log whose offsets have gaps (like a KafkaLog that skipped duplicate copies)."""

    def __init__(self, records: list[Any]) -> None:
        from log.record import Record
        self.records = [Record(writes=r.writes, offset=2 * r.offset + 1, ts=r.ts, session_id=r.session_id,
                               request_id=r.request_id, function=r.function, result=r.result, extra=dict(r.extra))
                        for r in records]

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def next_offset(self) -> int:
        return self.records[-1].offset + 1

    async def read(self, start: int, end: int | None = None, batch: int = 4096):  # type: ignore[no-untyped-def]
        out = [r for r in self.records if r.offset >= start and (end is None or r.offset < end)]
        for i in range(0, len(out), batch):
            yield out[i:i + batch]

    async def offset_for_timestamp(self, ts: int) -> int:
        return next((r.offset for r in self.records if r.ts >= ts), self.next_offset())


async def test_restore_from_a_log_with_offset_gaps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import history.restore as restore_mod
    data = tmp_path / "data"
    rt = await start(data)
    lid, history = await kitchen_workload(rt, 12)
    await stop(rt)
    records = await read_all(data / "log")
    gappy = GappyLog(records)

    async def fake_open(source: str) -> Any:
        return Source(gappy, None, "gappy log")
    monkeypatch.setattr(restore_mod, "open_source", fake_open)
    offset, ts, items = history[7]
    # a ts, and an offset that falls into a gap: both mean "after the 8th record"
    for k, point in enumerate((Point("ts", ts), Point("offset", 2 * offset + 2))):
        report = await restore_to_dir("kafka://broker:9092/topic", point, tmp_path / f"g{k}")
        assert report.upto == offset and report.records == offset + 1 and report.ts == ts
        assert await read_all(tmp_path / f"g{k}" / "log") == records[:offset + 1]  # renumbered densely
        # no data directory, so no index catalog: the server installs the app's indexes when it starts
        assert digest_of(tmp_path / f"g{k}" / "projection") == (
            await reference_digest(data / "log", offset, tmp_path / f"ref{k}", {}), offset)


async def test_restore_from_a_full_archive(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rt = await start(data)
    await kitchen_workload(rt, 8)
    await stop(rt)
    records = await read_all(data / "log")
    report = await restore_in_place(data, Point("offset", -1), lambda plan: True)
    assert report is not None and report.discarded == len(records)
    assert await read_all(data / "log") == []
    back = await restore_to_dir(str(report.archive), Point("end"), tmp_path / "back")
    assert back.records == len(records)
    assert await read_all(tmp_path / "back" / "log") == records
    assert digest_of(tmp_path / "back" / "projection")[1] == len(records) - 1


async def test_a_checkpoint_deleted_during_restore_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import history.build as restore_mod
    data = tmp_path / "data"
    rt = await start(data)
    await kitchen_workload(rt, 12, checkpoint_every=4, data=data)
    await stop(rt)
    newest = list_checkpoints(data)[-1]
    real_copy = restore_mod.copy_projection

    def racing_copy(src: Path, dest: Path) -> None:
        if Path(src).parent == newest.path:  # pruned by a running server's checkpointer right now
            Path(dest).mkdir(parents=True)
            raise FileNotFoundError(src)
        real_copy(src, dest)
    monkeypatch.setattr(restore_mod, "copy_projection", racing_copy)
    report = await restore_to_dir(str(data), Point("end"), tmp_path / "r")
    assert report.projection.base_offset == list_checkpoints(data)[-2].offset
    assert digest_of(tmp_path / "r" / "projection") == (
        await reference_digest(data / "log", report.upto, tmp_path / "ref", kitchen_catalog()), report.upto)


async def test_a_damaged_log_copy_fails_the_restore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy is verified before the restore is kept."""
    import history.segments as restore_module
    from log.errors import LogCorruptError
    data = tmp_path / "data"
    rt = await start(data)
    await kitchen_workload(rt, 12)
    await stop(rt)
    real = restore_module.copy_segments

    def damaging(src_dir: Path, dest_dir: Path, n: int) -> int:
        copied = real(src_dir, dest_dir, n)
        seg = sorted(dest_dir.glob("*.seg"))[0]
        raw = bytearray(seg.read_bytes())
        raw[60] ^= 0x10  # inside the body of the first frame
        seg.write_bytes(bytes(raw))
        return copied

    monkeypatch.setattr(restore_module, "copy_segments", damaging)
    with pytest.raises(LogCorruptError, match=r"00000000000000000000\.seg"):
        await restore_to_dir(str(data), Point("offset", 8), tmp_path / "r", use_checkpoints=False)
    assert not (tmp_path / "r").exists()
    monkeypatch.setattr(restore_module, "copy_segments", real)
    report = await restore_to_dir(str(data), Point("offset", 8), tmp_path / "r2", use_checkpoints=False)
    assert report.upto == 8 and report.projection.replayed == 9


async def test_restore_to_dir_carries_the_checkpoint_search_and_vector_indexes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "src"
    app = App.load(APPS / "indexed")
    log = FileLog(data / "log")
    await log.open()
    rt = Runtime(app, log, Projection(data / "projection", app.schema.index_catalog()), vector_dir=data / "vectors")
    await rt.start()
    try:
        await fill(rt, 1, 200, 150)
        assert rt.vectors.wait_ready(30)
        cp = await checkpoint_live(rt.projection, data, vectors=rt.vectors)
        assert cp is not None and cp.search and cp.vectors
        await fill(rt, 2, 50, 50)  # replayed (and re-read for the vector index) after the checkpoint
        point = rt.projection.applied_offset
        rt.projection.flush_search()
        expected = all_matches(rt.projection, app.schema), await vector_answers(rt)
        await fill(rt, 3, 50, 50)  # after the point: not in the restored state
    finally:
        await stop(rt)  # saves DATA/vectors stamped past the point: the checkpoint's copy is the one to use
    backfills = count_backfills(monkeypatch)
    dest = tmp_path / "restored"
    report = await restore_to_dir(str(data), Point("offset", point), dest)
    assert report.projection is not None and report.projection.base_offset == cp.offset
    projection = Projection(dest / "projection", app.schema.index_catalog())
    restored_log = FileLog(dest / "log", read_only=True)
    await restored_log.open()
    restored = Runtime(app, restored_log, projection, role="replica", vector_dir=dest / "vectors")
    try:
        assert backfills == []  # neither the restore nor the open rebuilt the search index
        assert projection.search_progress()["messages.search_body"]["offset"] == point
        await restored.start()
        assert restored.vectors._entries[("docs", "by_embedding")].loaded
        assert restored.vectors.wait_ready(30)
        assert (all_matches(projection, app.schema), await vector_answers(restored)) == expected
    finally:
        await restored.stop()
        projection.close()
        await restored_log.close()
