"""Sessions updated by one applied batch: identical Transitions share bytes, different ones stay per session."""
from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from engine.app import App
from gateway.config import ServerConfig
from gateway.node import Node
from gateway.server import build_app

APPS = Path(__file__).resolve().parents[1] / "apps"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Node, str]]:
    node = Node(ServerConfig(app_dir=APPS / "kitchen", data_dir=tmp_path / "data"), App.load(APPS / "kitchen"))
    server = TestServer(build_app(node), host="127.0.0.1")
    await server.start_server()
    yield node, str(server.make_url("/"))
    await server.close()


class Raw:
    """A sync-protocol socket that keeps every server message as raw text, checking version continuity."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.version: Any = {"querySet": 0, "ts": "AAAAAAAAAAA=", "identity": 0}
        self.query_set = 0

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(message).decode())

    async def subscribe(self, queries: list[tuple[int, str, dict[str, Any]]]) -> dict[str, Any]:
        base, self.query_set = self.query_set, self.query_set + 1
        await self.send({"type": "ModifyQuerySet", "baseVersion": base, "newVersion": self.query_set,
                         "modifications": [{"type": "Add", "queryId": q, "udfPath": path, "args": [args]}
                                           for q, path, args in queries]})
        return await self.transition()

    async def transition(self) -> dict[str, Any]:
        while True:
            text = await self.ws.receive_str(timeout=5)
            message = orjson.loads(text)
            if message["type"] == "Transition":
                assert message["startVersion"] == self.version
                self.version = message["endVersion"]
                message["_raw"] = text
                return message


async def test_identical_and_different_transitions_of_one_batch(served: tuple[Node, str]) -> None:
    node, url = served
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "api/mutation", json={"path": "lists:create", "args": {"name": "l"},
                                                         "format": "json"}) as r:
            list_id = (await r.json())["value"]
        sockets = [Raw(await http.ws_connect(url + "api/sync")) for _ in range(3)]
        for i, s in enumerate(sockets):
            await s.send({"type": "Connect", "sessionId": f"00000000-0000-4000-8000-00000000000{i}",
                          "connectionCount": 0, "lastCloseReason": "InitialConnect", "clientTs": 0})
        a, b, c = sockets
        await a.subscribe([(0, "lists:items", {"list_id": list_id})])
        await b.subscribe([(0, "lists:items", {"list_id": list_id})])
        await c.subscribe([(7, "lists:all_lists", {})])  # c is one query-set version ahead ...
        await c.subscribe([(5, "lists:items", {"list_id": list_id})])  # ... and names the query 5
        assert node.subscriptions.query_count == 2
        async with http.post(url + "api/mutation", json={"path": "lists:add", "format": "json",
                                                         "args": {"list_id": list_id, "text": "milk"}}) as r:
            assert r.status == 200
        ta, tb, tc = [await s.transition() for s in sockets]
        assert ta["_raw"] == tb["_raw"]  # same versions, same query id, same shared result
        assert [m["queryId"] for m in ta["modifications"]] == [0]
        assert [m["queryId"] for m in tc["modifications"]] == [5]
        assert tc["startVersion"]["querySet"] == 2 and ta["startVersion"]["querySet"] == 1
        assert ta["modifications"][0]["value"] == tc["modifications"][0]["value"]
        assert [i["text"] for i in tc["modifications"][0]["value"]] == ["milk"]
        for s in sockets:
            await s.ws.close()
