"""Read sets are exact: every result-changing write intersects them; writes past a scan's end do not."""
from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.app import App
from engine.committer import CreationClock
from engine.context import Auth, QueryCtx
from engine.db import DatabaseReader, DatabaseWriter, Transaction
from engine.execution import drive
from engine.limits import DEFAULT_LIMITS
from engine.readset import ReadSet
from log.record import Record, Write
from projections.store import Projection

APP = App.load(Path(__file__).parent.parent / "apps" / "kitchen")
SCHEMA = APP.schema
CLOCK = CreationClock()


class World:
    """A projection plus helpers to run kitchen functions synchronously."""

    def __init__(self, path: Path) -> None:
        self.projection = Projection(path, SCHEMA.index_catalog())
        self.offset = 0

    def mutate(self, body) -> object:  # type: ignore[no-untyped-def]
        tx = Transaction(self.projection, SCHEMA, DEFAULT_LIMITS, None, writable=True)
        db = DatabaseWriter(tx, CLOCK)
        result = drive(body(db), "test")
        writes = [Write(t, i, tx.overlay.get(i).doc, prev) for i, (t, prev) in tx.touched.items()]  # type: ignore[union-attr]
        self.projection.apply([Record(writes=writes, offset=self.offset, ts=self.offset + 1)])
        self.offset += 1
        self.last_writes = writes
        return result

    def query(self, path: str, args: dict) -> tuple[object, ReadSet]:  # type: ignore[type-arg]
        tx = Transaction(self.projection, SCHEMA, DEFAULT_LIMITS, None, writable=False)
        fn = APP.function(path)
        value = drive(fn.handler(QueryCtx(DatabaseReader(tx), Auth()), **fn.validate_args(args)), path)
        return value, tx.read_set

    def written_keys(self) -> list[bytes]:
        from values import decode_doc
        keys = []
        for w in self.last_writes:
            keys.append(self.projection.doc_key(w.id))
            for raw in (w.prev, w.doc):
                if raw is not None:
                    keys += [k for _, k in self.projection.index_keys(w.table, decode_doc(raw))]
        return keys


ranks = st.integers(min_value=0, max_value=20).map(float)
ops = st.lists(st.tuples(st.sampled_from(["add", "toggle", "remove", "rerank", "add_other"]), ranks,
                         st.integers(min_value=0, max_value=50)), min_size=1, max_size=25)
queries = st.sampled_from(["ranked", "latest", "items", "open_items", "get", "page"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed_ranks=st.lists(ranks, max_size=12), operations=ops, query=queries,
       lo=ranks, width=st.integers(min_value=0, max_value=10), n=st.integers(min_value=1, max_value=5))
def test_no_missed_invalidation(seed_ranks, operations, query, lo, width, n) -> None:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        w = World(Path(tmp) / "p")
        list_id = w.mutate(lambda db: db.insert("lists", {"name": "a"}))
        other_list = w.mutate(lambda db: db.insert("lists", {"name": "b"}))
        ids = []
        for r in seed_ranks:
            ids.append(w.mutate(lambda db, r=r: db.insert("items", {"list_id": list_id, "text": str(r), "done": False, "rank": r})))
        args = {"ranked": {"list_id": list_id, "lo": lo, "hi": lo + width},
                "latest": {"list_id": list_id, "n": float(n)},
                "items": {"list_id": list_id}, "open_items": {"list_id": list_id},
                "get": {"id": list_id},
                "page": {"list_id": list_id, "paginationOpts": {"numItems": float(n), "cursor": None}}}[query]
        path = f"lists:{query}"
        for op, rank, pick in operations:
            before, read_set = w.query(path, args)
            live = [i for i in ids if w.projection.get(i) is not None]
            target = live[pick % len(live)] if live else None

            async def body(db, op=op, rank=rank, target=target):  # type: ignore[no-untyped-def]
                if op == "add" or target is None:
                    return await db.insert("items", {"list_id": list_id, "text": "n", "done": False, "rank": rank})
                if op == "add_other":
                    return await db.insert("items", {"list_id": other_list, "text": "o", "done": False, "rank": rank})
                if op == "toggle":
                    doc = await db.get(target)
                    await db.patch(target, {"done": not doc["done"]})
                elif op == "remove":
                    await db.delete(target)
                else:
                    await db.patch(target, {"rank": rank})
                return target
            new = w.mutate(body)
            if op in ("add",) or target is None:
                ids.append(new)
            after, _ = w.query(path, args)
            if after != before:
                keys = w.written_keys()
                assert any(read_set.contains(k) for k in keys), (query, op, "result changed but no written key was in the read set")
        w.projection.close()


def test_take_covers_only_walked_keys(tmp_path: Path) -> None:
    w = World(tmp_path / "p")
    list_id = w.mutate(lambda db: db.insert("lists", {"name": "a"}))
    for r in range(10):
        w.mutate(lambda db, r=r: db.insert("items", {"list_id": list_id, "text": str(r), "done": False, "rank": float(r)}))
    value, read_set = w.query("lists:ranked", {"list_id": list_id, "lo": 2.0, "hi": 5.0})
    assert [d["rank"] for d in value] == [2.0, 3.0, 4.0]
    # A write far outside the scanned range never intersects.
    w.mutate(lambda db: db.insert("items", {"list_id": list_id, "text": "x", "done": False, "rank": 9.5}))
    assert not any(read_set.contains(k) for k in w.written_keys())
    # latest(2) in desc order walked only the two newest keys: an older change is outside.
    value, read_set = w.query("lists:latest", {"list_id": list_id, "n": 2.0})
    oldest = w.query("lists:items", {"list_id": list_id})[0][0]
    w.mutate(lambda db: db.patch(oldest["_id"], {"done": True}))
    assert not any(read_set.contains(k) for k in w.written_keys())
    # A point get covers exactly one document.
    _, read_set = w.query("lists:get", {"id": list_id})
    assert len(read_set.ranges) == 1
    w.projection.close()
