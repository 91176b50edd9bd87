"""Full-text search queries: relevance, prefixes, filters, consistency with the snapshot and the overlay."""
from __future__ import annotations

import pytest

from engine.errors import EngineError
from engine.schema import define_table
from engine.validators import v


async def seed(rt, items):  # type: ignore[no-untyped-def]
    return (await rt.run_mutation("messages:send_many", {"items": items})).value


async def test_relevance_order_and_prefix(make_runtime) -> None:
    rt = await make_runtime("search")
    await seed(rt, [
        {"body": "hello world", "channel": "a"},
        {"body": "hello hello hello there", "channel": "a"},
        {"body": "nothing to see", "channel": "a"},
        {"body": "a wonderful world", "channel": "b"},
    ])
    rt.projection.flush_search()
    # Two matching terms beat one; more occurrences of a term beat fewer.
    assert rt.run_query("messages:search", {"text": "hello world"}).value[0] == "hello world"
    assert rt.run_query("messages:search", {"text": "hello"}).value == ["hello hello hello there", "hello world"]
    # The last term matches as a prefix: "wor" finds "world", "wonderful" does not match "wor".
    assert sorted(rt.run_query("messages:search", {"text": "wor"}).value) == ["a wonderful world", "hello world"]
    assert rt.run_query("messages:search", {"text": "wonder"}).value == ["a wonderful world"]
    # Earlier terms match whole words only.
    assert rt.run_query("messages:search", {"text": "wor nothing"}).value == ["nothing to see"]
    assert rt.run_query("messages:search", {"text": ""}).value == []


async def test_filter_fields(make_runtime) -> None:
    rt = await make_runtime("search")
    await seed(rt, [{"body": "deploy today", "channel": c} for c in ("ops", "dev", "ops")])
    assert rt.run_query("messages:search", {"text": "deploy", "channel": "ops"}).value == ["deploy today"] * 2
    assert rt.run_query("messages:search", {"text": "deploy", "channel": "dev"}).value == ["deploy today"]
    assert rt.run_query("messages:search", {"text": "deploy", "channel": "none"}).value == []


async def test_sees_writes_not_yet_committed_to_the_index(make_runtime) -> None:
    rt = await make_runtime("search")
    ids = await seed(rt, [{"body": "alpha beta", "channel": "a"}])
    rt.projection.flush_search()
    # Written a moment ago: pending in the search index, found (and edits/deletes honoured) at once.
    await rt.run_mutation("messages:send", {"body": "alpha gamma", "channel": "a"})
    await rt.run_mutation("messages:edit", {"id": ids[0], "body": "delta"})
    assert rt.run_query("messages:search", {"text": "alpha"}).value == ["alpha gamma"]
    assert rt.run_query("messages:search", {"text": "delta"}).value == ["delta"]
    await rt.run_mutation("messages:remove", {"id": ids[0]})
    assert rt.run_query("messages:search", {"text": "delta"}).value == []
    rt.projection.flush_search()
    assert rt.run_query("messages:search", {"text": "alpha delta"}).value == ["alpha gamma"]


async def test_same_mutation_sees_its_own_writes(make_runtime) -> None:
    rt = await make_runtime("search")
    ids = await seed(rt, [{"body": "old words", "channel": "c"}])
    rt.projection.flush_search()
    found = (await rt.run_mutation("messages:send_and_search", {"body": "fresh words", "text": "words"})).value
    assert sorted(found) == ["fresh words", "old words"]
    found = (await rt.run_mutation("messages:edit_and_search", {"id": ids[0], "body": "gone", "text": "words"})).value
    assert found == ["fresh words"]


async def test_snapshot_reader_is_exact(make_runtime) -> None:
    rt = await make_runtime("search")
    ids = await seed(rt, [{"body": "red apple", "channel": "a"}, {"body": "green apple", "channel": "a"}])
    view = rt.snapshots.open(rt.projection)
    try:
        await rt.run_mutation("messages:edit", {"id": ids[0], "body": "blue sky"})
        await rt.run_mutation("messages:send", {"body": "yellow apple", "channel": "a"})
        rt.projection.flush_search()  # the index is now newer than the view
        past = (await rt.query_at(view, "messages:search", {"text": "apple"})).value
        assert sorted(past) == ["green apple", "red apple"]
        assert sorted(rt.run_query("messages:search", {"text": "apple"}).value) == ["green apple", "yellow apple"]
    finally:
        view.close()


async def test_take_is_bounded_and_paginate(make_runtime) -> None:
    rt = await make_runtime("search")
    await seed(rt, [{"body": f"word{i} common", "channel": "a"} for i in range(30)])
    rt.projection.flush_search()
    assert len(rt.run_query("messages:search", {"text": "common", "n": 5000}).value) == 30
    seen = []
    cursor = None
    while True:
        page = rt.run_query("messages:search_page", {"text": "common", "paginationOpts": {"numItems": 7, "cursor": cursor}}).value
        seen += [d["body"] for d in page["page"]]
        cursor = page["continueCursor"]
        if page["isDone"]:
            break
    assert sorted(seen) == sorted(f"word{i} common" for i in range(30))


@pytest.mark.parametrize("mode, message", [
    ("unknown_index", "has no search index 'nope'"),
    ("wrong_field", "searches 'body', not 'channel'"),
    ("bad_filter", "cannot filter on 'author'"),
    ("not_text", "search text must be a string"),
])
async def test_bad_input(make_runtime, mode, message) -> None:  # type: ignore[no-untyped-def]
    rt = await make_runtime("search")
    with pytest.raises(EngineError, match=message):
        rt.run_query("messages:bad", {"mode": mode})


def test_schema_refuses_a_non_string_search_field() -> None:
    with pytest.raises(ValueError, match=r"'n' is declared v.float64\(\), not a string"):
        define_table({"n": v.number()}).search_index("s", search_field="n")
    with pytest.raises(ValueError, match="filter_fields"):
        define_table({"t": v.string()}).search_index("s", search_field="t", filter_fields=["t"])


async def test_filter_value_starting_with_nul(make_runtime) -> None:
    rt = await make_runtime("search")
    # A filter value starting with NUL is indexed through the encoded form (not the stored JSON as is).
    await seed(rt, [{"body": "shared words", "channel": "\x00odd"}, {"body": "shared words", "channel": "plain"}])
    assert rt.run_query("messages:search", {"text": "shared", "channel": "\x00odd"}).value == ["shared words"]
    rt.projection.flush_search()
    assert rt.run_query("messages:search", {"text": "shared", "channel": "\x00odd"}).value == ["shared words"]
    assert rt.run_query("messages:search", {"text": "shared", "channel": "plain"}).value == ["shared words"]
