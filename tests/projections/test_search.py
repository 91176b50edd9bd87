"""Search indexes are projections of the log: live, rebuilt, reopened, checkpointed and past states agree."""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from engine.db import DatabaseReader, Transaction
from engine.execution import drive
from engine.limits import DEFAULT_LIMITS
from engine.schema import define_schema, define_table
from history.build import build_projection
from projections.checkpoints import copy_projection
from projections.rebuild import rebuild
from projections.search_terms import SearchQuery, SearchSpec, doc_search_keys, query_search_ranges, tokenize
from projections.store import Projection

SCHEMA = define_schema({"messages": define_table().search_index("search_body", search_field="body",
                                                                filter_fields=["channel"])})
CATALOG = SCHEMA.index_catalog()
WORDS = "apple banana cherry delta echo falcon garden harbor island jungle kettle lemon".split()
QUERIES = [("apple", None), ("banana cher", None), ("delta", "a"), ("ech", "b"), ("garden harbor is", None),
           ("kettle lemon", "a"), ("zzz", None)]


def search(projection: Any, text: str, channel: str | None) -> list[str]:
    """What `with_search_index(...).collect()` answers against `projection` (document ids)."""
    tx = Transaction(projection, SCHEMA, DEFAULT_LIMITS, None, writable=False)

    def build(q):  # type: ignore[no-untyped-def]
        q = q.search("body", text)
        return q.eq("channel", channel) if channel else q
    docs = drive(DatabaseReader(tx).query("messages").with_search_index("search_body", build).collect(), "test")
    return [d["_id"] for d in docs]


def answers(projection: Any) -> list[list[str]]:
    return [sorted(search(projection, text, channel)) for text, channel in QUERIES]


def churn(history: Any, n: int, seed: int = 3) -> None:
    rng = random.Random(seed)
    live: list[str] = []
    for _ in range(n):
        op = rng.random()
        body = " ".join(rng.choices(WORDS, k=rng.randint(1, 6)))
        if op < 0.6 or len(live) < 3:
            live.append(history.insert("messages", body=body, channel=rng.choice("ab")))
        elif op < 0.85:
            history.update(rng.choice(live), body=body, channel=rng.choice("ab"))
        else:
            history.delete(live.pop(rng.randrange(len(live))))


def test_tokenizer_matches_tantivy() -> None:
    import tantivy
    analyzer = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).filter(tantivy.Filter.remove_long(40)) \
        .filter(tantivy.Filter.lowercase()).build()
    text = "Hello, WORLD! snake_case x2 café Ünïcode 42 " + "a" * 45
    assert tokenize(text) == analyzer.analyze(text)


def test_read_set_keys_meet_exactly_the_matching_documents() -> None:
    spec = SearchSpec("messages", "search_body", "body", ("channel",))
    ranges = query_search_ranges(spec, SearchQuery.parse("hello wor", [("channel", "a")]))

    def hit(body: str, channel: str) -> bool:
        keys = doc_search_keys(spec, {"body": body, "channel": channel})
        return any(lo <= k < hi for k in keys for lo, hi in ranges)
    assert hit("hello there", "a") and hit("worldly", "a") and hit("wor", "a")
    assert not hit("hello there", "b") and not hit("helloworld", "a") and not hit("say word", "b")
    assert not hit("nothing here", "a")


async def test_live_rebuilt_reopened_and_copied_agree(tmp_path: Path, history: Any, make_log: Any) -> None:
    churn(history, 400)
    live = Projection(tmp_path / "live", CATALOG)
    for i in range(0, len(history.records), 37):  # batches, with the index committing in between or not
        live.apply(history.records[i:i + 37])
        if i % 74 == 0:
            live.flush_search()
    expected = answers(live)
    assert any(expected) and not all(expected)
    live.flush_search()
    assert answers(live) == expected
    rebuilt = await rebuild(make_log(history.records), tmp_path / "rebuilt", CATALOG)
    assert answers(rebuilt) == expected
    rebuilt.close()
    live.close()
    reopened = Projection(tmp_path / "live", CATALOG)  # clean shutdown: reused, not rebuilt
    assert reopened.search_progress()["messages.search_body"]["building"] is None
    assert answers(reopened) == expected
    reopened.checkpoint(tmp_path / "ckpt")
    reopened.close()
    copy_projection(tmp_path / "ckpt", tmp_path / "copy")  # RocksDB files only: the index is rebuilt on open
    copy = Projection(tmp_path / "copy")
    assert copy.indexes == CATALOG
    assert answers(copy) == expected
    copy.close()


async def test_past_state_answers_as_of_its_offset(tmp_path: Path, history: Any, make_log: Any) -> None:
    churn(history, 200)
    middle = len(history.records) // 2
    live = Projection(tmp_path / "live", CATALOG)
    live.apply(history.records[:middle + 1])
    then = answers(live)
    live.apply(history.records[middle + 1:])
    assert answers(live) != then
    past, _info = await build_projection(make_log(history.records), tmp_path / "past", middle, catalog=CATALOG)
    assert answers(past) == then
    past.close()
    live.close()


async def test_crash_leaves_an_index_that_is_rebuilt(tmp_path: Path, history: Any) -> None:
    churn(history, 120)
    live = Projection(tmp_path / "p", CATALOG)
    live.apply(history.records[:60])
    live.flush_search()
    live.apply(history.records[60:])
    expected = answers(live)
    live._search.close()  # as if the process died: the index committed at offset 59 only
    live._search = type(live._search)(str(tmp_path / "unused"), live._search_docs, live.count)
    live.close()
    again = Projection(tmp_path / "p", CATALOG)
    assert again.search_progress()["messages.search_body"]["offset"] == len(history.records) - 1
    assert answers(again) == expected
    again.close()


async def test_adding_an_index_backfills_in_the_background(tmp_path: Path, history: Any) -> None:
    for i in range(3000):
        history.insert("messages", body=f"word{i % 50} common", channel="a")
    p = Projection(tmp_path / "p", {}, background_search_backfill=True)
    p.apply(history.records)
    p.set_indexes(CATALOG)
    messages = []
    deadline = time.monotonic() + 30
    while True:
        try:
            found = search(p, "word7", None)
            break
        except Exception as exc:  # still building: the error names the progress
            messages.append(str(exc))
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert len(found) == 60
    if messages:
        assert "search index messages.search_body is still building" in messages[0]
        assert "of 3,000 documents" in messages[0]
    p.set_indexes({})  # dropping it removes its files
    assert not (tmp_path / "p" / "search" / "messages" / "search_body").exists()
    with pytest.raises(Exception, match="no search index|not installed"):
        search(p, "word7", None)
    p.close()


@pytest.mark.parametrize("flush", [False, True])
def test_filter_values_of_every_type(tmp_path: Path, history: Any, flush: bool) -> None:
    values = [None, 5, 5.0, True, "x", "\x00x", [1], {"a": 1}]
    ids = [history.insert("messages", body="same text", channel=v) for v in values]
    missing = history.insert("messages", body="same text")
    history.insert("messages", body=7, channel="x")  # a non-string search field is never found
    p = Projection(tmp_path / "p", CATALOG)
    p.apply(history.records)
    if flush:
        p.flush_search()  # from the committed index rather than the pending re-check

    def found(value: Any) -> list[str]:
        tx = Transaction(p, SCHEMA, DEFAULT_LIMITS, None, writable=False)
        q = DatabaseReader(tx).query("messages").with_search_index(
            "search_body", lambda s: s.search("body", "same").eq("channel", value))
        return [d["_id"] for d in drive(q.collect(), "test")]
    for doc_id, value in zip(ids, values):
        assert found(value) == [doc_id], value
    assert sorted(search(p, "same", None)) == sorted(ids + [missing])
    p.close()
