"""History is not public: `/api/query_at_ts` serves old states only with the admin key; time travel is bounded.

Without the admin key, `/api/query_at_ts` serves a state only if it was live
at some moment of the last `ServerConfig.query_at_ts_window` seconds; an older
one (which may hold deleted data) is refused with a one-line 400 naming the
window and the admin key. With ``Authorization: Convex <admin key>`` any
timestamp is served. Past projections are built one at a time, at most
`MAX_WAITING_BUILDS` wait, and a projection a query worker still reads is not
closed when the cache evicts it.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import ServerConfig
from gateway.protocol import encode_ts
from gateway.time_travel import TimeTravel, TimeTravelBusy, get_time_travel, is_public
from tests.gateway.served_node import served_node

WINDOW = 0.5  # seconds: short, so the test need not wait minutes


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with session.post(url, json=body, headers=headers or {}) as resp:
        return resp.status, await resp.json(content_type=None)


async def mutate(session: aiohttp.ClientSession, url: str, path: str, args: dict[str, Any]) -> Any:
    status, body = await post(session, url + "/api/mutation", {"path": path, "args": args, "format": "json"})
    assert status == 200, body
    return body["value"]


def test_the_default_window_is_five_minutes() -> None:
    config = ServerConfig(app_dir=Path("."), data_dir=Path("."))
    assert config.query_at_ts_window == 300.0


async def test_deleted_secret_is_not_served_from_old_history_without_the_admin_key(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", query_at_ts_window=WINDOW) as (node, url):
        admin = {"Authorization": f"Convex {node.admin.value}"}
        async with aiohttp.ClientSession() as s:
            lid = await mutate(s, url, "lists:create", {"name": "vault"})
            secret = await mutate(s, url, "lists:add", {"list_id": lid, "text": "the secret"})
            ts_with_secret = node.runtime.projection.applied_ts
            await mutate(s, url, "lists:remove", {"id": secret})
            ask = {"path": "lists:items", "args": {"list_id": lid}, "format": "json"}

            # within the window anyone may ask (what consistentQuery needs)
            status, body = await post(s, url + "/api/query_at_ts", {**ask, "ts": ts_with_secret})
            assert status == 200 and [d["text"] for d in body["value"]] == ["the secret"]

            await asyncio.sleep(WINDOW + 0.3)
            for ts in (ts_with_secret, encode_ts(ts_with_secret), str(ts_with_secret)):
                status, body = await post(s, url + "/api/query_at_ts", {**ask, "ts": ts})
                assert status == 400, body
                assert body["code"] == "TimestampTooOld"
                message = body["message"]
                assert "\n" not in message and f"{WINDOW:g} s" in message and "admin key" in message
                assert "the secret" not in str(body)
            for wrong in ({"Authorization": "Convex not-the-key"}, {"Authorization": "Bearer junk"}):
                status, body = await post(s, url + "/api/query_at_ts", {**ask, "ts": ts_with_secret}, wrong)
                assert status in (400, 401) and "the secret" not in str(body)

            # the admin key reaches any past state
            status, body = await post(s, url + "/api/query_at_ts", {**ask, "ts": ts_with_secret}, admin)
            assert status == 200 and [d["text"] for d in body["value"]] == ["the secret"]
            # and /api/admin/query_at stays admin-only
            status, body = await post(s, url + "/api/admin/query_at", {**ask, "ts": ts_with_secret})
            assert status == 401


async def test_the_live_state_and_a_just_superseded_one_stay_public(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", query_at_ts_window=WINDOW) as (node, url):
        async with aiohttp.ClientSession() as s:
            lid = await mutate(s, url, "lists:create", {"name": "l"})
            await mutate(s, url, "lists:add", {"list_id": lid, "text": "first"})
            async with s.post(url + "/api/query_ts") as resp:
                ts = (await resp.json())["ts"]
            ask = {"path": "lists:open_items", "args": {"list_id": lid}, "format": "json", "ts": ts}
            await asyncio.sleep(WINDOW + 0.3)  # no commit since: the state at ts is still the live one
            status, body = await post(s, url + "/api/query_at_ts", ask)
            assert status == 200 and body["value"] == ["first"]
            # a commit now ends that state, but it was live within the window: still served
            await mutate(s, url, "lists:add", {"list_id": lid, "text": "second"})
            status, body = await post(s, url + "/api/query_at_ts", ask)
            assert status == 200 and body["value"] == ["first"]
            # once it has been superseded for longer than the window, it is not
            await asyncio.sleep(WINDOW + 0.3)
            status, body = await post(s, url + "/api/query_at_ts", ask)
            assert status == 400 and body["code"] == "TimestampTooOld"


async def test_is_public_follows_the_first_commit_after_the_state(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", query_at_ts_window=10.0) as (node, _url):
        rt = node.runtime
        lid = (await rt.run_mutation("lists:create", {"name": "l"})).value
        first = rt.projection.applied_ts
        await rt.run_mutation("lists:add", {"list_id": lid, "text": "x"})
        second = rt.projection.applied_ts
        now = second + 5 * 10**9
        assert await is_public(node, first, now_ns=now)  # superseded 5 s ago: within 10 s
        assert await is_public(node, second, now_ns=now + 10**12)  # still live
        assert not await is_public(node, first, now_ns=second + 11 * 10**9)  # superseded 11 s ago
        assert not await is_public(node, 0, now_ns=first + 11 * 10**9)  # the empty start, long gone
        node.config.query_at_ts_window = float("inf")
        assert await is_public(node, 0, now_ns=second + 10**15)


async def test_waiting_builds_are_bounded(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data") as (node, _url):
        rt = node.runtime
        lid = (await rt.run_mutation("lists:create", {"name": "l"})).value
        for i in range(4):
            await rt.run_mutation("lists:add", {"list_id": lid, "text": f"t{i}"})
        tt = TimeTravel(node, max_waiting=1)
        try:
            first = asyncio.ensure_future(tt.projection_at(1))
            await asyncio.sleep(0)  # the first build is now waiting or running
            with pytest.raises(TimeTravelBusy, match="Overloaded"):
                await tt.projection_at(2)
            result = await tt.evaluate("lists:open_items", {"list_id": lid}, 3)
            assert isinstance(result.error, TimeTravelBusy)
            assert (await first).applied_offset == 1
            assert (await tt.projection_at(2)).applied_offset == 2  # its turn now
        finally:
            tt.close()


async def test_a_projection_a_worker_reads_survives_eviction(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data") as (node, _url):
        rt = node.runtime
        lid = (await rt.run_mutation("lists:create", {"name": "l"})).value
        await rt.run_mutation("lists:add", {"list_id": lid, "text": "a"})
        await rt.run_mutation("lists:add", {"list_id": lid, "text": "b"})
        tt = TimeTravel(node, cache_size=1)
        try:
            old = await tt.projection_at(1)
            lent = tt._pin(old)
            await tt.projection_at(2)  # evicts offset 1 from the cache while it is lent
            assert Path(old.path).is_dir() and lent.get(lid) is not None
            assert [k for k, _ in lent.scan(*lent.index_range("items", "by_list", [lid]))]
            lent.close()  # the worker is done: now it is closed and removed (on a thread)
            await tt.wait_discarded()
            assert not Path(old.path).exists()
        finally:
            tt.close()


async def test_past_queries_answer_like_live_ones_through_the_node(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data") as (node, _url):
        rt = node.runtime
        lid = (await rt.run_mutation("lists:create", {"name": "l"})).value
        await rt.run_mutation("lists:add", {"list_id": lid, "text": "a"})
        ts = rt.projection.applied_ts
        await rt.run_mutation("lists:add", {"list_id": lid, "text": "b"})
        assert await node.query_at("lists:open_items", {"list_id": lid}, ts, None) == ["a"]
        assert await node.query_at("lists:open_items", {"list_id": lid}, ts, None, admin=True) == ["a"]
        assert get_time_travel(node).builds == 1  # cached: the second call reused the state


async def test_a_busy_time_travel_answers_503_over_http(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data") as (node, url):
        async with aiohttp.ClientSession() as s:
            lid = await mutate(s, url, "lists:create", {"name": "l"})
            stamps = []
            for i in range(3):
                await mutate(s, url, "lists:add", {"list_id": lid, "text": f"t{i}"})
                stamps.append(node.runtime.projection.applied_ts)
            get_time_travel(node).max_waiting = 1
            ask = {"path": "lists:open_items", "args": {"list_id": lid}, "format": "json"}
            first, second = await asyncio.gather(post(s, url + "/api/query_at_ts", {**ask, "ts": stamps[0]}),
                                                 post(s, url + "/api/query_at_ts", {**ask, "ts": stamps[1]}))
            assert sorted([first[0], second[0]]) == [200, 503], (first, second)
            served, busy = (second, first) if first[0] == 503 else (first, second)
            assert served[1]["value"] in (["t0"], ["t0", "t1"])
            assert busy[1]["code"] == "Overloaded" and "try again" in busy[1]["message"]
