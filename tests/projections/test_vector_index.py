"""VectorIndex (usearch graph + exact numpy search) and VectorIndexes (built from a projection, kept from records)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from projections import vector_index
from projections.store import Projection
from projections.vector_index import VectorIndex, filter_key
from projections.vectors import UnknownVectorIndex, VectorIndexBuilding, VectorIndexes

DIMS = 32


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIMS)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def filled(n: int) -> tuple[VectorIndex, np.ndarray]:
    index = VectorIndex("t", "v", "e", DIMS, ["kind"])
    rows = unit_rows(n, 1)
    for i in range(0, n, 500):
        chunk = range(i, min(n, i + 500))
        index.put_many([f"id{j}" for j in chunk], [(rows[j], (filter_key(f"k{j % 3}"),)) for j in chunk])
    return index, rows


def recall(index: VectorIndex, rows: np.ndarray, kind: int | None = None) -> float:
    queries = unit_rows(50, 9)
    allowed = np.arange(len(rows)) if kind is None else np.arange(kind, len(rows), 3)
    any_of = None if kind is None else [("kind", filter_key(f"k{kind}"))]
    hits = 0
    for q in queries:
        scores = rows[allowed] @ q
        truth = {f"id{allowed[i]}" for i in np.argsort(-scores)[:10]}
        got = index.search(q, 10, any_of)
        assert len(got) == 10 and [s for _, s in got] == sorted((s for _, s in got), reverse=True)
        hits += len(truth & {doc_id for doc_id, _ in got})
    return hits / (10 * len(queries))


def test_graph_search_recall_at_10_against_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_index, "EXACT_BELOW", 100)  # force the HNSW path
    index, rows = filled(4000)
    assert recall(index, rows) >= 0.95
    assert recall(index, rows, kind=1) >= 0.95  # a filter keeping a third: over-fetch from the graph
    monkeypatch.setattr(vector_index, "EXACT_BELOW", 10_000)
    assert recall(index, rows) == 1.0 and recall(index, rows, kind=2) == 1.0  # exact below the threshold


def test_updates_and_removes_reuse_rows_and_postings() -> None:
    index, rows = filled(30)
    index.put_many(["id0"], [(rows[1], (filter_key("other"),))])  # moved onto id1's vector, new kind
    assert {d for d, _ in index.search(rows[1], 2)} == {"id0", "id1"}
    assert index.search(rows[1], 5, [("kind", filter_key("other"))])[0][0] == "id0"
    assert "id0" not in {d for d, _ in index.search(rows[1], 30, [("kind", filter_key("k0"))])}
    index.remove("id0")
    index.remove("id0")  # twice is harmless
    assert index.search(rows[1], 5, [("kind", filter_key("other"))]) == []
    assert len(index) == 29 and "id0" not in {d for d, _ in index.search(rows[1], 30)}
    index.upsert("id9", {"e": rows[2].tolist(), "kind": "k0"})
    index.upsert("idX", {"e": rows[3].tolist()})  # no filter field: indexed, never matches a filter
    assert len(index) == 30 and index.search(rows[3], 1)[0][0] in {"idX", "id3"}
    index.upsert("id9", {"e": [1.0, 2.0]})  # a wrong dimension is not indexed (older data)
    assert len(index) == 29


def _doc(history: Any, fields: dict[str, Any]) -> Any:
    return history.insert_write("docs", fields)


def test_indexes_build_from_the_projection_and_follow_records(tmp_path: Path, history: Any) -> None:
    rows = unit_rows(60, 4)
    writes = [_doc(history, {"e": rows[i].tolist(), "kind": f"k{i % 2}"}) for i in range(50)]
    history.commit(*writes)
    projection = Projection(tmp_path / "p", {})
    projection.apply(history.records)
    vectors = VectorIndexes(projection)
    vectors.install({"docs": {"by_e": {"field": "e", "dimensions": DIMS, "filter_fields": ["kind"]}}})
    with pytest.raises(VectorIndexBuilding, match=r"vector index docs.by_e is still being built from existing "
                                                  r"documents: 0 of 50 indexed \(0%\); try again shortly"):
        vectors.index("docs", "by_e")
    with pytest.raises(UnknownVectorIndex, match=r"table 'docs' has no vector index 'x' \(its vector indexes: "
                                                 r"by_e\)"):
        vectors.index("docs", "x")
    # writes applied before the build starts are re-read from the projection once it has scanned
    gone = writes[0].id
    moved = writes[1].id
    extra = [history.delete_write(gone), history.update_write(moved, {"e": rows[55].tolist(), "kind": "k9"})]
    history.commit(*extra)
    projection.apply(history.records[-1:])
    vectors.apply(history.records[-1:])
    vectors.start()
    assert vectors.wait_ready(10.0)
    got = vectors.search("docs", "by_e", rows[55], 3)
    assert got[0][0] == moved and gone not in {d for d, _ in vectors.search("docs", "by_e", rows[0], 50)}
    assert vectors.search("docs", "by_e", rows[55], 3, [("kind", filter_key("k9"))]) == got[:1]
    # after ready: records apply directly
    late = _doc(history, {"e": rows[59].tolist(), "kind": "k0"})
    history.commit(late)
    projection.apply(history.records[-1:])
    vectors.apply(history.records[-1:])
    assert vectors.search("docs", "by_e", rows[59], 1)[0][0] == late.id  # waits for the applier thread
    assert vectors.status() == [{"table": "docs", "index": "by_e", "state": "ready", "vectors": 50,
                                 "done": 49, "total": 49, "error": None}]
    vectors.install({})  # the index is dropped
    with pytest.raises(UnknownVectorIndex, match="it has no vector index"):
        vectors.index("docs", "by_e")
    vectors.close()
    projection.close()


def test_an_index_added_to_a_running_projection_is_backfilled(tmp_path: Path, history: Any) -> None:
    rows = unit_rows(40, 6)
    history.commit(*[_doc(history, {"e": rows[i].tolist(), "kind": "k"}) for i in range(40)])
    projection = Projection(tmp_path / "p", {})
    projection.apply(history.records)
    vectors = VectorIndexes(projection)
    vectors.start()  # running, no vector index yet
    vectors.install({"docs": {"by_e": {"field": "e", "dimensions": DIMS, "filter_fields": []}}})
    assert vectors.wait_ready(10.0)  # built by a background thread, without a restart
    assert len(vectors.index("docs", "by_e")) == 40
    vectors.install({"docs": {"by_e": {"field": "e", "dimensions": DIMS, "filter_fields": ["kind"]}}})
    assert vectors.wait_ready(10.0)  # redefined: dropped and built again with the filter field
    assert len(vectors.search("docs", "by_e", rows[3], 40, [("kind", filter_key("k"))])) == 40
    vectors.close()
    projection.close()


def test_a_burst_of_records_applied_in_order_equals_a_build_from_the_projection(tmp_path: Path, history: Any) -> None:
    rng = np.random.default_rng(11)
    rows = unit_rows(300, 12)
    catalog = {"docs": {"by_e": {"field": "e", "dimensions": DIMS, "filter_fields": ["kind"]}}}
    projection = Projection(tmp_path / "p", {})
    live = VectorIndexes(projection)
    live.install(catalog)
    live.start()
    assert live.wait_ready(10.0)
    ids: list[str] = []
    for i in range(300):  # inserts, re-embeddings, kind changes, vectors removed, deletes: one record each
        choice = rng.integers(4) if ids else 0
        if choice == 0:
            w = _doc(history, {"e": rows[i].tolist(), "kind": f"k{i % 3}"})
            ids.append(w.id)
        elif choice == 1:
            w = history.update_write(ids[rng.integers(len(ids))], {"e": rows[i].tolist(), "kind": "k1"})
        elif choice == 2:
            w = history.update_write(ids[rng.integers(len(ids))], {"kind": "k2"})  # no vector: leaves the index
        else:
            w = history.delete_write(ids.pop(rng.integers(len(ids))))
        history.commit(w)
        projection.apply(history.records[-1:])
        live.apply(history.records[-1:])
    assert live.wait_applied()
    built = VectorIndexes(projection)
    built.install(catalog)
    built.start()
    assert built.wait_ready(10.0)
    assert live.index("docs", "by_e").entries() == built.index("docs", "by_e").entries()
    for v in (live, built):
        v.close()
    projection.close()
