"""Checkpoints carry the search indexes (exactly at their offset) and stamped vector index copies.

Opening a projection (and a runtime) from a checkpoint finds them ready: the
full-text index is not rebuilt and the vector index is loaded, with the
documents written between its stamp and the checkpoint re-read from the log.
"""
from __future__ import annotations

import asyncio
import io
import random
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from engine.db import DatabaseReader, Transaction
from engine.execution import drive
from engine.limits import DEFAULT_LIMITS
from engine.runtime import Runtime
from projections import search as search_module
from projections.checkpoint_transfer import CheckpointReceiver, CheckpointTransferError, pin_checkpoint, tar_checkpoint
from projections.checkpoints import checkpoint_live, copy_projection, take_checkpoint
from projections.store import Projection
from projections.vectors import adopt_saved, saved_offset

WORDS = "apple banana cherry delta echo falcon garden harbor island jungle".split()
SEARCHES = [("apple", None), ("banana ch", None), ("delta", "a"), ("ech", "b"), ("garden harbor is", None),
            ("zzz", None)]
PROBES = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.2, 0.0], [0.3, 0.3, 0.3, 0.9], [-1.0, 0.5, 0.0, 0.1]]


def messages(rng: random.Random, n: int) -> list[dict[str, str]]:
    return [{"body": " ".join(rng.choices(WORDS, k=rng.randint(1, 5))), "channel": rng.choice("ab")}
            for _ in range(n)]


def docs(rng: random.Random, n: int) -> list[dict[str, Any]]:
    return [{"title": f"d{rng.random():.6f}", "kind": rng.choice("xy"),
             "embedding": [rng.uniform(-1, 1) for _ in range(4)]} for _ in range(n)]


async def fill(rt: Runtime, seed: int, n_messages: int, n_docs: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    mids: list[str] = []
    dids: list[str] = []
    for _ in range(0, n_messages, 50):
        mids += (await rt.run_mutation("messages:send_many", {"items": messages(rng, 50)})).value
    for _ in range(0, n_docs, 50):
        dids += (await rt.run_mutation("docs:add_many", {"rows": docs(rng, 50)})).value
    return mids, dids


def all_matches(projection: Projection, schema: Any) -> list[list[str]]:
    """Every document each of SEARCHES matches (collect: no top-N cut under 1,024 matches), sorted."""
    out = []
    for text, channel in SEARCHES:
        tx = Transaction(projection, schema, DEFAULT_LIMITS, None, writable=False)

        def build(q: Any, text: str = text, channel: str | None = channel) -> Any:
            q = q.search("body", text)
            return q.eq("channel", channel) if channel else q
        found = drive(DatabaseReader(tx).query("messages").with_search_index("search_body", build).collect(), "t")
        out.append(sorted(d["_id"] for d in found))
    return out


def search_answers(rt: Runtime) -> list[list[str]]:
    return [rt.run_query("messages:search", {"text": t, **({"channel": c} if c else {})}).value for t, c in SEARCHES]


async def vector_answers(rt: Runtime) -> list[list[str]]:
    out = []
    for probe in PROBES:
        out.append(await rt.run_action("docs:similar", {"vector": probe}))
        out.append(await rt.run_action("docs:similar", {"vector": probe, "kind": "x"}))
    return out


def count_backfills(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every search index backfill (a rebuild from the projection's documents)."""
    calls: list[str] = []
    original = search_module.SearchIndexes._backfill

    def counted(self: Any, idx: Any) -> None:
        calls.append(f"{idx.spec.table}.{idx.spec.name}")
        original(self, idx)
    monkeypatch.setattr(search_module.SearchIndexes, "_backfill", counted)
    return calls


async def test_checkpoint_opens_with_its_indexes_ready(make_runtime: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "node"
    rt = await make_runtime("indexed", data)
    mids, dids = await fill(rt, 1, 300, 200)
    assert rt.vectors.wait_ready(30)
    loop = asyncio.get_running_loop()
    save_copy = rt.vectors.save_copy

    async def more_writes() -> None:  # after the vector save, before the checkpoint's offset is taken
        await fill(rt, 2, 50, 50)
        await rt.run_mutation("messages:edit", {"id": mids[0], "body": "zzz apple"})
        await rt.run_mutation("messages:remove", {"id": mids[1]})
        await rt.run_mutation("docs:move", {"id": dids[0], "embedding": [1.0, 0.0, 0.0, 0.0]})
        await rt.run_mutation("docs:remove", {"id": dids[1]})

    def save_then_write(directory: Path, reuse: Path | None = None) -> dict[str, int]:
        saved = save_copy(directory, reuse)
        asyncio.run_coroutine_threadsafe(more_writes(), loop).result(30)
        return saved
    monkeypatch.setattr(rt.vectors, "save_copy", save_then_write)
    info = await checkpoint_live(rt.projection, data, vectors=rt.vectors)
    assert info is not None and info.offset == rt.projection.applied_offset
    assert info.search == {"messages.search_body": info.offset}
    stamp = info.vectors["docs.by_embedding"]
    assert stamp < info.offset - 4  # the writes above came after the vector save
    assert saved_offset(info.vectors_dir / "docs.by_embedding") == stamp
    expected_search, expected_vectors = search_answers(rt), await vector_answers(rt)
    assert any(expected_search) and expected_search[-1] == [mids[0]]
    assert dids[0] == expected_vectors[0][0] and all(dids[1] not in a for a in expected_vectors)

    backfills = count_backfills(monkeypatch)
    new = tmp_path / "opened"
    copy_projection(info.projection_dir, new / "projection")
    assert adopt_saved(info.vectors_dir, new / "vectors", info.offset) == ["docs.by_embedding"]
    projection = Projection(new / "projection", rt.app.schema.index_catalog(), background_search_backfill=True)
    opened = Runtime(rt.app, rt.log, projection, role="replica", vector_dir=new / "vectors")
    try:
        assert backfills == []  # the full-text index came ready: no rebuild
        assert projection.search_progress()["messages.search_body"] == {"building": None, "offset": info.offset,
                                                                         "pending": 0}
        await opened.start()
        entry = opened.vectors._entries[("docs", "by_embedding")]
        assert entry.loaded  # from the checkpoint's copy, not built from the projection
        assert opened.vectors.wait_ready(30)
        assert search_answers(opened) == expected_search
        assert await vector_answers(opened) == expected_vectors
    finally:
        await opened.stop()
        projection.close()

    # an older checkpoint without the indexes still opens: they are built from its documents
    shutil.rmtree(info.vectors_dir)
    shutil.rmtree(info.projection_dir / "search")
    old = tmp_path / "old"
    copy_projection(info.projection_dir, old / "projection")
    assert adopt_saved(info.vectors_dir, old / "vectors", info.offset) == []
    projection = Projection(old / "projection", rt.app.schema.index_catalog())
    opened = Runtime(rt.app, rt.log, projection, role="replica", vector_dir=old / "vectors")
    try:
        assert backfills == ["messages.search_body"]
        await opened.start()
        assert not opened.vectors._entries[("docs", "by_embedding")].loaded
        assert opened.vectors.wait_ready(30)
        rebuilt = search_answers(opened)  # (a rebuilt index scores alike, not identically: compare what all match)
        assert [len(a) for a in rebuilt] == [len(a) for a in expected_search]
        assert [sorted(a) for a in rebuilt if len(a) < 20] == [sorted(a) for a in expected_search if len(a) < 20]
        assert await vector_answers(opened) == expected_vectors
    finally:
        await opened.stop()
        projection.close()


async def test_copies_are_exactly_at_the_checkpoint_offset_while_writes_continue(
        make_runtime: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "node"
    rt = await make_runtime("indexed", data)
    await fill(rt, 3, 100, 0)
    rng = random.Random(4)
    stop = asyncio.Event()

    async def writer() -> None:  # (at most ~850 messages: no query matches more than collect()'s 1,024)
        for _ in range(250):
            if stop.is_set():
                return
            await rt.run_mutation("messages:send_many", {"items": messages(rng, 3)})
            await asyncio.sleep(0.002)
    task = asyncio.create_task(writer())
    taken = []
    try:
        while not task.done() and len(taken) < 4:
            await asyncio.sleep(0.005)
            info = await checkpoint_live(rt.projection, data, keep=10, vectors=rt.vectors)
            if info is not None:
                taken.append(info)
    finally:
        stop.set()
        await task
    assert len(taken) >= 3
    backfills = count_backfills(monkeypatch)
    for info in taken:  # each opens at its own offset with its index there, answering like a replay would
        assert info.search == {"messages.search_body": info.offset}
        path = tmp_path / f"open-{info.offset}"
        copy_projection(info.projection_dir, path)
        p = Projection(path)
        try:
            assert p.applied_offset == info.offset
            assert p.search_progress()["messages.search_body"]["offset"] == info.offset
            got = all_matches(p, rt.app.schema)
        finally:
            p.close()
        rebuilt_path = tmp_path / f"rebuilt-{info.offset}"
        copy_projection(info.projection_dir, rebuilt_path)
        shutil.rmtree(rebuilt_path / "search")
        p = Projection(rebuilt_path)
        try:
            assert got == all_matches(p, rt.app.schema) and any(got)
        finally:
            p.close()
    assert len(backfills) == len(taken)  # only the copies whose search directory was removed were rebuilt


async def test_transfer_carries_the_indexes_only_when_asked(make_runtime: Any, tmp_path: Path) -> None:
    data = tmp_path / "node"
    rt = await make_runtime("indexed", data)
    await fill(rt, 5, 100, 100)
    assert rt.vectors.wait_ready(30)
    cp = take_checkpoint(rt.projection, data, vectors=rt.vectors)
    assert cp is not None and cp.search and cp.vectors
    pinned = pin_checkpoint(cp, data)
    full = b"".join(tar_checkpoint(pinned))
    names = tarfile.open(fileobj=io.BytesIO(full)).getnames()
    assert any(n.startswith("projection/search/messages/search_body/") for n in names)
    assert "vectors/docs.by_embedding/meta.json" in names
    plain = tarfile.open(fileobj=io.BytesIO(b"".join(tar_checkpoint(pinned, indexes=False)))).getnames()
    assert not any(n.startswith(("projection/search", "vectors")) for n in plain)
    receiver = CheckpointReceiver(tmp_path / "got" / "cp")
    for i in range(0, len(full), 4096):
        receiver.feed(full[i:i + 4096])
    assert receiver.finish()["search"] == {"messages.search_body": cp.offset}
    copy_projection(tmp_path / "got" / "cp" / "projection", tmp_path / "opened")
    p = Projection(tmp_path / "opened")
    try:
        assert p.search_progress()["messages.search_body"] == {"building": None, "offset": cp.offset, "pending": 0}
    finally:
        p.close()
    assert saved_offset(tmp_path / "got" / "cp" / "vectors" / "docs.by_embedding") == cp.vectors["docs.by_embedding"]
    # a member outside the checkpoint's layout is refused
    for bad in ("projection/search/../../x", "vectors/a/b/c", "projection/a/b", "/etc/x"):
        head = tarfile.TarInfo(bad)
        head.size = 0
        receiver = CheckpointReceiver(tmp_path / "bad" / "cp")
        with pytest.raises(CheckpointTransferError, match="unexpected member"):
            receiver.feed(head.tobuf(format=tarfile.GNU_FORMAT))
        receiver.abort()


async def test_an_unchanged_vector_index_is_linked_from_the_previous_checkpoint(make_runtime: Any,
                                                                                tmp_path: Path) -> None:
    data = tmp_path / "node"
    rt = await make_runtime("indexed", data)
    await fill(rt, 6, 50, 100)
    assert rt.vectors.wait_ready(30)
    first = await checkpoint_live(rt.projection, data, keep=10, vectors=rt.vectors)
    await fill(rt, 7, 50, 0)  # messages only: the vector index does not change
    second = await checkpoint_live(rt.projection, data, keep=10, vectors=rt.vectors)
    assert first is not None and second is not None and second.offset > first.offset
    graph = "docs.by_embedding/graph.usearch"
    assert (second.vectors_dir / graph).stat().st_ino == (first.vectors_dir / graph).stat().st_ino  # linked
    assert second.vectors["docs.by_embedding"] == second.offset  # under the newer stamp
    before = await vector_answers(rt)
    await rt.run_mutation("docs:remove", {"id": before[0][0]})
    third = await checkpoint_live(rt.projection, data, keep=10, vectors=rt.vectors)
    assert third is not None
    assert (third.vectors_dir / graph).stat().st_ino != (second.vectors_dir / graph).stat().st_ino  # written anew
    expected = await vector_answers(rt)
    assert expected != before
    for info in (second, third):  # each opens with its own copy and answers as the live index did
        opened_dir = tmp_path / f"open-{info.offset}"
        copy_projection(info.projection_dir, opened_dir / "projection")
        adopt_saved(info.vectors_dir, opened_dir / "vectors", info.offset)
        projection = Projection(opened_dir / "projection")
        opened = Runtime(rt.app, rt.log, projection, role="replica", vector_dir=opened_dir / "vectors")
        try:
            await opened.start()
            assert opened.vectors._entries[("docs", "by_embedding")].loaded and opened.vectors.wait_ready(30)
            answers = await vector_answers(opened)
            assert answers == (expected if info is third else before)
        finally:
            await opened.stop()
            projection.close()


def test_transfer_of_member_names_longer_than_a_tar_header(tmp_path: Path) -> None:
    # long table and index names make search file paths longer than 100 bytes: GNU long-name headers
    root = tmp_path / "cp"
    deep = root / "projection" / "search" / ("t" * 70) / ("i" * 70)
    deep.mkdir(parents=True)
    (root / "checkpoint.json").write_bytes(b'{"offset": 3}')
    (root / "projection" / "CURRENT").write_bytes(b"MANIFEST-000001\n")
    (deep / ("0123456789abcdef" * 2 + ".fieldnorm")).write_bytes(b"x" * 1000)
    (deep / "meta.json").write_bytes(b"{}")
    stream = b"".join(tar_checkpoint(root))
    receiver = CheckpointReceiver(tmp_path / "got" / "cp")
    for i in range(0, len(stream), 300):
        receiver.feed(stream[i:i + 300])
    receiver.finish()
    got = tmp_path / "got" / "cp" / "projection" / "search" / ("t" * 70) / ("i" * 70)
    assert sorted(p.name for p in got.iterdir()) == ["0123456789abcdef" * 2 + ".fieldnorm", "meta.json"]
    assert (got / ("0123456789abcdef" * 2 + ".fieldnorm")).read_bytes() == b"x" * 1000


async def test_a_failed_or_raced_search_copy(make_runtime: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "node"
    rt = await make_runtime("indexed", data)
    await fill(rt, 8, 100, 0)
    link = search_module.link_or_copy
    raced: list[str] = []

    def vanishing_once(src: str, dest: str) -> None:  # as if a merge deleted a segment file in between
        if not raced:
            raced.append(src)
            raise FileNotFoundError(src)
        link(src, dest)
    monkeypatch.setattr(search_module, "link_or_copy", vanishing_once)
    info = await checkpoint_live(rt.projection, data, vectors=rt.vectors)
    assert raced and info is not None and info.search == {"messages.search_body": info.offset}  # started over

    def failing(src: str, dest: str) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(search_module, "link_or_copy", failing)
    await fill(rt, 9, 50, 0)
    expected = all_matches(rt.projection, rt.app.schema)
    info = await checkpoint_live(rt.projection, data, vectors=rt.vectors)
    assert info is not None and info.search == {} and not (info.projection_dir / "search").exists()
    assert "goes without its search indexes" in caplog.text
    monkeypatch.setattr(search_module, "link_or_copy", link)
    backfills = count_backfills(monkeypatch)
    copy_projection(info.projection_dir, tmp_path / "opened")
    p = Projection(tmp_path / "opened")
    try:
        assert backfills == ["messages.search_body"] and all_matches(p, rt.app.schema) == expected  # rebuilt
    finally:
        p.close()
