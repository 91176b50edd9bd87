"""Search subscriptions: re-run when a matching document appears, changes or leaves; not for unrelated writes."""
from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import orjson
from aiohttp.test_utils import TestServer

from engine.app import App
from gateway.config import ServerConfig
from gateway.node import Node
from gateway.replica import ADMIN_KEY_ENV
from gateway.server import build_app
from gateway.subscriptions import SharedQuery, SubscriptionManager
from tests.gateway.served_node import APPS, served_node


class Collector:
    """A subscriber that keeps every update it is handed."""

    def __init__(self) -> None:
        self.updates: list[list[str]] = []

    def deliver(self, updates: list[tuple[int, SharedQuery]], ts: int, frames: Any = None) -> None:
        for _qid, shared in updates:
            self.updates.append(orjson.loads(shared.value_json))

    def go_off_loop(self) -> None:
        raise AssertionError("the search query should be fast")

    def lane_dirty(self, query_id: int) -> None:
        raise AssertionError("no lanes here")


async def test_search_subscription_reactivity(make_runtime) -> None:
    rt = await make_runtime("search")
    ids = (await rt.run_mutation("messages:send_many", {"items": [
        {"body": "hello world", "channel": "a"}, {"body": "quiet evening", "channel": "a"}]})).value
    # A shared 2-core machine may lose a 20 ms loop slice to the scheduler alone; a "slow" query would move to
    # a lane, which this harness (no sessions) has not: give the slice room, the read sets are what is tested.
    rt.limits = dataclasses.replace(rt.limits, loop_slice_seconds=1.0)
    manager = SubscriptionManager(rt)
    sub = Collector()
    shared = manager.subscribe(sub, 1, "messages:search", {"text": "hello wor", "channel": "a"}, None)
    assert orjson.loads(shared.value_json) == ["hello world"]

    async def step(mutation: str, args: dict[str, Any]) -> tuple[int, list[list[str]]]:
        before_runs, before = manager.reruns, len(sub.updates)
        await rt.run_mutation(mutation, args)
        return manager.reruns - before_runs, sub.updates[before:]

    # Unrelated writes do not re-run it: another table, another channel, non-matching text,
    # an edit of a document outside the results.
    assert await step("messages:note", {"text": "hello world"}) == (0, [])
    assert await step("messages:send", {"body": "hello world", "channel": "b"}) == (0, [])
    assert await step("messages:send", {"body": "goodbye moon", "channel": "a"}) == (0, [])
    assert await step("messages:edit", {"id": ids[1], "body": "quiet night"}) == (0, [])
    # A new matching document enters (prefix match on the last term)...
    runs, updates = await step("messages:send", {"body": "wonderful words", "channel": "a"})
    assert runs == 1 and sorted(updates[0]) == ["hello world", "wonderful words"]
    # ...an edited document starts matching...
    runs, updates = await step("messages:edit", {"id": ids[1], "body": "hello again"})
    assert runs == 1 and sorted(updates[0]) == ["hello again", "hello world", "wonderful words"]
    # ...an edit of a result's other field updates it...
    runs, _ = await step("messages:edit", {"id": ids[0], "author": "ann"})
    assert runs == 1
    # ...and one that stops matching leaves, as does a deleted one.
    runs, updates = await step("messages:edit", {"id": ids[1], "body": "silence"})
    assert runs == 1 and sorted(updates[0]) == ["hello world", "wonderful words"]
    runs, updates = await step("messages:remove", {"id": ids[0]})
    assert runs == 1 and updates[0] == ["wonderful words"]
    manager.close()


async def test_time_travel_answers_a_search_as_of_the_past(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with served_node(tmp_path / "data", "search") as (node, _url):
        rt = node.runtime
        first = (await rt.run_mutation("messages:send", {"body": "early bird", "channel": "a"}))
        await rt.run_mutation("messages:send", {"body": "early riser", "channel": "a"})
        msg_id = first.value
        await rt.run_mutation("messages:edit", {"id": msg_id, "body": "late bird"})
        assert rt.run_query("messages:search", {"text": "early"}).value == ["early riser"]
        past = await node.query_at("messages:search", {"text": "early"}, first.ts, None, admin=True)
        assert past == ["early bird"]
        past = await node.query_at("messages:search", {"text": "bird"}, first.ts, None, admin=True)
        assert past == ["early bird"]


async def test_replica_answers_searches_like_the_committer(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    servers = []

    async def serve(name: str, **config: Any) -> Node:
        node = Node(ServerConfig(app_dir=APPS / "search", data_dir=tmp_path / name, **config), App.load(APPS / "search"))
        server = TestServer(build_app(node), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        node.url = str(server.make_url("/")).rstrip("/")  # type: ignore[attr-defined]
        return node

    try:
        committer = await serve("committer")
        monkeypatch.setenv(ADMIN_KEY_ENV, committer.admin.value)
        replica = await serve("replica", role="replica", committer_url=committer.url,  # type: ignore[attr-defined]
                              log_url=str(tmp_path / "committer" / "log"))
        rt = committer.runtime
        ids = (await rt.run_mutation("messages:send_many", {"items": [
            {"body": f"{w} report {i}", "channel": "ab"[i % 2]} for i, w in enumerate(["sales", "sale", "salt", "pepper"] * 5)]})).value
        await rt.run_mutation("messages:edit", {"id": ids[0], "body": "pepper only"})
        await rt.run_mutation("messages:remove", {"id": ids[1]})
        queries = [{"text": "sal"}, {"text": "pepper"}, {"text": "report sal", "channel": "a"}, {"text": "sales"}]
        expected = [rt.run_query("messages:search", q).value for q in queries]
        deadline = time.monotonic() + 10
        while replica.runtime.projection.applied_offset < rt.projection.applied_offset:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert [replica.runtime.run_query("messages:search", q).value for q in queries] == expected
    finally:
        for server in reversed(servers):
            await server.close()
