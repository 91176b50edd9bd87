"""Reactive pagination in the engine: journals keep a page's end, split advice, maximumRowsRead."""
from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from engine.runtime import QueryResult, Runtime


def page(rt: Runtime, opts: dict[str, Any], journal: str | None = None, path: str = "feed:list",
         **args: Any) -> QueryResult:
    result = rt.evaluate_query(path, {"paginationOpts": opts, **args}, journal=journal)
    assert result.error is None, result.error
    return result


def ranks(result: QueryResult) -> list[float]:
    return [m["rank"] for m in result.value["page"]]


async def seeded(make_runtime, count: int = 9) -> tuple[Runtime, list[str]]:  # type: ignore[no-untyped-def]
    rt = await make_runtime("feed")
    ids = (await rt.run_mutation("feed:seed", {"count": count})).value
    return rt, ids


async def test_first_page_leaves_its_end_as_journal(make_runtime) -> None:
    rt, _ = await seeded(make_runtime)
    first = page(rt, {"numItems": 3, "cursor": None})
    assert ranks(first) == [90, 80, 70]
    assert first.value["isDone"] is False
    assert first.journal == first.value["continueCursor"]
    assert first.value["splitCursor"] is None and first.value["pageStatus"] is None
    # the same run again with its journal is the same result and the same journal (Convex's invariant)
    again = page(rt, {"numItems": 3, "cursor": None}, first.journal)
    assert again.value == first.value and again.journal == first.journal


async def test_journal_page_grows_and_shrinks_in_place(make_runtime) -> None:
    rt, ids = await seeded(make_runtime)
    first = page(rt, {"numItems": 3, "cursor": None})
    second = page(rt, {"numItems": 3, "cursor": first.value["continueCursor"]})
    assert ranks(second) == [60, 50, 40]
    await rt.run_mutation("feed:send", {"body": "top", "rank": 100.0})          # insert at the top
    await rt.run_mutation("feed:send", {"body": "mid", "rank": 65.0})           # into page 2
    grown1 = page(rt, {"numItems": 3, "cursor": None}, first.journal)
    grown2 = page(rt, {"numItems": 3, "cursor": first.value["continueCursor"]}, second.journal)
    assert ranks(grown1) == [100, 90, 80, 70] and ranks(grown2) == [65, 60, 50, 40]
    assert grown1.value["continueCursor"] == first.value["continueCursor"]  # the end did not move
    # without a journal the page would have slid (the bug this fixes): row 70 lost at the boundary
    assert ranks(page(rt, {"numItems": 3, "cursor": None})) == [100, 90, 80]
    await rt.run_mutation("feed:remove", {"id": ids[5]})  # rank 60, inside page 2
    shrunk2 = page(rt, {"numItems": 3, "cursor": first.value["continueCursor"]}, second.journal)
    assert ranks(shrunk2) == [65, 50, 40]
    await rt.run_mutation("feed:move", {"id": ids[4], "rank": 85.0})  # 50 moves from page 2 to page 1
    moved1 = page(rt, {"numItems": 3, "cursor": None}, first.journal)
    moved2 = page(rt, {"numItems": 3, "cursor": first.value["continueCursor"]}, second.journal)
    assert ranks(moved1) == [100, 90, 85, 80, 70] and ranks(moved2) == [65, 40]


async def test_last_page_journal_takes_rows_appended_after_it(make_runtime) -> None:
    rt, _ = await seeded(make_runtime, 4)
    first = page(rt, {"numItems": 10, "cursor": None})
    assert first.value["isDone"] is True and ranks(first) == [40, 30, 20, 10]
    await rt.run_mutation("feed:send", {"body": "old", "rank": 1.0})
    again = page(rt, {"numItems": 10, "cursor": None}, first.journal)
    assert ranks(again) == [40, 30, 20, 10, 1] and again.value["isDone"] is True


async def test_grown_page_recommends_a_split_that_covers_it_exactly(make_runtime) -> None:
    rt, _ = await seeded(make_runtime)
    first = page(rt, {"numItems": 2, "cursor": None})
    for r in (91.0, 92.0, 93.0):
        await rt.run_mutation("feed:send", {"body": "new", "rank": r})
    grown = page(rt, {"numItems": 2, "cursor": None}, first.journal)
    assert ranks(grown) == [93, 92, 91, 90, 80]
    assert grown.value["pageStatus"] == "SplitRecommended" and grown.value["splitCursor"]
    split = grown.value["splitCursor"]
    # what usePaginatedQuery does: (cursor, splitCursor] and (splitCursor, continueCursor]
    a = page(rt, {"numItems": 2, "cursor": None, "endCursor": split})
    b = page(rt, {"numItems": 2, "cursor": split, "endCursor": grown.value["continueCursor"]})
    assert ranks(a) + ranks(b) == ranks(grown)
    assert ranks(a) == [93, 92]
    assert a.journal == split and b.journal == grown.value["continueCursor"]


async def test_maximum_rows_read_bounds_a_filtered_page(make_runtime) -> None:
    rt = await make_runtime("feed")
    await rt.run_mutation("feed:seed", {"count": 8, "author": "bob"})
    await rt.run_mutation("feed:send", {"body": "rare", "rank": 5.0, "author": "ann"})
    opts = {"numItems": 1, "cursor": None, "maximumRowsRead": 3}
    short = page(rt, opts, path="feed:by_author", author="ann")
    assert short.value["page"] == [] and short.value["isDone"] is False  # read 3 rows, none matched
    assert short.read_set.ranges  # what it read is watched
    cursor, seen, pages = None, [], 0
    while True:
        result = page(rt, {**opts, "cursor": cursor}, path="feed:by_author", author="ann")
        seen += ranks(result)
        cursor, pages = result.value["continueCursor"], pages + 1
        if result.value["isDone"]:
            break
    assert seen == [5.0] and pages == 4  # 3 + 3 + 3 rows read (the last page ends at its match), then the end


async def test_pinned_page_over_maximum_rows_read_requires_a_split(make_runtime) -> None:
    rt, _ = await seeded(make_runtime)
    whole = page(rt, {"numItems": 9, "cursor": None})
    opts = {"numItems": 9, "cursor": None, "maximumRowsRead": 4}
    pinned = page(rt, opts, whole.journal)
    assert pinned.value["pageStatus"] == "SplitRequired" and pinned.value["splitCursor"]
    assert pinned.value["continueCursor"] == whole.value["continueCursor"]
    a = page(rt, {**opts, "endCursor": pinned.value["splitCursor"]})
    assert ranks(a) == [90, 80]


async def test_maximum_rows_read_and_num_items_are_checked(make_runtime) -> None:
    rt, _ = await seeded(make_runtime, 1)
    for opts, field in (({"numItems": -1, "cursor": None}, "paginationOpts.numItems"),
                        ({"numItems": 1, "cursor": None, "maximumRowsRead": 0}, "paginationOpts.maximumRowsRead"),
                        ({"numItems": 1, "cursor": None, "maximumRowsRead": 1.5}, "paginationOpts.maximumRowsRead")):
        result = rt.evaluate_query("feed:list", {"paginationOpts": opts})
        assert result.error is not None and field in str(result.error)


async def test_pinned_page_over_the_read_limit_requires_a_split_instead_of_failing(make_runtime) -> None:
    rt, _ = await seeded(make_runtime)
    whole = page(rt, {"numItems": 9, "cursor": None})
    rt.limits = dataclasses.replace(rt.limits, max_reads=6)
    pinned = page(rt, {"numItems": 9, "cursor": None}, whole.journal)
    assert pinned.value["pageStatus"] == "SplitRequired" and len(pinned.value["page"]) == 6
    halves = [page(rt, {"numItems": 9, "cursor": None, "endCursor": pinned.value["splitCursor"]}),
              page(rt, {"numItems": 9, "cursor": pinned.value["splitCursor"], "endCursor": whole.journal})]
    assert [r.value["pageStatus"] for r in halves] == [None, None]
    assert ranks(halves[0]) + ranks(halves[1]) == ranks(whole)
    unpinned = rt.evaluate_query("feed:list", {"paginationOpts": {"numItems": 9, "cursor": None}})
    assert unpinned.error is not None and "read more than 6" in str(unpinned.error)  # no fixed end: the limit


async def test_maximum_bytes_read_ends_a_page_or_requires_a_split(make_runtime) -> None:
    rt, _ = await seeded(make_runtime)
    short = page(rt, {"numItems": 5, "cursor": None, "maximumBytesRead": 1})
    assert ranks(short) == [90] and short.value["isDone"] is False  # the first row already holds > 1 byte
    whole = page(rt, {"numItems": 9, "cursor": None})
    pinned = page(rt, {"numItems": 9, "cursor": None, "maximumBytesRead": 1}, whole.journal)
    assert pinned.value["pageStatus"] == "SplitRequired" and pinned.value["splitCursor"]
    bad = rt.evaluate_query("feed:list", {"paginationOpts": {"numItems": 1, "cursor": None, "maximumBytesRead": -5}})
    assert bad.error is not None and "paginationOpts.maximumBytesRead" in str(bad.error)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_changes_never_lose_or_repeat_a_row(make_runtime, seed: int) -> None:
    """A client's loaded pages, re-run with their journals (and split as usePaginatedQuery does) after
    each random insert/delete/move, always show exactly the rows at or above the last page's end."""
    rng = random.Random(seed)
    rt = await make_runtime("feed")
    for _ in range(12):
        await rt.run_mutation("feed:send", {"body": "seed", "rank": rng.uniform(0, 100)})
    pages: list[dict[str, Any]] = []  # {"opts": paginationOpts, "journal": str | None}
    for _ in range(3):
        cursor = pages[-1]["result"]["continueCursor"] if pages else None
        opts = {"numItems": 3, "cursor": cursor}
        result = page(rt, opts)
        pages.append({"opts": opts, "journal": result.journal, "result": result.value})
    boundary = pages[-1]["result"]["page"][-1]["rank"]
    splits = 0
    for _step in range(40):
        rows = rt.run_query("feed:all", {}).value
        op = rng.choices(["insert", "delete", "move"], weights=[3, 1, 2])[0]
        if op == "insert" or not rows:
            await rt.run_mutation("feed:send", {"body": "new", "rank": rng.uniform(0, 110)})
        elif op == "delete":
            await rt.run_mutation("feed:remove", {"id": rng.choice(rows)["_id"]})
        else:
            await rt.run_mutation("feed:move", {"id": rng.choice(rows)["_id"], "rank": rng.uniform(0, 110)})
        shown: list[dict[str, Any]] = []
        i = 0
        while i < len(pages):
            p = pages[i]
            result = page(rt, p["opts"], p["journal"])
            assert result.journal == p["journal"]  # a page's end never moves
            value = result.value
            if value["pageStatus"] is not None:  # the client splits it: (cursor, split] + (split, end]
                splits += 1
                first = {**p["opts"], "endCursor": value["splitCursor"]}
                second = {**p["opts"], "cursor": value["splitCursor"], "endCursor": value["continueCursor"]}
                pages[i:i + 1] = [{"opts": o, "journal": page(rt, o).journal} for o in (first, second)]
                continue
            shown += value["page"]
            i += 1
        truth = rt.run_query("feed:all", {}).value
        expected = [m["_id"] for m in truth if m["rank"] >= boundary]
        assert [m["_id"] for m in shown] == expected
    assert len(pages) == 3 + splits and splits > 0  # (these seeds grow some page past twice its size)
