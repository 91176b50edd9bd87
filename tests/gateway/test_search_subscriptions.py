"""Search subscriptions: re-run when a matching document appears, changes or leaves; not for unrelated writes."""
from __future__ import annotations

from typing import Any

import orjson

from gateway.subscriptions import SharedQuery, SubscriptionManager


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
    assert runs == 1 and updates == [["hello world", "wonderful words"]] or sorted(updates[0]) == ["hello world", "wonderful words"]
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
    from tests.gateway.served_node import served_node
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
