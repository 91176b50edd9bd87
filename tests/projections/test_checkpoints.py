"""Projection checkpoints: layout, atomicity, retention, lookup, and consistency on a live node."""
from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from log.file_log import FileLog
from projections.checkpoints import (
    checkpoint_live,
    checkpoints_dir,
    clean_partial,
    copy_projection,
    drop_after,
    list_checkpoints,
    nearest_checkpoint,
    nearest_valid_checkpoint,
    prune,
    run_checkpointer,
    take_checkpoint,
    verify,
)
from projections.rebuild import rebuild
from projections.store import Projection


async def mutate(rt: Any, n: int, lid: str | None = None) -> str:
    if lid is None:
        lid = (await rt.run_mutation("lists:create", {"name": "l"})).value
    for i in range(n):
        await rt.run_mutation("lists:add", {"list_id": lid, "text": f"t{i}"})
    return lid


async def replay_digest(log: Any, upto: int, path: Path, catalog: dict[str, Any]) -> str:
    projection = await rebuild(log, path, catalog, upto=upto)
    try:
        return projection.content_digest()
    finally:
        projection.close()


def opened_digest(info: Any, scratch: Path) -> tuple[str, int, int]:
    copy_projection(info.projection_dir, scratch)
    p = Projection(scratch)
    try:
        return p.content_digest(), p.applied_offset, p.applied_ts
    finally:
        p.close()


async def test_take_list_and_open(make_runtime: Any, tmp_path: Path) -> None:
    data = tmp_path / "node"
    rt = await make_runtime("kitchen", data)
    assert take_checkpoint(rt.projection, data) is None  # nothing applied yet
    assert list_checkpoints(data) == []
    lid = await mutate(rt, 5)
    first = take_checkpoint(rt.projection, data)
    assert first is not None and first.offset == rt.projection.applied_offset == 5
    assert first.ts == rt.projection.applied_ts and first.documents == 6
    assert first.path == checkpoints_dir(data) / "5" and (first.path / "checkpoint.json").exists()
    assert first.indexes == rt.app.schema.index_catalog()
    assert take_checkpoint(rt.projection, data) is None  # same offset: nothing new
    digest_then = rt.projection.content_digest()
    await mutate(rt, 3, lid)
    second = take_checkpoint(rt.projection, data)
    assert second is not None and second.offset == 8
    assert [c.offset for c in list_checkpoints(data)] == [5, 8]
    assert nearest_checkpoint(data, 4) is None
    assert nearest_checkpoint(data, 5).offset == 5  # type: ignore[union-attr]
    assert nearest_checkpoint(data, 7).offset == 5  # type: ignore[union-attr]
    assert nearest_checkpoint(data, 100).offset == 8  # type: ignore[union-attr]
    # a checkpoint opens as a normal projection holding exactly the state at its offset
    digest, offset, ts = opened_digest(first, tmp_path / "copy")
    assert (digest, offset, ts) == (digest_then, 5, first.ts)
    assert await verify(first, rt.log) and await verify(second, rt.log)


async def test_partial_and_foreign_checkpoints_are_ignored(make_runtime: Any, tmp_path: Path) -> None:
    data = tmp_path / "node"
    rt = await make_runtime("kitchen", data)
    await mutate(rt, 3)
    info = take_checkpoint(rt.projection, data)
    assert info is not None
    root = checkpoints_dir(data)
    (root / ".tmp-9-1-0" / "projection").mkdir(parents=True)  # a crash while writing
    (root / "12").mkdir()  # no metadata
    (root / "notes").mkdir()
    assert [c.offset for c in list_checkpoints(data)] == [info.offset]
    clean_partial(data)
    assert not (root / ".tmp-9-1-0").exists()
    # a checkpoint whose ts does not match the log (another history) is skipped
    other = tmp_path / "other"
    rt2 = await make_runtime("kitchen", other)
    await mutate(rt2, 5)
    assert not await verify(info, rt2.log)
    shutil.copytree(info.path, checkpoints_dir(other) / str(info.offset))
    found = nearest_checkpoint(other, 10)
    assert found is not None and found.offset == info.offset
    assert await nearest_valid_checkpoint(other, 10, rt2.log) is None
    assert await nearest_valid_checkpoint(data, 10, rt.log) == info


async def test_retention_and_drop_after(make_runtime: Any, tmp_path: Path) -> None:
    data = tmp_path / "node"
    rt = await make_runtime("kitchen", data)
    lid = await mutate(rt, 1)
    for _ in range(5):
        await mutate(rt, 2, lid)
        take_checkpoint(rt.projection, data, keep=3)
    assert [c.offset for c in list_checkpoints(data)] == [7, 9, 11]
    assert prune(data, 0) and [c.offset for c in list_checkpoints(data)] == [11]  # at least one is kept
    await mutate(rt, 2, lid)
    take_checkpoint(rt.projection, data)
    assert [c.offset for c in list_checkpoints(data)] == [11, 13]
    drop_after(data, 12)
    assert [c.offset for c in list_checkpoints(data)] == [11]


async def test_checkpoint_live_while_applying(make_runtime: Any, tmp_path: Path) -> None:
    """Checkpoints taken while mutations stream in each hold exactly the state at their tagged offset."""
    data = tmp_path / "node"
    rt = await make_runtime("kitchen", data)
    lid = await mutate(rt, 1)
    stop = asyncio.Event()

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            await asyncio.gather(*(rt.run_mutation("lists:add", {"list_id": lid, "text": f"w{i}-{j}"})
                                   for j in range(5)))
            i += 1

    task = asyncio.create_task(writer())
    taken = []
    for _ in range(6):
        await asyncio.sleep(0.02)
        info = await checkpoint_live(rt.projection, data, keep=100)
        if info is not None:
            taken.append(info)
    stop.set()
    await task
    assert len(taken) >= 3
    catalog = rt.app.schema.index_catalog()
    for k, info in enumerate(taken):
        digest, offset, ts = opened_digest(info, tmp_path / f"c{k}")
        assert offset == info.offset and ts == info.ts
        assert digest == await replay_digest(rt.log, info.offset, tmp_path / f"r{k}", catalog)
        assert info.blocked_ms < 5000


async def test_run_checkpointer(make_runtime: Any, tmp_path: Path) -> None:
    data = tmp_path / "node"
    rt = await make_runtime("kitchen", data)
    (checkpoints_dir(data) / ".tmp-1-2-3").mkdir(parents=True)
    task = asyncio.create_task(run_checkpointer(rt.projection, data, interval=0.03, keep=2))
    lid = await mutate(rt, 1)
    for _ in range(6):
        await mutate(rt, 3, lid)
        await asyncio.sleep(0.06)
    await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    found = list_checkpoints(data)
    assert 1 <= len(found) <= 2
    assert found[-1].offset == rt.projection.applied_offset
    assert not (checkpoints_dir(data) / ".tmp-1-2-3").exists()
    # an interval of 0 means off
    await asyncio.wait_for(run_checkpointer(rt.projection, data, interval=0, keep=2), 1)


async def test_verify_rejects_out_of_range(make_runtime: Any, tmp_path: Path) -> None:
    data = tmp_path / "node"
    rt = await make_runtime("kitchen", data)
    await mutate(rt, 2)
    info = take_checkpoint(rt.projection, data)
    assert info is not None
    empty = FileLog(tmp_path / "empty-log")
    await empty.open()
    try:
        assert not await verify(info, empty)
    finally:
        await empty.close()
