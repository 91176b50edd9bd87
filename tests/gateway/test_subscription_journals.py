"""Shared query executions and journals: a page's remembered end belongs to its subscription."""
from __future__ import annotations

from typing import Any

import orjson

from engine.runtime import Runtime
from gateway.subscriptions import SharedQuery, SubscriptionManager


class Tab:
    """A subscriber that records what it is sent."""

    def __init__(self) -> None:
        self.updates: list[tuple[int, list[float], str | None]] = []

    def deliver(self, updates: list[tuple[int, SharedQuery]], ts: int, frames: Any = None) -> None:
        for qid, shared in updates:
            self.updates.append((qid, ranks(shared), shared.journal))

    def go_off_loop(self) -> None:
        raise AssertionError("not expected")

    def lane_dirty(self, query_id: int) -> None:
        raise AssertionError("not expected")


def ranks(shared: SharedQuery) -> list[float]:
    return [m["rank"] for m in orjson.loads(shared.value_json)["page"]]


FIRST = {"paginationOpts": {"numItems": 2, "cursor": None, "id": 0}}


async def feed(make_runtime) -> tuple[Runtime, SubscriptionManager]:  # type: ignore[no-untyped-def]
    rt = await make_runtime("feed")
    await rt.run_mutation("feed:seed", {"count": 6})
    return rt, SubscriptionManager(rt)


async def test_two_tabs_share_a_first_page_and_its_end(make_runtime) -> None:
    rt, manager = await feed(make_runtime)
    a, b = Tab(), Tab()
    qa = manager.subscribe(a, 1, "feed:list", FIRST, None)
    qb = manager.subscribe(b, 1, "feed:list", FIRST, None)
    assert qa is qb and ranks(qa) == [60, 50] and qa.journal is not None
    await rt.run_mutation("feed:send", {"body": "new", "rank": 70.0})
    assert a.updates == b.updates == [(1, [70, 60, 50], qa.journal)]  # grew in place, for both tabs


async def test_a_new_first_page_does_not_join_a_grown_one(make_runtime) -> None:
    rt, manager = await feed(make_runtime)
    a, c = Tab(), Tab()
    qa = manager.subscribe(a, 1, "feed:list", FIRST, None)
    await rt.run_mutation("feed:send", {"body": "new", "rank": 70.0})
    qc = manager.subscribe(c, 1, "feed:list", FIRST, None)  # a tab opened now: numItems decides its end
    assert qc is not qa and ranks(qa) == [70, 60, 50] and ranks(qc) == [70, 60]
    assert manager.query_count == 2
    # a reconnecting client sends its journal back on Add: it joins the page that ends where its did
    d = Tab()
    assert manager.subscribe(d, 1, "feed:list", FIRST, None, qa.journal) is qa
    # and after a restart (nothing live) the journal alone restores the page's end
    manager.unsubscribe(a, qa, 1)
    manager.unsubscribe(d, qa, 1)
    e = Tab()
    qe = manager.subscribe(e, 1, "feed:list", FIRST, None, qa.journal)
    assert qe is not qa and ranks(qe) == [70, 60, 50] and qe.journal == qa.journal


async def test_identical_fresh_pages_share_again(make_runtime) -> None:
    _rt, manager = await feed(make_runtime)
    a, b = Tab(), Tab()
    qa = manager.subscribe(a, 1, "feed:list", FIRST, None)
    manager.unsubscribe(a, qa, 1)
    qa = manager.subscribe(a, 1, "feed:list", FIRST, None)
    qb = manager.subscribe(b, 7, "feed:list", FIRST, None, qa.journal)  # Add with the journal it was sent
    assert qa is qb and manager.query_count == 1
    fresh = manager.subscribe(Tab(), 1, "feed:list", FIRST, None)  # same end as the live one: shared
    assert fresh is qa and manager.query_count == 1
