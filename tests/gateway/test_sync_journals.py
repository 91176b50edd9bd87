"""Query journals over the sync protocol: sent with each paginated result, taken back on Add, checked.

Speaks the protocol as the official clients do (tests.gateway.test_slow_queries.Client).
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from gateway.replica import ADMIN_KEY_ENV
from tests.gateway.served_node import served_node
from tests.gateway.test_slow_queries import Client, _mutate

FIRST = {"paginationOpts": {"numItems": 2.0, "cursor": None, "id": 0.0}}


def journals(client: Client) -> dict[int, Any]:
    """queryId -> the journal of its latest QueryUpdated / QueryFailed."""
    out: dict[int, Any] = {}
    for transition in client.transitions:
        for mod in transition["modifications"]:
            if mod["type"] in ("QueryUpdated", "QueryFailed"):
                out[mod["queryId"]] = mod["journal"]
    return out


async def add_with_journal(client: Client, query_id: int, args: dict[str, Any], journal: str | None) -> None:
    client.query_set += 1
    await client.send({"type": "ModifyQuerySet", "baseVersion": client.query_set - 1, "newVersion": client.query_set,
                       "modifications": [{"type": "Add", "queryId": query_id, "udfPath": "feed:list",
                                          "args": [args], "journal": journal}]})


def ranks(value: Any) -> list[float]:
    return [m["rank"] for m in value["page"]]


async def test_journal_round_trip_and_tampering(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", app="feed") as (node, url), aiohttp.ClientSession() as http:
        await _mutate(http, url, "feed:seed", {"count": 5})
        a = await Client.open(http, url, "tab-a")
        await a.add((1, "feed:list", FIRST))
        await a.until(lambda v: 1 in v)
        journal = journals(a)[1]
        assert isinstance(journal, str) and journal == a.values[1]["continueCursor"]
        assert ranks(a.values[1]) == [50, 40]
        await _mutate(http, url, "feed:send", {"body": "top", "rank": 60.0})
        await a.until(lambda v: ranks(v[1]) == [60, 50, 40])  # grew in place; same journal
        assert journals(a)[1] == journal
        # a reconnecting tab sends its journal back: its page ends where it did
        b = await Client.open(http, url, "tab-b")
        await add_with_journal(b, 1, FIRST, journal)
        await b.until(lambda v: 1 in v)
        assert ranks(b.values[1]) == [60, 50, 40]
        # a new tab (no journal) gets numItems rows, and a journal of its own
        c = await Client.open(http, url, "tab-c")
        await c.add((1, "feed:list", FIRST))
        await c.until(lambda v: 1 in v)
        assert ranks(c.values[1]) == [60, 50] and journals(c)[1] != journal
        # a tampered journal is refused with Convex's InvalidCursor (the React hook then restarts)
        d = await Client.open(http, url, "tab-d")
        await add_with_journal(d, 1, FIRST, journal[:-2] + ("AA" if journal[-2:] != "AA" else "BB"))
        await d.until(lambda v: 1 in v)
        assert d.values[1][0] == "failed" and d.values[1][1].startswith("InvalidCursor: the query journal")
        # a non-paginated query has no journal
        await a.add((2, "feed:all", {}))
        await a.until(lambda v: 2 in v)
        assert journals(a)[2] is None
        for client in (a, b, c, d):
            await client.ws.close()


async def test_journals_in_a_session_served_off_the_loop(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", app="feed") as (node, url), aiohttp.ClientSession() as http:
        await _mutate(http, url, "feed:seed", {"count": 5})
        a = await Client.open(http, url, "lane-tab")
        await a.add((1, "feed:list", FIRST))
        await a.until(lambda v: 1 in v)
        journal = journals(a)[1]
        (session,) = [s for s in node.sessions if s.queries]
        session.go_off_loop()  # as if one of its queries had proved slow: its lane runs them from now on
        await _mutate(http, url, "feed:send", {"body": "top", "rank": 60.0})
        await a.until(lambda v: ranks(v[1]) == [60, 50, 40])
        assert journals(a)[1] == journal
        await a.ws.close()


async def _query(http: aiohttp.ClientSession, url: str, path: str, args: dict[str, Any]) -> dict[str, Any]:
    async with http.post(url + "/api/query", json={"path": path, "args": args, "format": "json"}) as r:
        return await r.json()  # type: ignore[no-any-return]


async def test_cursors_of_a_replica_open_on_its_committer_only(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async with served_node(tmp_path / "committer", app="feed") as (committer, committer_url), \
            aiohttp.ClientSession() as http:
        monkeypatch.setenv(ADMIN_KEY_ENV, committer.admin.value)
        async with served_node(tmp_path / "replica", app="feed", role="replica", committer_url=committer_url,
                               log_url=str(tmp_path / "committer" / "log")) as (_replica, replica_url), \
                served_node(tmp_path / "other", app="feed") as (_other, other_url):
            await _mutate(http, committer_url, "feed:seed", {"count": 4})
            await _mutate(http, other_url, "feed:seed", {"count": 4})
            first: dict[str, Any] = {}
            for _ in range(100):  # the replica applies the seed shortly after the committer
                first = await _query(http, replica_url, "feed:list", {"paginationOpts": {"numItems": 2, "cursor": None}})
                if first["status"] == "success" and len(first["value"]["page"]) == 2:
                    break
                await asyncio.sleep(0.05)
            cursor = first["value"]["continueCursor"]
            second = await _query(http, committer_url, "feed:list", {"paginationOpts": {"numItems": 2, "cursor": cursor}})
            assert second["status"] == "success" and [m["rank"] for m in second["value"]["page"]] == [20, 10]
            foreign = await _query(http, other_url, "feed:list", {"paginationOpts": {"numItems": 2, "cursor": cursor}})
            assert foreign["status"] == "error" and "InvalidCursor: paginationOpts.cursor" in foreign["errorMessage"]
