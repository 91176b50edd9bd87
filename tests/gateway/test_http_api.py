"""The HTTP function API: request shapes, error statuses, and queries at a past timestamp."""
from __future__ import annotations

import aiohttp
import orjson

from values import to_wire


async def post(session: aiohttp.ClientSession, url: str, body: object, **kw: object) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with session.post(url, data=orjson.dumps(body), **kw) as r:  # type: ignore[arg-type]
        return r.status, orjson.loads(await r.read())


async def test_request_shapes_and_errors(server_factory) -> None:
    server = server_factory("kitchen")
    async with aiohttp.ClientSession() as s:
        status, body = await post(s, server.url + "/api/mutation", {"path": "lists:create", "args": {"name": "a"}, "format": "json"})
        assert status == 200 and body["status"] == "success"
        list_id = body["value"]
        # args as a one-element array in Convex JSON (ConvexHttpClient), format in the query string, no format at all
        for url, payload in [
            ("/api/query", {"path": "lists:get", "format": "convex_encoded_json", "args": [to_wire({"id": list_id})]}),
            ("/api/query?format=json", {"path": "lists:get", "args": {"id": list_id}}),
            ("/api/query", {"path": "lists.js:get", "args": {"id": list_id}}),
            ("/api/function", {"path": "lists:get", "args": {"id": list_id}, "componentPath": ""}),
        ]:
            status, body = await post(s, server.url + url, payload)
            assert status == 200 and body["value"]["name"] == "a", (url, body)
        status, body = await post(s, server.url + "/api/mutation", {"path": "lists:add", "args": {"list_id": list_id, "text": ""}})
        assert status == 560 and body["errorData"] == {"code": "EMPTY_TEXT"}
        status, body = await post(s, server.url + "/api/query", {"path": "lists:items", "args": {"list_id": 3}})
        assert status == 560 and "Path: .list_id" in body["errorMessage"]
        status, body = await post(s, server.url + "/api/query", {"path": "nope:x", "args": {}})
        assert status == 560 and "Could not find public function" in body["errorMessage"]
        async with s.post(server.url + "/api/query", data=b"{not json") as r:
            assert r.status == 400 and "not valid JSON" in (await r.json())["message"]
        status, body = await post(s, server.url + "/api/query", {"args": {}})
        assert status == 400 and body["message"].startswith("path")


async def test_idempotency_key_makes_http_mutations_exactly_once(server_factory) -> None:
    server = server_factory("kitchen")
    async with aiohttp.ClientSession() as s:
        headers = {"Idempotency-Key": "worker-1:17"}
        first = await post(s, server.url + "/api/mutation", {"path": "lists:create", "args": {"name": "x"}}, headers=headers)
        second = await post(s, server.url + "/api/mutation", {"path": "lists:create", "args": {"name": "x"}}, headers=headers)
        assert first == second
        _, lists = await post(s, server.url + "/api/query", {"path": "lists:all_lists", "args": {}})
        assert len(lists["value"]) == 1


async def test_query_at_a_past_timestamp(server_factory) -> None:
    server = server_factory("kitchen")
    async with aiohttp.ClientSession() as s:
        _, body = await post(s, server.url + "/api/mutation", {"path": "lists:create", "args": {"name": "first"}})
        async with s.post(server.url + "/api/query_ts") as r:
            ts = (await r.json())["ts"]
        await post(s, server.url + "/api/mutation", {"path": "lists:create", "args": {"name": "second"}})
        _, now = await post(s, server.url + "/api/query", {"path": "lists:all_lists", "args": {}})
        assert [d["name"] for d in now["value"]] == ["second", "first"]
        status, then = await post(s, server.url + "/api/query_at_ts", {"path": "lists:all_lists", "args": {}, "ts": ts})
        assert status == 200, then
        assert [d["name"] for d in then["value"]] == ["first"]
