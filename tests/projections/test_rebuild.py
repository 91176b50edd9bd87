"""Rebuilding a projection from the log gives byte-identical contents to the live one."""
from __future__ import annotations

import random
from typing import Any
from pathlib import Path

import pytest

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
