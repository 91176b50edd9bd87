"""Admin endpoints: time travel (`/api/admin/query_at`), the change stream, checkpoints; admin key required."""
from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.errors import EngineError
from gateway.node import Node
from gateway.time_travel import get_time_travel, query_at
from history.points import format_ns
from log.changes import iter_changes
from projections.checkpoints import list_checkpoints
from tests.gateway.kitchen_deployment import Deployment


async def history(d: Deployment, n: int = 12, checkpoint_at: tuple[int, ...] = ()) -> tuple[str, list[tuple[int, int, Any]]]:
    """Mutations; returns (list id, [(offset, ts, open items) after each])."""
    lid = await d.mutate("lists:create", {"name": "l"})
    out = []
    ids = []
    for i in range(n):
        if i % 4 == 3:
            await d.mutate("lists:toggle", {"id": ids[-1]})
        elif i % 5 == 4:
            await d.mutate("lists:remove", {"id": ids.pop(0)})
        else:
            ids.append(await d.mutate("lists:add", {"list_id": lid, "text": f"t{i}"}))
        p = d.node.runtime.projection
        out.append((p.applied_offset, p.applied_ts, d.node.runtime.run_query("lists:open_items", {"list_id": lid}).value))
        if i in checkpoint_at:
            r = await d.client.post("/api/admin/checkpoints", headers=d.auth)
            assert (await r.json())["created"] is True
    return lid, out


# ----------------------------------------------------------------- authorization


async def test_admin_key_required(deployment: Deployment) -> None:
    d = deployment
    lid, past = await history(d, 4)
    data = d.node.config.data_dir
    for headers in ({}, {"Authorization": "Convex wrong"}, {"Authorization": d.node.admin.value + "x"}):
        status, body = await d.query_at(headers, path="lists:open_items", args={"list_id": lid}, offset=1)
        assert status == 401 and body["code"] == "Unauthorized"
        r = await d.client.get("/api/admin/changes?follow=0", headers=headers)
        assert r.status == 401
        r = await d.client.post("/api/admin/checkpoints", headers=headers)
        assert r.status == 401
        r = await d.client.get("/api/admin/checkpoints", headers=headers)
        assert r.status == 401
    # nothing was done: no checkpoint, no past state built
    assert list_checkpoints(data) == []
    assert not (data / ".timetravel").exists() or not any((data / ".timetravel").rglob("CURRENT"))
    status, body = await d.query_at(path="lists:open_items", args={"list_id": lid}, offset=1)
    assert status == 200 and body["value"] == past[0][2]


# ----------------------------------------------------------------- time travel


async def test_time_travel_matches_past_state(deployment: Deployment) -> None:
    d = deployment
    lid, past = await history(d, 14, checkpoint_at=(5,))
    live = d.node.runtime.projection
    digest, applied = live.content_digest(), live.applied_offset
    for offset, ts, expected in past:
        for how in ({"ts": ts}, {"ts": str(ts)}, {"offset": offset}, {"time": format_ns(ts)}):
            status, body = await d.query_at(path="lists:open_items", args={"list_id": lid}, **how)
            assert status == 200, body
            assert body["value"] == expected, (how, offset)
            assert body["offset"] == offset and body["ts"] == str(ts)
    # between two commits: the earlier state
    offset, ts, expected = past[6]
    status, body = await d.query_at(path="lists:open_items", args={"list_id": lid}, ts=past[7][1] - 1)
    assert body["value"] == past[6][2] and body["offset"] == past[6][0]
    # the encoded u64 of /api/query_ts works too
    from gateway.protocol import encode_ts
    status, body = await d.query_at(path="lists:open_items", args={"list_id": lid}, ts=encode_ts(ts))
    assert status == 200 and body["value"] == expected
    # before the first commit: the empty state
    status, body = await d.query_at(path="lists:all_lists", args={}, offset=-1)
    assert status == 200 and body["value"] == []
    # the live deployment was not disturbed and keeps working
    assert live.content_digest() == digest and live.applied_offset == applied
    assert d.node.runtime.run_query("lists:open_items", {"list_id": lid}).value == past[-1][2]
    await d.mutate("lists:add", {"list_id": lid, "text": "later"})
    assert "later" in d.node.runtime.run_query("lists:open_items", {"list_id": lid}).value
    status, body = await d.query_at(path="lists:open_items", args={"list_id": lid}, offset=past[3][0])
    assert body["value"] == past[3][2]
    # repeated queries at one point reuse the cached past state
    tt = get_time_travel(d.node)
    builds = tt.builds
    await d.query_at(path="lists:open_items", args={"list_id": lid}, offset=past[3][0])
    assert tt.builds == builds


async def test_query_at_entry_point_for_query_at_ts(deployment: Deployment) -> None:
    d = deployment
    lid, past = await history(d, 6)
    for offset, ts, expected in past:
        assert await query_at(d.node, "lists:open_items", {"list_id": lid}, ts, None) == expected
    assert await query_at(d.node, "lists:open_items", {"list_id": lid}, time.time_ns() + 10**12, None) == past[-1][2]
    with pytest.raises(EngineError):
        await query_at(d.node, "lists:create", {"name": "no writes in the past"}, past[0][1], None)


async def test_query_at_errors(deployment: Deployment) -> None:
    d = deployment
    lid, past = await history(d, 3)
    args = {"list_id": lid}
    status, body = await d.query_at(path="lists:open_items", args=args)
    assert status == 400 and "exactly one" in body["message"]
    status, body = await d.query_at(path="lists:open_items", args=args, ts=1, offset=1)
    assert status == 400
    status, body = await d.query_at(path="lists:open_items", args=args, offset=999)
    assert status == 400 and body["code"] == "BadOffset"
    status, body = await d.query_at(path="lists:open_items", args=args, time="not a time")
    assert status == 400
    status, body = await d.query_at(path="lists:create", args={"name": "x"}, offset=1)
    assert status == 560 and "not a query" in body["errorMessage"]
    status, body = await d.query_at(path="lists:nope", args={}, offset=1)
    assert status == 404
    r = await d.client.post("/api/admin/query_at", data=b"{nope", headers=d.auth)
    assert r.status == 400


# ----------------------------------------------------------------- change stream


async def _records(node: Node) -> list[Any]:
    return [r for b in [x async for x in node.log.read(0)] for r in b]


async def test_changes_ndjson(deployment: Deployment) -> None:
    d = deployment
    await history(d, 8)
    records = await _records(d.node)
    r = await d.client.get("/api/admin/changes?follow=0", headers=d.auth)
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/x-ndjson")
    events = [orjson.loads(line) for line in (await r.read()).splitlines()]
    assert events == list(iter_changes(records))
    r = await d.client.get("/api/admin/changes?follow=0&from=3&table=lists&table=items&doc_format=convex",
                           headers=d.auth)
    events = [orjson.loads(line) for line in (await r.read()).splitlines()]
    assert events and min(e["source"]["offset"] for e in events) == 3
    assert events == [e for e in iter_changes(records, doc_format="convex") if e["source"]["offset"] >= 3]
    r = await d.client.get("/api/admin/changes?follow=0&table=lists", headers=d.auth)
    assert {orjson.loads(x)["source"]["table"] for x in (await r.read()).splitlines()} == {"lists"}
    r = await d.client.get("/api/admin/changes?follow=0&doc_format=xml", headers=d.auth)
    assert r.status == 400


async def test_changes_websocket_live(deployment: Deployment) -> None:
    d = deployment
    lid, _past = await history(d, 3)
    start = d.node.log.next_offset()
    ws = await d.client.ws_connect(f"/api/admin/changes?from={start - 1}", headers=d.auth)
    try:
        first = json.loads((await ws.receive(timeout=10)).data)
        assert first["source"]["offset"] == start - 1
        await d.mutate("lists:add", {"list_id": lid, "text": "live one"})
        live = json.loads((await ws.receive(timeout=10)).data)
        assert live["op"] == "c" and live["after"]["text"] == "live one" and live["source"]["offset"] == start
    finally:
        await ws.close()
    # NDJSON follows live too
    r = await d.client.get("/api/admin/changes?from=end", headers=d.auth)
    await d.mutate("lists:add", {"list_id": lid, "text": "streamed"})
    line = await asyncio.wait_for(r.content.readline(), 10)
    assert orjson.loads(line)["after"]["text"] == "streamed"
    r.close()


async def test_checkpoint_endpoints(deployment: Deployment) -> None:
    d = deployment
    await history(d, 3)
    r = await d.client.post("/api/admin/checkpoints", headers=d.auth)
    made = await r.json()
    assert made["created"] and made["offset"] == d.node.runtime.projection.applied_offset
    r = await d.client.post("/api/admin/checkpoints", headers=d.auth)
    assert (await r.json())["created"] is False  # nothing new since
    r = await d.client.get("/api/admin/checkpoints", headers=d.auth)
    assert [c["offset"] for c in (await r.json())["checkpoints"]] == [made["offset"]]


# ----------------------------------------------------------------- a real server


def _post(url: str, body: dict[str, Any], key: str | None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Convex {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_real_server_time_travel_and_checkpointer(server_factory: Any, tmp_path: Path) -> None:
    data = tmp_path / "served"
    server = server_factory("kitchen", data=data, command="serve", extra=["--checkpoint-interval", "0.2"])
    key = (data / "admin_key").read_text().strip()
    status, body = _post(server.url + "/api/mutation", {"path": "lists:create", "args": {"name": "s"}}, None)
    lid = body["value"]
    for i in range(5):
        _post(server.url + "/api/mutation", {"path": "lists:add", "args": {"list_id": lid, "text": f"x{i}"}}, None)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not list_checkpoints(data):
        time.sleep(0.1)
    assert list_checkpoints(data), server.output()
    _post(server.url + "/api/mutation", {"path": "lists:add", "args": {"list_id": lid, "text": "late"}}, None)
    query = {"path": "lists:open_items", "args": {"list_id": lid}, "offset": 3, "format": "json"}
    assert _post(server.url + "/api/admin/query_at", query, None)[0] == 401
    status, body = _post(server.url + "/api/admin/query_at", query, key)
    assert status == 200 and body["value"] == ["x0", "x1", "x2"]
    status, body = _post(server.url + "/api/query", {"path": "lists:open_items", "args": {"list_id": lid},
                                                     "format": "json"}, None)
    assert body["value"] == ["x0", "x1", "x2", "x3", "x4", "late"]
    assert server.stop() == 0
    assert not any((data / ".timetravel").glob("*/*"))


async def test_changes_ndjson_stream_ends_when_the_client_leaves(deployment: Deployment,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.admin_api as admin_api
    monkeypatch.setattr(admin_api, "DISCONNECT_POLL_SECONDS", 0.05)
    d = deployment
    await history(d, 2)
    streams = d.client.app[admin_api._STREAMS]  # type: ignore[index]
    r = await d.client.get("/api/admin/changes?from=0", headers=d.auth)
    await asyncio.wait_for(r.content.readline(), 10)
    assert len(streams) == 1
    r.close()  # the client goes away while nothing new is committed
    deadline = time.monotonic() + 10
    while streams and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not streams


# ----------------------------------------------------------------- commit times


async def test_commit_times_stamp_each_applied_batch_on_the_monotonic_clock(deployment: Deployment) -> None:
    d = deployment
    r = await d.client.get("/api/admin/commit_times", headers={"Authorization": "Convex wrong"})
    assert r.status == 401
    before = time.perf_counter_ns()
    await d.mutate("lists:create", {"name": "a"})
    await d.mutate("lists:create", {"name": "b"})
    after = time.perf_counter_ns()
    r = await d.client.get("/api/admin/commit_times", headers=d.auth)
    body = await r.json()
    assert r.status == 200
    assert body["clock"] == time.get_clock_info("perf_counter").implementation
    ours = [(ts, t) for ts, t in body["commits"] if before <= t <= after]
    assert len(ours) == 2
    assert ours[0][0] < ours[1][0] == d.node.runtime.projection.applied_ts
