"""Slow queries over the sync protocol: served off the event loop, consistent, and nobody else waits.

A session that subscribes to a query outrunning its slice on the loop moves
to a lane of its own (`gateway.session_lane`): its queries run on worker
threads against one snapshot per step. These tests speak the protocol as the
official clients do and check what a client can see: Transitions chain
(each starts where the last ended), every Transition's results belong to one
state, updates after writes arrive, and other sessions are not held up.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.gateway.served_node import served_node
from values import from_wire, to_wire


class Client:
    """A sync-protocol WebSocket that checks Transition chaining and keeps the latest query values."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.version = {"querySet": 0, "ts": "AAAAAAAAAAA=", "identity": 0}
        self.values: dict[int, Any] = {}
        self.transitions: list[dict[str, Any]] = []
        self.query_set = 0

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str, session: str) -> "Client":
        client = cls(await http.ws_connect(url + "/api/sync"))
        await client.send({"type": "Connect", "sessionId": session, "connectionCount": 0,
                           "lastCloseReason": "InitialConnect", "clientTs": 0})
        return client

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(message).decode())

    async def add(self, *queries: tuple[int, str, dict[str, Any]]) -> None:
        self.query_set += 1
        await self.send({"type": "ModifyQuerySet", "baseVersion": self.query_set - 1, "newVersion": self.query_set,
                         "modifications": [{"type": "Add", "queryId": q, "udfPath": path, "args": [to_wire(args)]}
                                           for q, path, args in queries]})

    async def next_transition(self, timeout: float = 10.0) -> dict[str, Any]:
        while True:
            message = orjson.loads(await self.ws.receive_str(timeout=timeout))
            if message["type"] != "Transition":
                continue
            assert message["startVersion"] == self.version, "a Transition must start where the client is"
            self.version = message["endVersion"]
            for mod in message["modifications"]:
                if mod["type"] == "QueryUpdated":
                    self.values[mod["queryId"]] = from_wire(mod["value"])
                elif mod["type"] == "QueryFailed":
                    self.values[mod["queryId"]] = ("failed", mod["errorMessage"])
            self.transitions.append(message)
            return message

    async def until(self, predicate: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.values):
            await self.next_transition(max(0.01, deadline - time.monotonic()))


async def _mutate(http: aiohttp.ClientSession, url: str, path: str, args: dict[str, Any]) -> None:
    async with http.post(url + "/api/mutation", json={"path": path, "args": args, "format": "json"}) as r:
        assert r.status == 200, await r.text()


async def test_a_slow_subscription_is_consistent_and_holds_up_nobody(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", app="limits") as (node, url), aiohttp.ClientSession() as http:
        await _mutate(http, url, "stress:insert_many", {"n": 3})
        slow = await Client.open(http, url, "slow-session")
        await slow.add((1, "stress:count_twice_slowly", {"seconds": 0.4}), (2, "stress:read_all", {}))
        await asyncio.sleep(0.05)  # the slow query is running now
        other = await Client.open(http, url, "other-session")
        started = time.monotonic()
        await other.add((1, "stress:read_all", {}))
        await other.until(lambda values: values.get(1) == 3)
        assert time.monotonic() - started < 0.3, "a fast subscription waited for someone else's slow query"
        await slow.until(lambda values: 1 in values and 2 in values)
        assert slow.values == {1: [3, 3], 2: 3}
        assert node.runtime.is_slow("stress:count_twice_slowly")

        # Writes while the slow query runs: every Transition the slow session gets shows one state.
        for _ in range(3):
            await _mutate(http, url, "stress:insert_many", {"n": 2})
        await slow.until(lambda values: values.get(2) == 9 and values.get(1) == [9, 9], timeout=15)
        await other.until(lambda values: values.get(1) == 9)
        for message in slow.transitions:
            counts = {mod["queryId"]: from_wire(mod["value"]) for mod in message["modifications"]
                      if mod["type"] == "QueryUpdated"}
            if 1 in counts:
                assert counts[1][0] == counts[1][1]  # one snapshot within the query


async def test_a_mutation_answer_reaches_a_slow_session_in_order(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", app="limits") as (node, url), aiohttp.ClientSession() as http:
        slow = await Client.open(http, url, "slow-session")
        await slow.add((1, "stress:count_twice_slowly", {"seconds": 0.2}))
        await slow.until(lambda values: values.get(1) == [0, 0])
        await slow.send({"type": "Mutation", "requestId": 0, "udfPath": "stress:insert_many",
                         "args": [to_wire({"n": 1})]})
        response = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = orjson.loads(await slow.ws.receive_str(timeout=10))
            if message["type"] == "MutationResponse":
                response = message
            elif message["type"] == "Transition":
                assert message["startVersion"] == slow.version
                slow.version = message["endVersion"]
                for mod in message["modifications"]:
                    slow.values[mod["queryId"]] = from_wire(mod["value"])
                if response is not None and message["endVersion"]["ts"] >= response["ts"]:
                    break
        assert response is not None and response["success"]
        assert slow.values[1] == [1, 1]  # the Transition that completes the mutation shows its effect


async def test_a_query_looping_forever_fails_its_subscription_and_the_server_stays_up(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", app="limits") as (node, url), aiohttp.ClientSession() as http:
        spinner = await Client.open(http, url, "spinner")
        await spinner.add((1, "stress:spin_forever", {}))
        other = await Client.open(http, url, "other")
        started = time.monotonic()
        await other.add((1, "stress:read_all", {}))
        await other.until(lambda values: values.get(1) == 0)
        assert time.monotonic() - started < 0.3
        await spinner.until(lambda values: 1 in values, timeout=10)
        assert spinner.values[1][0] == "failed" and "ran longer than 1s" in spinner.values[1][1]


async def test_a_slow_query_after_fast_ones_in_one_message_gives_one_consistent_transition(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", app="limits") as (node, url), aiohttp.ClientSession() as http:
        await _mutate(http, url, "stress:insert_many", {"n": 2})
        client = await Client.open(http, url, "mixed-session")
        await client.add((1, "stress:read_all", {}), (2, "stress:count_twice_slowly", {"seconds": 0.2}),
                         (3, "stress:read_all", {}))
        await client.until(lambda values: len(values) == 3)
        assert client.values == {1: 2, 2: [2, 2], 3: 2}
        assert client.version["querySet"] == 1
        await client.send({"type": "ModifyQuerySet", "baseVersion": 1, "newVersion": 2,
                           "modifications": [{"type": "Remove", "queryId": 2}]})
        message = await client.next_transition()
        assert {"type": "QueryRemoved", "queryId": 2} in message["modifications"]
        await _mutate(http, url, "stress:insert_many", {"n": 1})
        await client.until(lambda values: values.get(1) == 3 and values.get(3) == 3)
