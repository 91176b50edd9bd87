"""Vector indexes saved at stop, loaded at start; equal to live after restarts, doctor, restores, on replicas."""
from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import orjson
import pytest
from rich.console import Console

from engine.app import App
from engine.runtime import Runtime
from history.points import Point
from history.restore import restore_in_place, restore_to_dir
from log.file_log import FileLog
from ops.doctor_cmd import rebuild_projection
from projections.store import Projection
from projections.vector_index import GRAPH_LAYOUT
from tests.conftest import APPS
from tests.engine.test_vector_search import DIMS, seed

Opener = Callable[..., Awaitable[Runtime]]


@pytest.fixture
async def open_rt() -> AsyncIterator[Opener]:
    """Start runtimes on a data directory with DATA/vectors (as a node does); stopped at the end."""
    live: list[Runtime] = []

    async def opener(data: Path, saved: bool = True) -> Runtime:
        log_ = FileLog(data / "log")
        await log_.open()
        app = App.load(APPS / "vectors")
        projection = Projection(data / "projection", app.schema.index_catalog())
        rt = Runtime(app, log_, projection, vector_dir=data / "vectors" if saved else None)
        await rt.start()
        assert rt.vectors.wait_ready(20.0)
        live.append(rt)
        return rt

    yield opener
    for rt in live:
        await close(rt)


async def close(rt: Runtime) -> None:
    if rt.projection._db is None:  # type: ignore[attr-defined]
        return
    await rt.stop()
    rt.projection.close()
    await rt.log.close()


def entries(rt: Runtime) -> dict[str, Any]:
    assert rt.vectors.wait_applied()
    return rt.vectors.index("docs", "by_embedding").entries()


async def churn(rt: Runtime, ids: list[str], start: int) -> None:
    for doc_id in ids[start:start + 10]:
        await rt.run_mutation("docs:remove", {"id": doc_id})
    await rt.run_mutation("docs:patch", {"id": ids[start + 10], "fields": {"kind": "note", "embedding": [0.25] * DIMS}})


async def test_saved_at_stop_loaded_at_start_and_caught_up_from_the_log(open_rt: Opener, tmp_path: Path) -> None:
    data = tmp_path / "d"
    rt = await open_rt(data)
    ids, _ = await seed(rt, 150)
    await close(rt)  # saves
    meta = orjson.loads((data / "vectors" / "docs.by_embedding" / "meta.json").read_bytes())
    assert meta["offset"] == rt.projection.applied_offset
    # more writes while the saved copy is not looked at: it is now behind the log
    rt = await open_rt(data, saved=False)
    await churn(rt, ids, 0)
    await seed(rt, 20, seed_=5)
    await close(rt)
    rt = await open_rt(data)
    entry = rt.vectors._entries[("docs", "by_embedding")]
    assert entry.loaded  # not rebuilt: loaded, then the 31 changed documents re-read
    assert entries(rt) == entries(await built_from_scratch(open_rt, data, tmp_path))
    q = [1.0] + [0.0] * (DIMS - 1)
    assert await rt.run_action("docs:similar", {"vector": q, "limit": 256}) != []


async def built_from_scratch(open_rt: Opener, data: Path, tmp_path: Path) -> Runtime:
    """A runtime on a copy of `data` without saved vectors: its index is built from the projection."""
    copy = tmp_path / f"scratch{len(list(tmp_path.iterdir()))}"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns("vectors"))
    return await open_rt(copy, saved=False)


async def test_a_saved_copy_that_no_longer_fits_the_log_is_rebuilt(open_rt: Opener, tmp_path: Path) -> None:
    data = tmp_path / "d"
    rt = await open_rt(data)
    ids, _ = await seed(rt, 60)
    await close(rt)
    meta_path = data / "vectors" / "docs.by_embedding" / "meta.json"
    meta = orjson.loads(meta_path.read_bytes())
    meta_path.write_bytes(orjson.dumps({**meta, "ts": meta["ts"] + 1}))  # as if the log was rewritten
    rt = await open_rt(data)
    assert not rt.vectors._entries[("docs", "by_embedding")].loaded and len(entries(rt)) == 60
    await close(rt)
    (data / "vectors" / "docs.by_embedding" / "rows.json").write_bytes(b"garbage")
    rt = await open_rt(data)
    assert not rt.vectors._entries[("docs", "by_embedding")].loaded and len(entries(rt)) == 60
    await close(rt)
    # A copy saved by a version with other graph parameters (say, the cosine metric) is rebuilt too.
    meta = orjson.loads(meta_path.read_bytes())
    assert meta["graph"] == GRAPH_LAYOUT
    meta_path.write_bytes(orjson.dumps({**meta, "graph": "usearch/i8/cos/24/128"}))
    rt = await open_rt(data)
    assert not rt.vectors._entries[("docs", "by_embedding")].loaded and len(entries(rt)) == 60


async def test_doctor_rebuild_and_restore_equal_live(open_rt: Opener, tmp_path: Path) -> None:
    data = tmp_path / "d"
    rt = await open_rt(data)
    ids, _ = await seed(rt, 120)
    await churn(rt, ids, 0)
    midpoint, at_midpoint = rt.projection.applied_offset, entries(rt)
    await churn(rt, ids, 20)
    live = entries(rt)
    await close(rt)
    await asyncio.to_thread(rebuild_projection, data, out=Console(quiet=True))
    assert not (data / "vectors").exists()
    rt = await open_rt(data)
    assert entries(rt) == live
    await close(rt)
    await restore_to_dir(str(data), Point("offset", midpoint), tmp_path / "restored")
    restored = await open_rt(tmp_path / "restored")
    assert entries(restored) == at_midpoint
    await restore_in_place(data, Point("offset", midpoint), lambda plan: True)
    rt = await open_rt(data)  # the copy saved at the end is past the restored log: rebuilt
    assert not rt.vectors._entries[("docs", "by_embedding")].loaded
    assert entries(rt) == at_midpoint


async def test_a_replica_following_the_log_equals_the_committer(open_rt: Opener, tmp_path: Path) -> None:
    rt = await open_rt(tmp_path / "d")
    ids, _ = await seed(rt, 80)
    replica_log = FileLog(tmp_path / "d" / "log", read_only=True)
    await replica_log.open()
    app = App.load(APPS / "vectors")
    replica = Runtime(app, replica_log, Projection(tmp_path / "replica", app.schema.index_catalog()), role="replica")
    await replica.start()
    try:
        async def follow() -> None:  # what gateway.replica does: apply the log through apply_committed
            async for batch in replica_log.read(replica.projection.applied_offset + 1, rt.log.next_offset()):
                replica.apply_committed(batch)

        await follow()
        assert replica.vectors.wait_ready(20.0)
        await churn(rt, ids, 0)
        await follow()
        assert entries(replica) == entries(rt)
        assert await replica.run_action("docs:similar", {"vector": [0.25] * DIMS, "limit": 5}) == \
            await rt.run_action("docs:similar", {"vector": [0.25] * DIMS, "limit": 5})
    finally:
        await replica.stop()
        replica.projection.close()
        await replica_log.close()
