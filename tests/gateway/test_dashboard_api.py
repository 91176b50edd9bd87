"""The dashboard's admin endpoints and built-in `_system/dashboard:*` functions, and environment variables
end to end: through the log (a restore and a replica see them), `ctx.env` in queries, mutations and actions,
and `tape env`."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from engine.app import App
from engine.env_vars import ENV_TABLE
from gateway.config import ServerConfig
from gateway.node import Node
from gateway.replica import ADMIN_KEY_ENV
from tests.gateway.served_node import served_node
from tests.gateway.test_slow_queries import Client

APP = "dashboard"


async def _post(http: aiohttp.ClientSession, url: str, path: str, body: Any, key: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Convex {key}"} if key else {}
    async with http.post(url + path, json=body, headers=headers) as r:
        return r.status, await r.json()


async def _get(http: aiohttp.ClientSession, url: str, path: str, key: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Convex {key}"} if key else {}
    async with http.get(url + path, headers=headers) as r:
        return r.status, await r.json()


async def _call(http: aiohttp.ClientSession, url: str, kind: str, path: str, args: dict[str, Any]) -> Any:
    async with http.post(url + f"/api/{kind}", json={"path": path, "args": args, "format": "json"}) as r:
        body = await r.json()
    assert body["status"] == "success", body
    return body["value"]


async def _run(http: aiohttp.ClientSession, url: str, key: str, path: str, args: dict[str, Any]) -> tuple[int, Any]:
    return await _post(http, url, "/api/admin/run", {"path": path, "args": args, "format": "json"}, key)


async def test_env_vars_through_the_log_ctx_env_restore_and_replica(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async with served_node(tmp_path / "data", app=APP) as (node, url), aiohttp.ClientSession() as http:
        key = node.admin.value
        assert await _call(http, url, "query", "messages:greeting", {}) == "hello, 0 variable(s)"
        status, body = await _post(http, url, "/api/admin/env", {"set": {"GREETING": "hi", "SIGNATURE": "ops"}}, key)
        assert status == 200 and body["variables"] == [{"name": "GREETING", "value": "hi"},
                                                       {"name": "SIGNATURE", "value": "ops"}]
        set_offset = body["offset"]
        status, body = await _post(http, url, "/api/admin/env", {"set": {"GREETING": "hi"}}, key)
        assert status == 200 and body["offset"] == set_offset  # nothing changed: nothing logged
        # The next call of every kind sees the change, without a restart.
        assert await _call(http, url, "query", "messages:greeting", {}) == "hi, 2 variable(s)"
        mid = await _call(http, url, "mutation", "messages:send_signed", {"body": "x"})
        assert (await _run(http, url, key, "_system/dashboard:get", {"id": mid}))[1]["value"]["author"] == "ops"
        assert await _call(http, url, "action", "messages:env_in_action", {}) == {"greeting": "hi",
                                                                                  "names": ["GREETING", "SIGNATURE"]}
        # The record is in the log, as a system record of the committer.
        commits = (await _get(http, url, "/api/admin/commits?include_system=1", key))[1]["commits"]
        env_commit = next(c for c in commits if c["offset"] == set_offset)
        assert env_commit["function"] == "_system/env:set" and {w["table"] for w in env_commit["writes"]} == {ENV_TABLE}
        # Bad names and values are refused with the reason; nothing is written.
        for bad, why in (({"set": {"1X": "v"}}, "must start with a letter"), ({"set": {"A" * 41: "v"}}, "40"),
                         ({"set": {"A-B": "v"}}, "letters, digits"), ({"set": {"BIG": "x" * 8193}}, "8192 byte"),
                         ({"set": {"N": 5}}, "must be a string"), ({"remove": ["NOPE"]}, "NOPE is not set")):
            status, body = await _post(http, url, "/api/admin/env", bad, key)
            assert status == 400 and why in body["message"], (bad, body)
        assert (await _post(http, url, "/api/admin/env", {"set": {"X": "1"}}, None))[0] == 401
        # A replica following the log sees the variables (and their later change).
        monkeypatch.setenv(ADMIN_KEY_ENV, key)
        async with served_node(tmp_path / "replica", app=APP, role="replica", committer_url=url,
                               log_url=str(tmp_path / "data" / "log")) as (replica, replica_url):
            await _post(http, url, "/api/admin/env", {"set": {"GREETING": "hey"}, "remove": ["SIGNATURE"]}, key)
            for _ in range(100):
                if await _call(http, replica_url, "query", "messages:greeting", {}) == "hey, 1 variable(s)":
                    break
                await asyncio.sleep(0.05)
            assert await _call(http, replica_url, "query", "messages:greeting", {}) == "hey, 1 variable(s)"
            assert (await _get(http, replica_url, "/api/admin/env", replica.admin.value))[1]["variables"] == [
                {"name": "GREETING", "value": "hey"}]
            status, body = await _post(http, replica_url, "/api/admin/env", {"set": {"X": "1"}}, replica.admin.value)
            assert status == 409 and "committer" in body["message"]
        # Time travel reads the values of its moment.
        status, body = await _post(http, url, "/api/admin/query_at", {"path": "messages:greeting", "args": {},
                                                                      "offset": set_offset - 1, "format": "json"}, key)
        assert status == 200 and body["value"] == "hello, 0 variable(s)"
        # A restore to the moment after the first set carries the values of then.
        status, body = await _post(http, url, "/api/admin/restore", {"offset": set_offset,
                                                                     "dest": str(tmp_path / "restored")}, key)
        assert status == 200, body
        assert body["dest"] == str(tmp_path / "restored") and "tape serve" in body["command"]
    restored = Node(ServerConfig(app_dir=node.config.app_dir, data_dir=tmp_path / "restored"), App.load(node.config.app_dir))
    await restored.start()
    try:
        assert restored.runtime.run_query("messages:greeting", {}).value == "hi, 2 variable(s)"
    finally:
        await restored.stop()


async def test_dashboard_functions_tables_and_system_functions(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", app=APP) as (node, url), aiohttp.ClientSession() as http:
        key = node.admin.value
        ids = [await _call(http, url, "mutation", "messages:send", {"author": a, "body": b})
               for a, b in (("ann", "one"), ("bob", "two"), ("ann", "three"))]
        status, body = await _get(http, url, "/api/admin/functions", key)
        assert status == 200
        purge = next(f for f in body["functions"] if f["path"] == "messages:purge_author")
        assert purge["kind"] == "mutation" and purge["internal"] is True
        assert purge["args"] == {"type": "object", "value": {"author": {"fieldType": {"type": "string"}, "optional": False}}}
        assert not any(f["path"].startswith("_system/") for f in body["functions"])
        tables = {t["name"]: t for t in (await _get(http, url, "/api/admin/tables", key))[1]["tables"]}
        assert tables["messages"]["count"] == 3 and tables["messages"]["indexes"]["by_author"] == ["author"]
        assert tables["messages"]["document"]["value"]["likes"]["fieldType"] == {"type": "number"}
        # A page of a table by an index, newest first, filtered.
        page = (await _run(http, url, key, "_system/dashboard:documents",
                           {"table": "messages", "index": "by_author", "order": "desc",
                            "paginationOpts": {"numItems": 10, "cursor": None}}))[1]["value"]
        assert [d["author"] for d in page["page"]] == ["bob", "ann", "ann"]
        page = (await _run(http, url, key, "_system/dashboard:documents",
                           {"table": "messages", "filter": {"field": "author", "value": "ann"},
                            "paginationOpts": {"numItems": 10, "cursor": None}}))[1]["value"]
        assert [d["body"] for d in page["page"]] == ["one", "three"]
        # Edit, insert, delete through the built-in mutations (schema-validated).
        assert (await _run(http, url, key, "_system/dashboard:patch", {"id": ids[0], "fields": {"likes": 5}}))[0] == 200
        status, body = await _run(http, url, key, "_system/dashboard:patch", {"id": ids[0], "fields": {"likes": "x"}})
        assert status == 560 and "likes" in body["errorMessage"]
        new_id = (await _run(http, url, key, "_system/dashboard:insert",
                             {"table": "messages", "document": {"author": "cy", "body": "b", "likes": 1}}))[1]["value"]
        assert (await _run(http, url, key, "_system/dashboard:delete", {"id": ids[1]}))[0] == 200
        listed = await _call(http, url, "query", "messages:list", {})
        assert {d["_id"]: d["likes"] for d in listed} == {ids[0]: 5, ids[2]: 0, new_id: 1}
        # The built-ins are the admin's only: an anonymous caller is refused.
        async with http.post(url + "/api/query", json={"path": "_system/dashboard:documents", "format": "json",
                                                       "args": {"table": "messages",
                                                                "paginationOpts": {"numItems": 1, "cursor": None}}}) as r:
            assert "admin key" in (await r.json())["errorMessage"]
        # Running an internal function as the admin, and the commits it made.
        status, body = await _run(http, url, key, "messages:purge_author", {"author": "ann"})
        assert status == 200 and body["value"] == 2
        commits = (await _get(http, url, "/api/admin/commits?limit=3&docs=1", key))[1]["commits"]
        assert commits[0]["function"] == "messages:purge_author"
        assert [w["op"] for w in commits[0]["writes"]] == ["delete", "delete"]
        assert commits[0]["writes"][0]["prev"]["author"] == "ann"
        crons = (await _get(http, url, "/api/admin/crons", key))[1]["crons"]
        assert [(c["name"], c["function"], c["args"], c["lastScheduledTime"]) for c in crons] == [
            ("purge spam", "messages:purge_author", {"author": "spam"}, None)]
        assert crons[0]["schedule"].startswith("cron ") and crons[0]["nextScheduledTime"] > 0
        stats = (await _get(http, url, "/api/admin/stats", key))[1]
        assert stats["offset"] == node.runtime.projection.applied_offset and stats["role"] == "committer"
        send = next(f for f in stats["functions"] if f["path"] == "messages:send")
        assert send["calls"] >= 3 and 0 < send["p50"] <= send["p99"] and stats["allFunctions"]["calls"] >= send["calls"]
        patch = next(f for f in stats["functions"] if f["path"] == "_system/dashboard:patch")
        assert patch["errors"] >= 1  # the refused edit above
        async with http.get(url + "/_dashboard") as r:
            assert r.status == 200 and "<div id=\"root\">" in await r.text()


async def test_live_queries_follow_env_changes_and_the_admin_reads_tables_over_sync(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", app=APP) as (node, url), aiohttp.ClientSession() as http:
        key = node.admin.value
        user = await Client.open(http, url, "user-tab")
        await user.add((1, "messages:greeting", {}))
        await user.until(lambda v: v.get(1) == "hello, 0 variable(s)")
        await _post(http, url, "/api/admin/env", {"set": {"GREETING": "salut"}}, key)
        await user.until(lambda v: v.get(1) == "salut, 1 variable(s)")  # ctx.env is in the query's read set
        # The dashboard's way in: Authenticate with the admin key, then subscribe to a table's page.
        admin = await Client.open(http, url, "dashboard-tab")
        await admin.send({"type": "Authenticate", "tokenType": "Admin", "value": key, "baseVersion": 0})
        page_args = {"table": "messages", "order": "desc", "paginationOpts": {"numItems": 10.0, "cursor": None}}
        await admin.add((1, "_system/dashboard:documents", page_args),
                        (2, "_system/dashboard:documents", {**page_args, "table": "_environment_variables"}))
        await admin.until(lambda v: 1 in v and 2 in v)
        assert admin.values[1]["page"] == [] and [d["name"] for d in admin.values[2]["page"]] == ["GREETING"]
        await _call(http, url, "mutation", "messages:send", {"author": "ann", "body": "live"})
        await admin.until(lambda v: [d["body"] for d in v[1]["page"]] == ["live"])
        # Without the admin key the same subscription fails.
        await user.add((2, "_system/dashboard:documents", page_args))
        await user.until(lambda v: 2 in v)
        assert user.values[2][0] == "failed" and "admin key" in user.values[2][1]
        await user.ws.close()
        await admin.ws.close()
