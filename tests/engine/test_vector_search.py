"""ctx.vector_search end to end through a runtime: results, filters, writes reflected, bad input, restarts."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.errors import ArgumentError, EngineError
from engine.runtime import Runtime

DIMS = 8


def unit(rng: np.random.Generator) -> list[float]:
    v = rng.standard_normal(DIMS)
    return (v / np.linalg.norm(v)).tolist()


async def ready(rt: Runtime) -> Runtime:
    assert rt.vectors.wait_ready(10.0)
    return rt


async def search(rt: Runtime, vector: list[float], **kw: Any) -> list[dict[str, Any]]:
    return await rt.run_action("docs:similar", {"vector": vector, **kw})


async def seed(rt: Runtime, n: int, seed_: int = 1) -> tuple[list[str], dict[str, tuple[list[float], str]]]:
    rng = np.random.default_rng(seed_)
    rows = [{"title": f"t{i}", "kind": ("doc", "faq", "note")[i % 3], "embedding": unit(rng)} for i in range(n)]
    ids = []
    for start in range(0, n, 100):
        ids += (await rt.run_mutation("docs:add_many", {"rows": rows[start:start + 100]})).value
    return ids, {i: (r["embedding"], r["kind"]) for i, r in zip(ids, rows)}


def exact(data: dict[str, tuple[list[float], str]], q: list[float], k: int,
          kinds: set[str] | None = None) -> list[tuple[str, float]]:
    qv = np.asarray(q) / np.linalg.norm(q)
    scored = [(i, float(np.dot(np.asarray(v) / np.linalg.norm(v), qv))) for i, (v, kind) in data.items()
              if kinds is None or kind in kinds]
    return sorted(scored, key=lambda s: -s[1])[:k]


async def test_results_are_exact_neighbours_by_cosine_with_scores(make_runtime) -> None:
    rt = await ready(await make_runtime("vectors"))
    _ids, data = await seed(rt, 300)
    rng = np.random.default_rng(7)
    for _ in range(5):
        q = unit(rng)
        got = await search(rt, q, limit=16)
        want = exact(data, q, 16)
        assert [g["_id"] for g in got] == [w[0] for w in want]
        assert [g["_score"] for g in got] == pytest.approx([w[1] for w in want], abs=1e-5)
    assert len(await search(rt, unit(rng))) == 10  # default limit


async def test_filters_eq_and_or(make_runtime) -> None:
    rt = await ready(await make_runtime("vectors"))
    _ids, data = await seed(rt, 300)
    q = unit(np.random.default_rng(3))
    got = await search(rt, q, limit=20, kind="faq")
    assert [g["_id"] for g in got] == [w[0] for w in exact(data, q, 20, {"faq"})]
    got = await search(rt, q, limit=20, kinds=["faq", "note"])
    assert [g["_id"] for g in got] == [w[0] for w in exact(data, q, 20, {"faq", "note"})]
    assert await search(rt, q, kind="nothing") == []


async def test_inserts_updates_and_deletes_are_reflected(make_runtime) -> None:
    rt = await ready(await make_runtime("vectors"))
    ids, data = await seed(rt, 50)
    target = [1.0] + [0.0] * (DIMS - 1)
    new = (await rt.run_mutation("docs:add", {"title": "new", "kind": "doc", "embedding": target})).value
    assert (await search(rt, target, limit=1))[0] == {"_id": new, "_score": pytest.approx(1.0)}
    await rt.run_mutation("docs:patch", {"id": new, "fields": {"kind": "faq"}})
    assert (await search(rt, target, limit=1, kind="faq"))[0]["_id"] == new
    assert new not in [g["_id"] for g in await search(rt, target, limit=50, kind="doc")]
    moved = [-x for x in target]
    await rt.run_mutation("docs:patch", {"id": new, "fields": {"embedding": moved}})
    assert (await search(rt, moved, limit=1))[0]["_id"] == new
    assert new not in [g["_id"] for g in await search(rt, target, limit=5)]
    await rt.run_mutation("docs:remove", {"id": new})
    await rt.run_mutation("docs:remove", {"id": ids[0]})
    everything = [g["_id"] for g in await search(rt, target, limit=256)]
    assert new not in everything and ids[0] not in everything and len(everything) == 49
    # a document without a vector is not indexed
    await rt.run_mutation("docs:add", {"title": "plain", "kind": "doc"})
    assert len(await search(rt, target, limit=256)) == 49
    assert await rt.run_action("docs:similar_titles", {"vector": data[ids[1]][0]}) == ["t1", *[
        f"t{ids.index(w[0])}" for w in exact({k: d for k, d in data.items() if k != ids[0]}, data[ids[1]][0], 3)[1:]]]


async def test_deleted_documents_never_returned_even_before_the_index_applies(make_runtime) -> None:
    rt = await ready(await make_runtime("vectors"))
    ids, data = await seed(rt, 30)
    q = data[ids[5]][0]
    rt.remove_listener(rt.vectors.apply)  # the projection moves on, the index does not
    try:
        await rt.run_mutation("docs:remove", {"id": ids[5]})
        got = await search(rt, q, limit=5)
        assert ids[5] not in [g["_id"] for g in got] and len(got) == 5
    finally:
        rt.add_listener(rt.vectors.apply)


async def test_bad_input_gets_clear_errors(make_runtime) -> None:
    rt = await ready(await make_runtime("vectors"))
    await seed(rt, 10)
    with pytest.raises(ArgumentError, match=r"docs document\.embedding: vector index 'by_embedding' needs 8 "
                                            r"dimensions, got 3"):
        await rt.run_mutation("docs:add", {"title": "x", "kind": "doc", "embedding": [1.0, 2.0, 3.0]})
    ok = [1.0] * DIMS

    async def raw(table: str, index: str, request: Any) -> Any:
        return await rt.run_action("docs:raw_search", {"table": table, "index": index, "request": request})

    with pytest.raises(EngineError, match=r"vector_search\(docs.by_embedding\) vector has 3 dimensions, the index "
                                          r"expects 8"):
        await raw("docs", "by_embedding", {"vector": [1.0, 2.0, 3.0]})
    with pytest.raises(EngineError, match=r"table 'docs' has no vector index 'nope' \(its vector indexes: "
                                          r"by_embedding\)"):
        await raw("docs", "nope", {"vector": ok})
    with pytest.raises(EngineError, match=r"limit must be an integer from 1 to 256, got 257"):
        await raw("docs", "by_embedding", {"vector": ok, "limit": 257})
    with pytest.raises(EngineError, match=r"limit must be an integer from 1 to 256, got 0"):
        await raw("docs", "by_embedding", {"vector": ok, "limit": 0})
    with pytest.raises(EngineError, match=r"zero vector"):
        await raw("docs", "by_embedding", {"vector": [0.0] * DIMS})
    with pytest.raises(EngineError, match=r"unknown request field\(s\) \['vectr'\]"):
        await raw("docs", "by_embedding", {"vectr": ok})
    with pytest.raises(EngineError, match=r"only available in actions"):
        rt.run_query("docs:search_in_query", {})
    with pytest.raises(EngineError, match=r"only available in actions"):
        await rt.run_mutation("docs:search_in_mutation", {})


async def test_bad_filters_get_clear_errors(make_runtime) -> None:
    rt = await ready(await make_runtime("vectors"))
    expected = {
        "field": r"'title' is not a filter field of the index \(filter_fields: kind\)",
        "returns": r"the filter function must return q.eq\(...\) or q.or_\(...\), got int",
        "not_callable": r"filter must be a function q -> q.eq\(...\), got int",
        "or_of_junk": r"q.or_ takes q.eq\(...\) or q.or_\(...\) expressions, got str",
    }
    for mode, message in expected.items():
        with pytest.raises(EngineError, match=message):
            await rt.run_action("docs:bad_filter", {"mode": mode})


async def test_restart_rebuilds_the_index_equal_to_live(make_runtime, tmp_path: Path) -> None:
    rt = await ready(await make_runtime("vectors", tmp_path / "d"))
    ids, data = await seed(rt, 200)
    for doc_id in ids[:20]:
        await rt.run_mutation("docs:remove", {"id": doc_id})
    await rt.run_mutation("docs:patch", {"id": ids[30], "fields": {"kind": "note", "embedding": [0.5] * DIMS}})
    assert rt.vectors.wait_applied()
    live = rt.vectors.index("docs", "by_embedding").entries()
    await rt.stop()
    rt.projection.close()
    await rt.log.close()
    again = await ready(await make_runtime("vectors", tmp_path / "d"))
    assert again.vectors.index("docs", "by_embedding").entries() == live
