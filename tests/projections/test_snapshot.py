"""Read views (`projections.snapshot`): a view at offset S answers exactly as the projection did at S."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from hypothesis import given, settings, strategies as st

from projections.snapshot import SnapshotJournal
from projections.store import Projection

from tests.projections.conftest import History

INDEXES = {"items": {"by_n": ["n"], "by_tag_n": ["tag", "n"]}}
RANGES = [("by_id", [], None, None), ("by_n", [], None, None), ("by_n", [], (2, True), (6, False)),
          ("by_tag_n", ["a"], None, None), ("by_creation_time", [], None, None)]


def _state(reader: Any) -> list[Any]:
    """Everything a query could read: each range both ways, and each listed document."""
    seen = []
    for index, eq, lower, upper in RANGES:
        lo, hi = reader.index_range("items", index, eq, lower, upper)
        for reverse in (False, True):
            pairs = list(reader.scan(lo, hi, reverse))
            seen.append((index, reverse, pairs, [reader.get(doc_id) for _key, doc_id in pairs]))
    return seen


def _random_batch(history: History, rng: random.Random) -> list[Any]:
    writes = []
    live = [d for d in history.docs if d not in {w.id for w in writes}]
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        live = [d for d in history.docs if d not in {w.id for w in writes}]
        if choice < 0.5 or not live:
            writes.append(history.insert_write("items", {"n": rng.randint(0, 8), "tag": rng.choice("ab")}))
        elif choice < 0.8:
            writes.append(history.update_write(rng.choice(live), {"n": rng.randint(0, 8), "tag": rng.choice("ab")}))
        else:
            writes.append(history.delete_write(rng.choice(live)))
    return writes


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), before=st.integers(0, 12), after=st.integers(1, 12))
def test_a_view_reads_the_state_at_its_offset(tmp_path_factory: Any, seed: int, before: int, after: int) -> None:
    rng = random.Random(seed)
    history = History()
    path: Path = tmp_path_factory.mktemp("view")
    live = Projection(path / "live", INDEXES)
    journal = SnapshotJournal()
    try:
        for _ in range(before):
            record = history.commit(*_random_batch(history, rng))
            journal.record([record])
            live.apply([record])
        expected = _state(live)
        view = journal.open(live)
        for _ in range(after):
            record = history.commit(*_random_batch(history, rng))
            journal.record([record])
            live.apply([record])
        assert _state(view) == expected
        assert view.applied_offset == before - 1
        view.close()
    finally:
        live.close()


def test_the_journal_keeps_batches_only_while_a_view_needs_them(tmp_path: Path) -> None:
    history = History()
    live = Projection(tmp_path / "live", INDEXES)
    journal = SnapshotJournal()
    try:
        record = history.commit(history.insert_write("items", {"n": 1, "tag": "a"}))
        journal.record([record])  # no view open: nothing kept
        live.apply([record])
        assert journal.touched_after(-1) == {}
        view = journal.open(live)
        record = history.commit(history.insert_write("items", {"n": 2, "tag": "a"}))
        journal.record([record])
        live.apply([record])
        assert len(journal.touched_after(view.applied_offset)) == 1
        view.close()
        assert journal.touched_after(-1) == {}
    finally:
        live.close()
