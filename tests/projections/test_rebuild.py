"""Rebuilding a projection from the log gives byte-identical contents to the live one."""
from __future__ import annotations

import random
from typing import Any
from pathlib import Path

import pytest

from log.file_log import FileLog
from log.record import Record
from projections import store
from projections.errors import ProjectionError
from projections.rebuild import catch_up, rebuild
from projections.store import Projection

INDEXES = {"items": {"by_n": ["n"], "by_tag_n": ["tag", "n"]}, "people": {"by_name": ["name"]}}


def churn(history: Any, n: int = 300, seed: int = 7) -> None:
    """A random mix of inserts, updates (with and without prev), deletes and multi-write records."""
    rng = random.Random(seed)
    live: list[str] = []
    for _ in range(n):
        op = rng.random()
        if op < 0.45 or len(live) < 3:
            table = rng.choice(["items", "people", "unindexed"])
            fields = {"n": rng.randint(0, 9), "tag": rng.choice("xyz"), "name": rng.choice(["ann", "bo"])}
            live.append(history.insert(table, **fields))
        elif op < 0.7:
            history.update(rng.choice(live), with_prev=rng.random() < 0.7, n=rng.randint(0, 9), tag=rng.choice("xyz"))
        elif op < 0.85:
            victim = live.pop(rng.randrange(len(live)))
            history.delete(victim, with_prev=rng.random() < 0.7)
        else:
            a, b = rng.sample(live, 2)
            history.commit(
                history.update_write(a, {"n": rng.randint(0, 9), "tag": "w"}, with_prev=rng.random() < 0.5),
                history.update_write(b, {"n": rng.randint(0, 9)}),
                history.insert_write("items", {"n": rng.randint(0, 9), "tag": "new"}),
            )


def live_projection(path: Path, history: Any, seed: int = 1) -> Projection:
    """Apply the history in random-sized batches, as a running node would."""
    rng = random.Random(seed)
    proj = Projection(path, INDEXES)
    i = 0
    while i < len(history.records):
        step = rng.randint(1, 40)
        proj.apply(history.records[i:i + step])
        i += step
    return proj


async def test_rebuild_matches_live_byte_for_byte(tmp_path: Path, history: Any, make_log: Any) -> None:
    churn(history)
    live = live_projection(tmp_path / "live", history)
    rebuilt = await rebuild(make_log(history.records), tmp_path / "rebuilt", INDEXES)
    try:
        assert rebuilt.applied_offset == live.applied_offset == len(history.records) - 1
        assert rebuilt.applied_ts == live.applied_ts
        assert rebuilt.dump_items() == live.dump_items()
        assert rebuilt.content_digest() == live.content_digest()
        assert sorted(rebuilt.iter_documents()) == sorted(history.docs.values())
    finally:
        rebuilt.close()
        live.close()


@pytest.mark.parametrize("batch_records", [1, 3, 17])
async def test_catch_up_with_small_batches(tmp_path: Path, history: Any, make_log: Any, batch_records: int) -> None:
    """Small batches put updates without `prev` in a later batch than the insert they follow."""
    churn(history, n=200, seed=batch_records)
    live = live_projection(tmp_path / "live", history)
    with Projection(tmp_path / "p", INDEXES) as proj:
        applied = await catch_up(proj, make_log(history.records), batch_records=batch_records)
        assert applied == len(history.records)
        assert proj.dump_items() == live.dump_items()
    live.close()


async def test_rebuild_upto_and_progress(tmp_path: Path, history: Any, make_log: Any) -> None:
    churn(history, n=120)
    upto = 70
    calls: list[tuple[int, int]] = []
    log = make_log(history.records)
    rebuilt = await rebuild(log, tmp_path / "r", INDEXES, upto=upto, progress=lambda o, n: calls.append((o, n)))
    with Projection(tmp_path / "ref", INDEXES) as ref:
        ref.apply(history.records[:upto + 1])
        assert rebuilt.applied_offset == upto
        assert rebuilt.dump_items() == ref.dump_items()
    assert calls and calls[-1] == (upto, upto + 1)
    assert [o for o, _ in calls] == sorted(o for o, _ in calls)
    assert log.reads == [(0, upto + 1)]
    # catching up the rest later gives the full projection
    applied = await catch_up(rebuilt, log)
    assert applied == len(history.records) - upto - 1
    with Projection(tmp_path / "full", INDEXES) as full:
        full.apply(history.records)
        assert rebuilt.dump_items() == full.dump_items()
    assert await catch_up(rebuilt, log) == 0
    assert await catch_up(rebuilt, log, upto=10) == 0
    rebuilt.close()


async def test_catch_up_resumes_from_applied_offset(tmp_path: Path, history: Any, make_log: Any) -> None:
    churn(history, n=80)
    log = make_log(history.records)
    with Projection(tmp_path / "p", INDEXES) as proj:
        proj.apply(history.records[:30])
        assert await catch_up(proj, log) == len(history.records) - 30
        assert log.reads[-1] == (30, None)
        assert proj.applied_offset == len(history.records) - 1


async def test_rebuild_of_an_empty_log(tmp_path: Path, make_log: Any) -> None:
    proj = await rebuild(make_log([]), tmp_path / "r", None)
    assert proj.applied_offset == -1
    assert proj.indexes == {}
    proj.close()


async def test_rebuild_refuses_a_non_empty_directory(tmp_path: Path, history: Any, make_log: Any) -> None:
    history.insert("items", n=1)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ProjectionError, match="taken"):
        await rebuild(make_log(history.records), tmp_path / "taken", INDEXES)
    (tmp_path / "empty").mkdir()
    proj = await rebuild(make_log(history.records), tmp_path / "empty", INDEXES)
    assert proj.count("items") == 1
    proj.close()


async def test_rebuild_failure_closes_the_projection(tmp_path: Path, history: Any) -> None:
    history.insert("items", n=1)

    class BrokenLog:
        async def read(self, start: int, end: int | None = None, batch: int = 4096):
            yield history.records
            raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        await rebuild(BrokenLog(), tmp_path / "r", INDEXES)
    with Projection(tmp_path / "r") as again:  # the directory was released
        assert again.applied_offset in (-1, 0)


# ----------------------------------------------------------- replaying a FileLog (read_writes)


async def file_log(path: Path, history: Any, seed: int = 3) -> FileLog:
    """A FileLog (of many small segments) holding the history's records, with their offsets and ts."""
    rng = random.Random(seed)
    log = FileLog(path, segment_bytes=6_000, index_bytes=700)
    await log.open()
    i = 0
    while i < len(history.records):
        step = rng.randint(1, 30)
        await log.append(history.records[i:i + step])
        i += step
    assert [r.offset for r in history.records] == list(range(len(history.records)))
    return log


async def test_rebuild_from_a_file_log_matches_live_byte_for_byte(tmp_path: Path, history: Any, make_log: Any) -> None:
    churn(history, n=400)
    log = await file_log(tmp_path / "log", history)
    live = live_projection(tmp_path / "live", history)
    rebuilt = await rebuild(log, tmp_path / "rebuilt", INDEXES)
    from_memory = await rebuild(make_log(history.records), tmp_path / "from-memory", INDEXES)
    try:
        assert rebuilt.applied_offset == live.applied_offset == len(history.records) - 1
        assert rebuilt.applied_ts == live.applied_ts
        assert rebuilt.dump_items() == live.dump_items() == from_memory.dump_items()
        assert rebuilt.meta() == live.meta()
        assert rebuilt._seen is None  # the new-document filter lives only as long as the replay
    finally:
        for p in (rebuilt, live, from_memory):
            p.close()
        await log.close()


@pytest.mark.parametrize("batch_records", [1, 3, 17, 4096])
async def test_catch_up_from_a_file_log_in_batches(tmp_path: Path, history: Any, batch_records: int) -> None:
    churn(history, n=200, seed=batch_records)
    log = await file_log(tmp_path / "log", history, seed=batch_records)
    calls: list[tuple[int, int]] = []
    with live_projection(tmp_path / "live", history) as live, Projection(tmp_path / "p", INDEXES) as proj:
        applied = await catch_up(proj, log, batch_records=batch_records, progress=lambda o, n: calls.append((o, n)))
        assert applied == len(history.records)
        assert proj.dump_items() == live.dump_items()
    assert calls[-1] == (len(history.records) - 1, len(history.records))
    assert all(n == o + 1 for o, n in calls) and [o for o, _ in calls] == sorted(o for o, _ in calls)
    assert len(calls) >= len(history.records) // batch_records
    await log.close()


async def test_catch_up_from_a_file_log_upto_and_resume(tmp_path: Path, history: Any) -> None:
    """Resuming a projection that holds documents: updates without `prev` read them (no filter)."""
    churn(history, n=150, seed=11)
    upto = 60
    for doc_id in list(history.docs)[:10]:  # updates and deletes without prev of documents from before `upto`
        history.update(doc_id, with_prev=False, n=99, tag="late")
    for doc_id in list(history.docs)[10:14]:
        history.delete(doc_id, with_prev=False)
    log = await file_log(tmp_path / "log", history)
    rebuilt = await rebuild(log, tmp_path / "r", INDEXES, upto=upto)
    with Projection(tmp_path / "ref", INDEXES) as ref:
        ref.apply(history.records[:upto + 1])
        assert rebuilt.applied_offset == upto
        assert rebuilt.dump_items() == ref.dump_items()
    assert not rebuilt.track_new_documents()  # it holds documents now
    assert await catch_up(rebuilt, log) == len(history.records) - upto - 1
    with live_projection(tmp_path / "live", history) as live:
        assert rebuilt.dump_items() == live.dump_items()
    assert await catch_up(rebuilt, log) == 0
    assert await catch_up(rebuilt, log, upto=10) == 0
    rebuilt.close()
    await log.close()


@pytest.mark.parametrize("mask", [0, 7, 255])
async def test_a_crowded_new_document_filter_changes_nothing(
    tmp_path: Path, history: Any, make_log: Any, monkeypatch: pytest.MonkeyPatch, mask: int
) -> None:
    """The filter only spares reads: with few slots it says "maybe" (then the store is read) more often."""
    churn(history, n=300, seed=mask)
    monkeypatch.setattr(store, "_SEEN_MASK", mask)
    log = await file_log(tmp_path / "log", history)
    with live_projection(tmp_path / "live", history) as live:
        for name, source in (("file", log), ("memory", make_log(history.records))):
            with Projection(tmp_path / name, INDEXES) as proj:
                assert await catch_up(proj, source, batch_records=5) == len(history.records)
                assert proj.dump_items() == live.dump_items()
    await log.close()


async def test_new_document_filter_starts_only_on_an_empty_projection(tmp_path: Path, history: Any) -> None:
    with Projection(tmp_path / "p", INDEXES) as proj:
        assert proj.track_new_documents()
        assert proj.track_new_documents()  # already on
        assert not proj.track_new_documents(False)
        history.insert("items", n=1)
        proj.apply(history.records)
        assert not proj.track_new_documents()
    with Projection(tmp_path / "q", INDEXES) as proj:
        proj.apply([Record([], offset=0, ts=5)])  # something applied, though no document
        assert not proj.track_new_documents()


async def test_replay_of_writes_without_prev_matches_live(tmp_path: Path, history: Any) -> None:
    """Catching up from the log's flat writes gives the live projection, also for updates and deletes
    without `prev` of documents the projection held before."""
    churn(history, n=300, seed=21)
    upto = 80
    for doc_id in list(history.docs)[:12]:
        history.update(doc_id, with_prev=False, n=7, tag="late")
    for doc_id in list(history.docs)[12:16]:
        history.delete(doc_id, with_prev=False)
    churn(history, n=100, seed=22)
    log = await file_log(tmp_path / "log", history)
    rebuilt = await rebuild(log, tmp_path / "r", INDEXES, upto=upto)
    try:
        assert await catch_up(rebuilt, log, batch_records=37) == len(history.records) - upto - 1
        with live_projection(tmp_path / "live", history) as live:
            assert rebuilt.content_digest() == live.content_digest()
            assert rebuilt.meta() == live.meta()
    finally:
        rebuilt.close()
        await log.close()
