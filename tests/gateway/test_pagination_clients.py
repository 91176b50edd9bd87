"""Live pagination with the official npm client: several loaded pages, two tabs, rows moving around.

tests/js/paginated_feed.mjs drives `ConvexClient.onPaginatedUpdate_experimental`
(the official PaginatedQueryClient: one subscription per page, splits on
`splitCursor`) in two clients at once; after every change it waits until both
show exactly the first N rows of the whole feed, in order, none twice.
N follows from the rule that each loaded page keeps its end (its journal): the
loaded rows are those at or above the last page's end row.
"""
from __future__ import annotations

from typing import Any

import pytest

from tests.gateway.test_official_js_client import LiveScript, run_ok, server_value


def test_pages_keep_their_ends_in_two_tabs(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("feed")
    ids = server_value(server.url, "mutation", "feed:seed", {"count": 12})  # ranks 10..120
    by_rank = {float((i + 1) * 10): doc_id for i, doc_id in enumerate(ids)}
    ranks = {doc_id: rank for rank, doc_id in by_rank.items()}
    boundary = 40.0  # three pages of 3, newest first: 120..100 | 90..70 | 60..40

    def loaded() -> int:
        return sum(1 for r in ranks.values() if r >= boundary)

    steps: list[dict[str, Any]] = [
        {"op": "loadMore", "numItems": 3}, {"op": "loadMore", "numItems": 3},
        {"op": "check", "label": "three pages", "length": 9}]

    def mutate(path: str, args: dict[str, Any], label: str) -> None:
        steps.append({"op": "mutation", "path": path, "args": args})
        steps.append({"op": "check", "label": label, "length": loaded()})

    ranks["new-top"] = 130.0
    mutate("feed:send", {"body": "top", "rank": 130.0}, "insert at top")
    del ranks[by_rank[80.0]]
    mutate("feed:remove", {"id": by_rank[80.0]}, "delete inside page 2")
    ranks[by_rank[40.0]] = 125.0
    mutate("feed:move", {"id": by_rank[40.0], "rank": 125.0}, "page 3's last row moves to page 1")
    ranks[by_rank[60.0]] = 5.0
    mutate("feed:move", {"id": by_rank[60.0], "rank": 5.0}, "a loaded row moves below the loaded pages")
    ranks[by_rank[30.0]] = 95.0
    mutate("feed:move", {"id": by_rank[30.0], "rank": 95.0}, "an unloaded row moves into page 2")
    for r in (131.0, 132.0, 133.0, 134.0):
        ranks[f"new-{r}"] = r
        steps.append({"op": "mutation", "path": "feed:send", "args": {"body": "burst", "rank": r}})
    steps.append({"op": "check", "label": "page 1 grew past twice its size", "length": loaded()})
    steps += [{"op": "loadMore", "numItems": 3}, {"op": "check", "label": "one more page", "length": loaded() + 3}]

    events = run_ok("paginated_feed.mjs", {
        "url": server.url, "query": "feed:list", "truth": "feed:all", "initialNumItems": 3, "tabs": 2,
        "steps": steps, "timeoutMs": 60000}, timeout=90)
    assert events[-1] == {"event": "done", "duplicatesSeen": 0}
    states = {(e["label"], e["tab"]): e for e in events if e["event"] == "state"}
    assert len(states) == 2 * 8
    for tab in (0, 1):
        assert len(states[("three pages", tab)]["ids"]) == 9
        assert states[("insert at top", tab)]["ids"][0] not in ids  # the new row leads page 1
        assert len(states[("delete inside page 2", tab)]["ids"]) == 9
        assert by_rank[80.0] not in states[("delete inside page 2", tab)]["ids"]
        moved = states[("page 3's last row moves to page 1", tab)]["ids"]
        assert moved.index(by_rank[40.0]) == 1 and len(moved) == len(set(moved)) == 9
        assert by_rank[60.0] not in states[("a loaded row moves below the loaded pages", tab)]["ids"]
        assert by_rank[30.0] in states[("an unloaded row moves into page 2", tab)]["ids"]
        # the client split the grown first page (SplitRecommended) into two subscriptions
        assert states[("page 1 grew past twice its size", tab)]["pages"] == 4
        last = states[("one more page", tab)]
        assert last["ids"] == last["truth"] and last["status"] == "CanLoadMore"


@pytest.mark.soak  # ~12 s (a server restart and the client's reconnect backoff): runs with --soak
def test_pages_keep_their_ends_across_a_server_restart(server_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The client sends each page's journal back on Add after reconnecting: the pages end where they did."""
    server = server_factory("feed")
    server_value(server.url, "mutation", "feed:seed", {"count": 8})  # ranks 10..80
    signals = tmp_path / "signals"
    signals.mkdir()
    script = LiveScript("paginated_feed.mjs", {
        "url": server.url, "query": "feed:list", "truth": "feed:all", "initialNumItems": 2, "tabs": 2,
        "signalDir": str(signals), "timeoutMs": 60000, "steps": [
            {"op": "loadMore", "numItems": 2}, {"op": "check", "label": "two pages", "length": 4},
            {"op": "signal", "name": "restarted"},
            {"op": "check", "label": "after the restart", "length": 6}]})
    try:
        script.wait_for(lambda events: any(e["event"] == "waiting" for e in events), 30, "the pages to load")
        server.kill()
        server.start()  # same port and data directory: same admin key, so the journals still open
        server_value(server.url, "mutation", "feed:send", {"body": "top", "rank": 90.0})
        server_value(server.url, "mutation", "feed:send", {"body": "page 2", "rank": 55.0})
        (signals / "restarted").touch()
        events = script.finish(60)
    finally:
        script.close()
    assert events[-1] == {"event": "done", "duplicatesSeen": 0}
    after = [e for e in events if e["event"] == "state" and e["label"] == "after the restart"]
    assert len(after) == 2 and all(len(e["ids"]) == 6 and e["ids"] == e["truth"] for e in after)


def test_split_required_pages_are_split_by_the_client(server_factory) -> None:  # type: ignore[no-untyped-def]
    """feed:bounded reads at most 4 rows a page: a loaded page that grows past that answers SplitRequired
    (its rows are hidden by the client) until the client has split it into pages that fit."""
    server = server_factory("feed")
    server_value(server.url, "mutation", "feed:seed", {"count": 6})  # ranks 10..60
    steps: list[dict[str, Any]] = [{"op": "loadMore", "numItems": 2},
                                   {"op": "check", "label": "two pages", "length": 4}]
    for rank in (61.0, 62.0, 63.0, 64.0, 65.0):
        steps.append({"op": "mutation", "path": "feed:send", "args": {"body": "burst", "rank": rank}})
    steps.append({"op": "check", "label": "after the burst", "length": 9})
    events = run_ok("paginated_feed.mjs", {
        "url": server.url, "query": "feed:bounded", "truth": "feed:all", "initialNumItems": 2, "tabs": 2,
        "steps": steps, "timeoutMs": 60000}, timeout=90)
    after = [e for e in events if e["event"] == "state" and e["label"] == "after the burst"]
    assert len(after) == 2
    for state in after:
        assert state["ids"] == state["truth"] and state["pages"] >= 3  # page 1 was split (until each part fits)
