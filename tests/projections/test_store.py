"""Projection: apply, get, index keys, ranges and scans, meta, catalog changes, format versions."""
from __future__ import annotations

import itertools
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from rocksdict import Options, Rdict

from values import decode_doc, encode_doc, new_id
from log.record import Record, Write
from projections.errors import IndexCatalogError, ProjectionError, ProjectionFormatError
from projections.keys import encode_value_key
from projections.layout import META_FORMAT, pack_int
from projections.store import Projection

INDEXES = {"items": {"by_n": ["n"], "by_tag_n": ["tag", "n"], "by_rank": ["meta.rank"]}}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def proj(tmp_path: Path) -> Iterator[Projection]:
    p = Projection(tmp_path / "proj", INDEXES)
    yield p
    p.close()


def docs_in(proj: Projection, table: str, index: str, eq: list[Any] = [], lower: Any = None, upper: Any = None,
            reverse: bool = False) -> list[dict[str, Any]]:
    lo, hi = proj.index_range(table, index, eq, lower, upper)
    return [decode_doc(proj.get(doc_id)) for _key, doc_id in proj.scan(lo, hi, reverse)]  # type: ignore[arg-type]


def fill(history: Any, proj: Projection) -> list[str]:
    ids = []
    for i, (tag, n) in enumerate(itertools.product(["a", "b", "c"], [3, 1, 2, 5, 4])):
        ids.append(history.insert("items", tag=tag, n=n, meta={"rank": (i * 7) % 5}))
    proj.apply(history.records)
    return ids


# --- apply / get -------------------------------------------------------------------

def test_apply_and_get(proj: Projection, history: Any) -> None:
    a = history.insert("items", n=1, tag="x")
    b = history.insert("people", name="ann")
    proj.apply(history.records)
    assert proj.applied_offset == 1
    assert proj.applied_ts == history.records[-1].ts
    assert proj.get(a) == history.docs[a]
    assert proj.get_many([b, "nope", a]) == [history.docs[b], None, history.docs[a]]
    assert proj.get(new_id("items")) is None
    assert proj.count("items") == 1 and proj.count("people") == 1 and proj.count("nothing") == 0
    assert proj.tables() == ["items", "people"]
    assert sorted(proj.iter_documents()) == sorted(history.docs.values())
    assert list(proj.iter_documents("people")) == [history.docs[b]]


def test_empty_projection(proj: Projection) -> None:
    assert proj.applied_offset == -1
    assert proj.applied_ts == 0
    assert proj.tables() == []
    assert list(proj.scan(*proj.index_range("items", "by_n"))) == []
    proj.apply([])
    assert proj.applied_offset == -1


def test_multi_write_record_and_system_docs_without_fields(proj: Projection, history: Any) -> None:
    w1 = history.insert_write("items", {"n": 1})
    w2 = history.insert_write("items", {"n": 2})
    memo = Write("_requests", "_requests:s1:7", encode_doc({"result": 1, "ts": 5, "offset": 0}), None)
    history.commit(w1, w2, memo)
    proj.apply(history.records)
    assert [d["n"] for d in docs_in(proj, "items", "by_n")] == [1, 2]
    assert decode_doc(proj.get("_requests:s1:7"))["result"] == 1  # type: ignore[arg-type]
    assert proj.count("_requests") == 1


def test_records_without_offset_are_rejected(proj: Projection) -> None:
    with pytest.raises(ValueError):
        proj.apply([Record(writes=[])])


# --- scans and ranges ----------------------------------------------------------------

def test_by_creation_time_and_by_id(proj: Projection, history: Any) -> None:
    ids = fill(history, proj)
    by_ct = docs_in(proj, "items", "by_creation_time")
    assert [d["_id"] for d in by_ct] == ids
    assert [d["_id"] for d in docs_in(proj, "items", "by_creation_time", reverse=True)] == ids[::-1]
    lo, hi = proj.index_range("items", "by_id")
    scanned = list(proj.scan(lo, hi))
    assert [doc_id for _k, doc_id in scanned] == sorted(ids)
    assert [k for k, _id in scanned] == [proj.doc_key(i) for i in sorted(ids)]
    assert proj.doc_key(ids[0]) == proj.doc_key(ids[0], table="items")
    assert list(proj.scan(*proj.index_range("items", "by_id", [ids[3]]))) == [(proj.doc_key(ids[3]), ids[3])]


def _expected(docs: list[dict[str, Any]], pred: Callable[[dict[str, Any]], bool],
              key: Callable[[dict[str, Any]], tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted((key(d) + (d["_creationTime"], d["_id"]) for d in docs if pred(d)))


@pytest.mark.parametrize("reverse", [False, True])
def test_single_field_ranges(proj: Projection, history: Any, reverse: bool) -> None:
    fill(history, proj)
    docs = [decode_doc(r) for r in history.docs.values()]
    cases = [
        (None, None, lambda n: True),
        ((2, True), None, lambda n: n >= 2),
        ((2, False), None, lambda n: n > 2),
        (None, (4, True), lambda n: n <= 4),
        (None, (4, False), lambda n: n < 4),
        ((2, False), (4, True), lambda n: 2 < n <= 4),
        ((2, True), (4, False), lambda n: 2 <= n < 4),
        ((3, True), (3, True), lambda n: n == 3),
        ((3, False), (3, True), lambda n: False),
        ((5, False), None, lambda n: False),
        ((0, True), (100, False), lambda n: True),
    ]
    for lower, upper, pred in cases:
        found = docs_in(proj, "items", "by_n", [], lower, upper, reverse)
        got = [(d["n"], d["_creationTime"], d["_id"]) for d in found]
        want = _expected(docs, lambda d: pred(d["n"]), lambda d: (d["n"],))
        assert got == (want[::-1] if reverse else want), (lower, upper)


@pytest.mark.parametrize("reverse", [False, True])
def test_eq_plus_range(proj: Projection, history: Any, reverse: bool) -> None:
    fill(history, proj)
    docs = [decode_doc(r) for r in history.docs.values()]
    cases = [
        (["b"], None, None, lambda d: d["tag"] == "b"),
        (["b"], (2, False), None, lambda d: d["tag"] == "b" and d["n"] > 2),
        (["b"], None, (2, False), lambda d: d["tag"] == "b" and d["n"] < 2),
        (["c"], (1, True), (4, False), lambda d: d["tag"] == "c" and 1 <= d["n"] < 4),
        (["a", 5], None, None, lambda d: d["tag"] == "a" and d["n"] == 5),
        (["zz"], None, None, lambda d: False),
        ([], ("b", True), None, lambda d: d["tag"] >= "b"),
        ([], ("a", False), ("c", False), lambda d: d["tag"] == "b"),
    ]
    for eq, lower, upper, pred in cases:
        got = [(d["tag"], d["n"], d["_creationTime"], d["_id"])
               for d in docs_in(proj, "items", "by_tag_n", eq, lower, upper, reverse)]
        want = _expected(docs, pred, lambda d: (d["tag"], d["n"]))
        assert got == (want[::-1] if reverse else want), (eq, lower, upper)


def test_range_on_creation_time_after_all_fields(proj: Projection, history: Any) -> None:
    ids = fill(history, proj)
    first = decode_doc(history.docs[ids[0]])
    got = docs_in(proj, "items", "by_tag_n", ["a", 3], (first["_creationTime"], False))
    assert got == []
    got = docs_in(proj, "items", "by_tag_n", ["a", 3], (first["_creationTime"], True))
    assert [d["_id"] for d in got] == [ids[0]]
    got = docs_in(proj, "items", "by_creation_time", [], (first["_creationTime"], False))
    assert [d["_id"] for d in got] == ids[1:]
    with pytest.raises(ValueError):
        proj.index_range("items", "by_n", [1, 2.0, "id", "extra"])
    with pytest.raises(KeyError):
        proj.index_range("items", "no_such_index")


def test_mixed_types_and_missing_fields_sort_in_convex_order(proj: Projection, history: Any) -> None:
    values = ["s", 2.5, 1, None, True, b"b", [1], {"k": 1}, -1.0]
    for v in values:
        history.insert("items", n=v)
    missing = history.insert("items", other=1)
    proj.apply(history.records)
    got = docs_in(proj, "items", "by_n")
    assert got[0]["_id"] == missing  # undefined sorts first
    assert [d["n"] for d in got[1:]] == [None, 1, -1.0, 2.5, True, "s", b"b", [1], {"k": 1}]
    floats = docs_in(proj, "items", "by_n", [], (float("-inf"), True), (float("inf"), True))
    assert [d["n"] for d in floats] == [-1.0, 2.5]


def test_dotted_path_index(proj: Projection, history: Any) -> None:
    a = history.insert("items", meta={"rank": 2})
    b = history.insert("items", meta={"rank": 1})
    c = history.insert("items", meta="not an object")
    d = history.insert("items", n=1)
    proj.apply(history.records)
    got = [x["_id"] for x in docs_in(proj, "items", "by_rank")]
    assert got == [c, d, b, a]
    assert [x["_id"] for x in docs_in(proj, "items", "by_rank", [1])] == [b]


def test_scan_is_lazy_and_sees_a_snapshot(proj: Projection, history: Any) -> None:
    ids = fill(history, proj)
    it = proj.scan(*proj.index_range("items", "by_creation_time"))
    first = next(it)
    assert first[1] == ids[0]
    history.insert("items", n=99)
    proj.apply(history.records)
    rest = [doc_id for _k, doc_id in it]
    assert rest == ids[1:]  # the scan started before the new insert
    assert len(list(proj.scan(*proj.index_range("items", "by_creation_time")))) == len(ids) + 1
    assert list(proj.scan(b"b", b"a")) == []


# --- index keys ------------------------------------------------------------------------

def _index_entries(proj: Projection) -> set[bytes]:
    return {k for k, _v in proj.dump_items() if k.startswith(b"i")}


def test_index_keys_cover_exactly_the_stored_entries(proj: Projection, history: Any) -> None:
    fill(history, proj)
    expected = set()
    for raw in history.docs.values():
        doc = decode_doc(raw)
        pairs = proj.index_keys("items", doc)
        assert [name for name, _ in pairs] == ["by_id", "by_creation_time", "by_n", "by_rank", "by_tag_n"]
        for name, key in pairs:
            lo, hi = proj.index_range("items", name)
            assert lo <= key < hi
        expected.update(key for _name, key in pairs)
    assert _index_entries(proj) == expected


def test_update_and_delete_remove_old_index_keys(proj: Projection, history: Any) -> None:
    a = history.insert("items", n=1, tag="x")
    b = history.insert("items", n=2, tag="x")
    proj.apply(history.records)
    old_keys = {k for _n, k in proj.index_keys("items", decode_doc(history.docs[a]))}
    history.update(a, n=10, tag="y")
    proj.apply(history.records)
    assert docs_in(proj, "items", "by_n", [1]) == []
    assert [d["_id"] for d in docs_in(proj, "items", "by_n", [10])] == [a]
    new_keys = {k for _n, k in proj.index_keys("items", decode_doc(history.docs[a]))}
    entries = _index_entries(proj)
    assert new_keys <= entries
    assert not (old_keys - new_keys) & entries
    history.delete(a)
    history.delete(b)
    proj.apply(history.records)
    assert _index_entries(proj) == set()
    assert proj.get(a) is None
    assert proj.count("items") == 0 and proj.tables() == []
    assert all(not k.startswith(b"d") for k, _ in proj.dump_items())


@pytest.mark.parametrize("same_batch", [False, True])
def test_missing_prev_reads_the_stored_document(tmp_path: Path, history: Any, same_batch: bool) -> None:
    """An update/delete whose `prev` is None still removes the old index keys."""
    a = history.insert("items", n=1)
    b = history.insert("items", n=2)
    with Projection(tmp_path / "p", INDEXES) as proj:
        if not same_batch:
            proj.apply(history.records)
        history.update(a, with_prev=False, n=5)
        history.update(a, with_prev=False, n=6)
        history.delete(b, with_prev=False)
        proj.apply(history.records)
        assert [d["n"] for d in docs_in(proj, "items", "by_n")] == [6]
        assert proj.count("items") == 1
        with Projection(tmp_path / "ref", INDEXES) as ref:
            only_a = Record([Write("items", a, history.docs[a], None)], offset=proj.applied_offset, ts=proj.applied_ts)
            ref.apply([only_a])
            assert ref.dump_items() == proj.dump_items()


def test_reapply_is_idempotent(proj: Projection, history: Any) -> None:
    ids = fill(history, proj)
    history.update(ids[0], n=50)
    history.delete(ids[1])
    proj.apply(history.records)
    digest = proj.content_digest()
    offset = proj.applied_offset
    proj.apply(history.records)
    proj.apply(history.records[3:7])
    assert proj.content_digest() == digest
    assert proj.applied_offset == offset
    # a batch that straddles the applied offset applies only the new records
    history.insert("items", n=77)
    proj.apply(history.records[-3:])
    assert proj.applied_offset == offset + 1
    assert [d["n"] for d in docs_in(proj, "items", "by_n", [77])] == [77]


def test_batching_does_not_change_contents(tmp_path: Path, history: Any) -> None:
    ids = [history.insert("items", n=i % 3, tag="t") for i in range(20)]
    for i in ids[::3]:
        history.update(i, n=9, tag="u")
    for i in ids[::4]:
        history.delete(i)
    history.insert("other", x=1)
    with Projection(tmp_path / "one", INDEXES) as one, Projection(tmp_path / "many", INDEXES) as many:
        one.apply(history.records)
        for rec in history.records:
            many.apply([rec])
        assert one.dump_items() == many.dump_items()
        assert one.content_digest() == many.content_digest()


# --- persistence, meta, lifecycle ------------------------------------------------------

def test_applied_offset_persists_across_reopen(tmp_path: Path, history: Any) -> None:
    ids = [history.insert("items", n=i) for i in range(5)]
    proj = Projection(tmp_path / "p", INDEXES)
    proj.apply(history.records)
    digest = proj.content_digest()
    proj.close()
    proj.close()  # idempotent
    with pytest.raises(ProjectionError):
        proj.get(ids[0])
    with Projection(tmp_path / "p") as again:
        assert again.applied_offset == 4
        assert again.applied_ts == history.records[-1].ts
        assert again.indexes == INDEXES
        assert again.count("items") == 5
        assert again.content_digest() == digest
        assert [d["n"] for d in docs_in(again, "items", "by_n")] == [0, 1, 2, 3, 4]


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p"
    Projection(path).close()
    db = Rdict(str(path), Options(raw_mode=True))
    db.put(META_FORMAT, pack_int(99))
    db.close()
    with pytest.raises(ProjectionFormatError) as err:
        Projection(path)
    assert str(path) in str(err.value) and "99" in str(err.value)
    # the directory is released: fixing the marker makes it usable again
    db = Rdict(str(path), Options(raw_mode=True))
    db.put(META_FORMAT, pack_int(1))
    db.close()
    Projection(path).close()


def test_checkpoint(proj: Projection, history: Any, tmp_path: Path) -> None:
    fill(history, proj)
    proj.checkpoint(tmp_path / "cp")
    history.insert("items", n=100)
    proj.apply(history.records)
    with Projection(tmp_path / "cp") as cp:
        assert cp.applied_offset == proj.applied_offset - 1
        cp.apply(history.records)
        assert cp.content_digest() == proj.content_digest()


def test_crash_without_flush_leaves_a_consistent_prefix(tmp_path: Path, history: Any) -> None:
    """WAL is off: a crash may lose unflushed batches, but never half a batch or a stale offset."""
    for i in range(30):
        history.insert("items", n=i)
    path = tmp_path / "p"
    script = textwrap.dedent(f"""
        import os, pickle, sys
        sys.path.insert(0, {str(ROOT)!r})
        from projections.store import Projection
        records = pickle.loads(open({str(tmp_path / 'records.pkl')!r}, 'rb').read())
        p = Projection({str(path)!r}, {INDEXES!r})
        p.apply(records[:10])
        p.flush()
        p.apply(records[10:20])
        p.apply(records[20:])
        os._exit(0)
    """)
    import pickle
    (tmp_path / "records.pkl").write_bytes(pickle.dumps(history.records))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with Projection(path, INDEXES) as crashed:
        offset = crashed.applied_offset
        assert offset in (9, 19, 29)
        with Projection(tmp_path / "ref", INDEXES) as ref:
            ref.apply(history.records[:offset + 1])
            assert crashed.dump_items() == ref.dump_items()
        crashed.apply(history.records)  # replaying the log repairs it
        assert crashed.count("items") == 30


# --- index catalog ---------------------------------------------------------------------

def test_set_indexes_backfills_and_drops(tmp_path: Path, history: Any) -> None:
    with Projection(tmp_path / "scratch") as scratch:
        fill(history, scratch)  # builds the history
    with Projection(tmp_path / "grow") as grow:
        grow.apply(history.records)
        assert grow.indexes == {}
        grow.set_indexes(INDEXES)
        assert grow.indexes == INDEXES
        with Projection(tmp_path / "ref", INDEXES) as ref:
            ref.apply(history.records)
            assert grow.dump_items() == ref.dump_items()
        assert [d["n"] for d in docs_in(grow, "items", "by_n", [3])] == [3, 3, 3]
        smaller = {"items": {"by_tag_n": ["tag", "n"], "by_n": ["tag"]}}  # by_n redefined, by_rank dropped
        grow.set_indexes(smaller)
        with Projection(tmp_path / "ref2", smaller) as ref2:
            ref2.apply(history.records)
            assert grow.dump_items() == ref2.dump_items()
        grow.set_indexes({})
        with Projection(tmp_path / "ref3") as ref3:
            ref3.apply(history.records)
            assert grow.dump_items() == ref3.dump_items()


def test_reopen_with_different_indexes_installs_them(tmp_path: Path, history: Any) -> None:
    history.insert("items", n=1)
    with Projection(tmp_path / "p") as p:
        p.apply(history.records)
    with Projection(tmp_path / "p", INDEXES) as p:
        assert p.indexes == INDEXES
        assert [d["n"] for d in docs_in(p, "items", "by_n")] == [1]
    with Projection(tmp_path / "p") as p:  # None keeps the stored catalog
        assert p.indexes == INDEXES


def test_invalid_catalogs_are_rejected(tmp_path: Path) -> None:
    with Projection(tmp_path / "p") as p:
        for bad in [{"t": {"by_id": ["x"]}}, {"t": {"_x": ["a"]}}, {"t": {"i": "abc"}}, {"t": {"i": ["a", "a"]}},
                    {"t": {"i": [""]}}, {"": {"i": ["a"]}}]:
            with pytest.raises(IndexCatalogError):
                p.set_indexes(bad)  # type: ignore[arg-type]
        assert p.indexes == {}


def test_index_keys_for_unindexed_table(proj: Projection) -> None:
    doc = {"_id": new_id("loose"), "_creationTime": 5.0, "x": 1}
    pairs = proj.index_keys("loose", doc)
    assert [n for n, _ in pairs] == ["by_id", "by_creation_time"]
    prefix = proj.index_prefix("loose", "by_creation_time")
    assert pairs[1][1] == prefix + encode_value_key(5.0) + encode_value_key(doc["_id"])
    assert proj.index_fields("items", "by_tag_n") == ["tag", "n", "_creationTime", "_id"]


def test_updates_that_look_equal_but_encode_differently(proj: Projection, history: Any) -> None:
    """-0.0 == 0.0 and [1] == [1.0] in Python, but they are distinct index keys."""
    a = history.insert("items", n=0.0)
    b = history.insert("items", n=[1])
    proj.apply(history.records)
    history.update(a, n=-0.0)
    history.update(b, n=[1.0])
    proj.apply(history.records)
    with Projection(proj.path + "-ref", INDEXES) as ref:
        ref.apply([Record([Write("items", i, history.docs[i], None) for i in (a, b)], offset=proj.applied_offset,
                          ts=proj.applied_ts)])
        assert ref.dump_items() == proj.dump_items()
    assert [math.copysign(1, d["n"]) for d in docs_in(proj, "items", "by_n", [-0.0])] == [-1.0]


def test_update_that_changes_creation_time(proj: Projection, history: Any) -> None:
    a = history.insert("items", n=1)
    b = history.insert("items", n=1)
    proj.apply(history.records)
    prev = history.docs[a]
    raw = encode_doc({**decode_doc(prev), "_creationTime": 1.0})
    history.docs[a] = raw
    history.commit(Write("items", a, raw, prev))
    proj.apply(history.records)
    assert [d["_id"] for d in docs_in(proj, "items", "by_creation_time")] == [a, b]
    assert [d["_id"] for d in docs_in(proj, "items", "by_n", [1])] == [a, b]
    assert len(_index_entries(proj)) == 2 * 5


def test_a_bad_record_fails_the_whole_batch(proj: Projection, history: Any) -> None:
    history.insert("items", n=1)
    proj.apply(history.records)
    before = proj.dump_items()
    history.insert("items", n=2)
    bad_id = new_id("items")
    bad = Write("items", bad_id, b'{"_id":"%s","_creationTime":1.0,"n":18446744073709551615}' % bad_id.encode(), None)
    history.commit(bad)
    with pytest.raises(ProjectionError, match=f"record 2 \\(items {bad_id}\\)"):
        proj.apply(history.records)
    assert proj.applied_offset == 0
    assert proj.dump_items() == before


def _flat(records: list[Record]) -> list[tuple]:
    return [(r.offset, w.table, w.id.encode(), w.doc, w.prev) for r in records for w in r.writes]


def test_apply_writes_is_apply_without_records(tmp_path: Path, history: Any) -> None:
    ids = [history.insert("items", n=i % 4, tag="t", meta={"rank": i}) for i in range(30)]
    for i in ids[::3]:
        history.update(i, n=9, tag="u")
    for i in ids[1::4]:
        history.update(i, with_prev=False, n=7)
    for i in ids[::5]:
        history.delete(i, with_prev=i != ids[5])
    history.commit()  # a record without writes
    history.commit(history.insert_write("other", {"x": 1}), history.update_write(ids[2], {"n": 1}))
    recs = history.records
    with Projection(tmp_path / "a", INDEXES) as a, Projection(tmp_path / "b", INDEXES) as b:
        a.apply(recs)
        for i in range(0, len(recs), 7):
            chunk = recs[i:i + 7]
            b.apply_writes(_flat(chunk), chunk[-1].offset, chunk[-1].ts)
        assert (b.applied_offset, b.applied_ts) == (a.applied_offset, a.applied_ts) == (recs[-1].offset, recs[-1].ts)
        assert a.dump_items() == b.dump_items()
        before = b.dump_items()
        b.apply_writes(_flat(recs[-10:]), recs[-1].offset, recs[-1].ts)  # all applied already
        b.apply_writes([], recs[-1].offset, recs[-1].ts)
        assert b.dump_items() == before and b.applied_offset == recs[-1].offset
        # a batch straddling the applied offset applies only the new records
        history.insert("items", n=77)
        b.apply_writes(_flat(history.records[-3:]), len(history.records) - 1, history.records[-1].ts)
        assert b.applied_offset == len(history.records) - 1
        assert [d["n"] for d in docs_in(b, "items", "by_n", [77])] == [77]


def test_apply_writes_names_the_bad_record(proj: Projection, history: Any) -> None:
    history.insert("items", n=1)
    proj.apply(history.records)
    before = proj.dump_items()
    history.insert("items", n=2)
    bad_id = new_id("items")
    history.commit(Write("items", bad_id, b'{"_id":"%s","_creationTime":1.0,"n":18446744073709551615}' % bad_id.encode()))
    with pytest.raises(ProjectionError, match=f"record 2 \\(items {bad_id}\\)"):
        proj.apply_writes(_flat(history.records[1:]), 2, history.records[-1].ts)
    assert proj.applied_offset == 0
    assert proj.dump_items() == before
