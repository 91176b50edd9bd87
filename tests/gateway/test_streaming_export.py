"""Streaming export (/api/list_snapshot + /api/document_deltas) paged through a deployment taking writes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from engine.app import App
from gateway.config import ServerConfig
from gateway.node import Node
from gateway.server import build_app
from tests.gateway.kitchen_deployment import APPS, Deployment


def strip(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k not in ("_ts", "_deleted", "_component")}


async def test_snapshot_then_deltas_miss_nothing_and_repeat_nothing(deployment: Deployment) -> None:
    d = deployment
    lid = await d.mutate("lists:create", {"name": "l"})
    items = [await d.mutate("lists:add", {"list_id": lid, "text": f"t{i:02}", "rank": i}) for i in range(12)]
    whole = await d.call("list_snapshot")
    at_snapshot = {v["_id"]: strip(v) for v in whole["values"]}
    assert len(at_snapshot) == 13 and not whole["hasMore"]
    assert {v["_table"] for v in whole["values"]} == {"lists", "items"}

    # page through the same snapshot, 3 at a time, while the deployment changes under it
    snapshot, cursor, seen = None, None, []
    writes = iter([
        ("lists:add", {"list_id": lid, "text": "new-1"}),
        ("lists:remove", {"id": items[11]}),  # not listed yet: the snapshot still holds it
        ("lists:toggle", {"id": items[0]}),  # listed already
        ("lists:toggle", {"id": items[10]}),  # not listed yet: listed as it was
        ("lists:remove", {"id": items[1]}),
        ("lists:add", {"list_id": lid, "text": "new-2"}),
    ])
    while True:
        page = await d.call("list_snapshot", snapshot=snapshot, cursor=cursor, limit=3)
        assert snapshot is None or page["snapshot"] == snapshot
        snapshot, cursor = page["snapshot"], page["cursor"]
        seen.extend(page["values"])
        step = next(writes, None)
        if step is not None:
            await d.mutate(*step)
        if not page["hasMore"]:
            break
    assert snapshot == whole["snapshot"]
    ids = [v["_id"] for v in seen]
    assert len(ids) == len(set(ids)), "a document was listed twice"
    assert {v["_id"]: strip(v) for v in seen} == at_snapshot  # nothing missed, nothing changed
    assert all(v["_ts"] == snapshot for v in seen)
    for step in writes:
        await d.mutate(*step)

    # then the deltas from the snapshot, 2 at a time, with writes in between
    state = dict(at_snapshot)
    cursor_ts = snapshot
    more = [("lists:add", {"list_id": lid, "text": "late"}), ("lists:toggle", {"id": items[5]})]
    while True:
        page = await d.call("document_deltas", post=True, cursor=cursor_ts, limit=2)
        assert page["cursor"] >= cursor_ts
        for v in page["values"]:
            assert v["_ts"] > cursor_ts
            if v["_deleted"]:
                assert set(v) == {"_id", "_table", "_ts", "_deleted", "_component"}
                state.pop(v["_id"], None)
            else:
                state[v["_id"]] = strip(v)
        cursor_ts = page["cursor"]
        if more:
            await d.mutate(*more.pop(0))
            continue
        if not page["hasMore"]:
            break
    final = await d.call("list_snapshot")
    assert state == {v["_id"]: strip(v) for v in final["values"]}
    assert items[11] not in state and items[1] not in state and state[items[0]]["done"] is True
    assert final["snapshot"] == cursor_ts  # caught up exactly
    empty = await d.call("document_deltas", cursor=cursor_ts)
    assert empty == {"values": [], "cursor": cursor_ts, "hasMore": False}


async def test_table_filter_formats_and_errors(deployment: Deployment) -> None:
    d = deployment
    lid = await d.mutate("lists:create", {"name": "l"})
    await d.mutate("lists:add", {"list_id": lid, "text": "x", "rank": 1})
    page = await d.call("list_snapshot", tableName="lists")
    assert [v["_table"] for v in page["values"]] == ["lists"] and page["values"][0]["name"] == "l"
    assert page["values"][0]["_id"] == lid and isinstance(page["values"][0]["_creationTime"], float)
    deltas = await d.call("document_deltas", cursor=0, tableName="items", format="convex_encoded_json")
    assert [v["_table"] for v in deltas["values"]] == ["items"] and deltas["values"][0]["rank"] == 1.0
    r = await d.client.get("/api/list_snapshot")
    assert r.status == 401
    r = await d.client.get("/api/document_deltas", headers=d.auth)
    assert r.status == 400 and (await r.json())["code"] == "DocumentDeltasCursorRequired"
    r = await d.client.get("/api/list_snapshot", params={"cursor": "garbage"}, headers=d.auth)
    assert r.status == 400 and (await r.json())["code"] == "InvalidListSnapshotCursor"
    r = await d.client.get("/api/list_snapshot", params={"format": "xml"}, headers=d.auth)
    assert r.status == 400 and "format" in (await r.json())["message"]
    r = await d.client.get("/api/test_streaming_export_connection", headers=d.auth)
    assert r.status == 200


async def test_airbyte_connector_call_sequence(tmp_path: Path) -> None:
    """The requests the Airbyte Convex source makes: json_schemas, then per table list_snapshot, document_deltas."""
    app_dir = APPS / "typed"
    node = Node(ServerConfig(app_dir=app_dir, data_dir=tmp_path / "data"), App.load(app_dir))
    async with TestClient(TestServer(build_app(node))) as client:
        d = Deployment(node, client)
        headers = {**d.auth, "Convex-Client": "airbyte-export-0.2.0"}
        first = await d.mutate("messages:send", {"channel": "c", "author": "a", "body": "hello"})
        r = await client.get("/api/json_schemas?deltaSchema=true&format=convex_json", headers=headers)
        schemas = await r.json()
        assert r.status == 200 and set(schemas) == {"messages", "notes"}
        props = schemas["messages"]["properties"]
        assert props["likes"] == {"type": "object", "properties": {"$integer": {"type": "string"}},
                                  "required": ["$integer"], "additionalProperties": False}
        assert props["_ts"] == {"type": "integer"} and props["tags"] == {"type": "array", "items": {"type": "string"}}
        assert "tags" not in schemas["messages"]["required"] and schemas["notes"]["additionalProperties"] is True
        # the connector's state machine for the messages stream
        state: dict[str, Any] = {"snapshot_cursor": None, "snapshot_has_more": True, "delta_cursor": None}
        records = []
        for round_ in range(10):
            params = {"tableName": "messages", "format": "convex_json"}
            if state["snapshot_has_more"]:
                path = "/api/list_snapshot"
                if state["snapshot_cursor"]:
                    params["cursor"] = state["snapshot_cursor"]
                if state["delta_cursor"]:
                    params["snapshot"] = state["delta_cursor"]
            else:
                path = "/api/document_deltas"
                params["cursor"] = state["delta_cursor"]
            r = await client.get(path, params={**params, "limit": "1"}, headers=headers)
            body = await r.json()
            assert r.status == 200, body
            records.extend(body["values"])
            if state["snapshot_has_more"]:
                state.update(snapshot_cursor=body["cursor"], snapshot_has_more=body["hasMore"],
                             delta_cursor=body["snapshot"])
            else:
                state["delta_cursor"] = body["cursor"]
                if not body["hasMore"]:
                    break
            if round_ == 0:
                await d.mutate("messages:send", {"channel": "c", "author": "b", "body": "second"})
        assert [(v["_id"], v.get("_deleted", False)) for v in records][:1] == [(first, False)]
        assert records[0]["likes"] == {"$integer": "AAAAAAAAAAA="} and records[0]["_table"] == "messages"
        assert [v["body"] for v in records] == ["hello", "second"]  # the second arrives once, as a delta
        assert records[1]["_deleted"] is False and records[1]["_ts"] > records[0]["_ts"]


async def test_fivetran_selection_and_column_names(deployment: Deployment) -> None:
    """The Fivetran connector POSTs a `selection` object and asks for the column names."""
    d = deployment
    lid = await d.mutate("lists:create", {"name": "l"})
    item = await d.mutate("lists:add", {"list_id": lid, "text": "x", "rank": 1})
    selection = {"_other": "excluded", "": {"_other": "excluded",
                                             "items": {"_other": "included", "text": "excluded", "_id": "excluded"}}}
    page = await d.call("list_snapshot", post=True, selection=selection, format="convex_encoded_json")
    assert [v["_table"] for v in page["values"]] == ["items"]
    assert "text" not in page["values"][0] and page["values"][0]["_id"] == item and page["values"][0]["done"] is False
    only_text = {"_other": "excluded", "": {"_other": "excluded", "items": {"_other": "excluded", "text": "included"}}}
    deltas = await d.call("document_deltas", post=True, cursor=0, selection=only_text)
    assert [sorted(k for k in v if not k.startswith("_") or k == "_id") for v in deltas["values"]] == [["_id", "text"]]
    nothing = await d.call("list_snapshot", post=True, selection={"_other": "excluded"})
    assert nothing["values"] == []
    r = await d.client.post("/api/list_snapshot", json={"selection": {"": {"items": "maybe"}}}, headers=d.auth)
    assert r.status == 400 and "items" in (await r.json())["message"]
    r = await d.client.get("/api/get_table_column_names", headers=d.auth)
    body = await r.json()
    assert body == {"byComponent": {"": [
        {"name": "items", "columns": ["_id", "_creationTime", "list_id", "text", "done", "rank", "tags"]},
        {"name": "lists", "columns": ["_id", "_creationTime", "name"]}]}}
