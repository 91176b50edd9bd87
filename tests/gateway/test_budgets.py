"""Per-connection budgets and the global guard on subscription arguments.

A connection may hold at most `max_session_args_bytes` of query arguments
(each Add's args counted as compact JSON; beyond it: FatalError
"QueryArgsTooLarge"); all connections together at most `max_total_args_bytes`
(beyond it a new subscription gets a QueryFailed "Overloaded: ..." and the
connection keeps working). A connection runs at most
`max_inflight_requests_per_session` Mutations/Actions at once; past that the
server stops reading it until one finishes. The nodes run in-process so the
bounds can be small.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.gateway.served_node import served_node
from tests.reliability.reliability_wire import WsClient, http_call

PAD = 3000


def page_args(list_id: str, tag: int) -> dict[str, Any]:
    """Args of `lists:page` (whose paginationOpts take anything): about PAD bytes each."""
    return {"list_id": list_id, "paginationOpts": {"numItems": 5.0, "cursor": None, "pad": f"{tag:04d}" + "p" * PAD}}


def size(args: dict[str, Any]) -> int:
    return len(orjson.dumps([args]))


async def new_list(http: aiohttp.ClientSession, url: str) -> str:
    status, body = await http_call(http, url, "mutation", "lists:create", {"name": "l"})
    assert status == 200, body
    return body["value"]


async def test_a_connection_holding_too_many_argument_bytes_gets_a_fatal_error(tmp_path: Path) -> None:
    one = size(page_args("x" * 32, 0))
    async with served_node(tmp_path / "data", max_session_args_bytes=3 * one + 100) as (node, url):
        async with aiohttp.ClientSession() as http:
            list_id = await new_list(http, url)
            one = size(page_args(list_id, 0))
            client = await WsClient(url).connect(http)
            qids = [await client.subscribe("lists:page", page_args(list_id, i)) for i in range(3)]
            assert client.fatal is None and node.subscriptions.args_bytes == 3 * one
            # Removing a query frees its share of the budget.
            client.query_set_version += 1
            await client.send({"type": "ModifyQuerySet", "baseVersion": client.query_set_version - 1,
                               "newVersion": client.query_set_version,
                               "modifications": [{"type": "Remove", "queryId": qids[0]}]})
            await client.subscribe("lists:page", page_args(list_id, 3))
            assert client.fatal is None and node.subscriptions.args_bytes == 3 * one
            await client.send({"type": "ModifyQuerySet", "baseVersion": client.query_set_version,
                               "newVersion": client.query_set_version + 1, "modifications": [
                                   {"type": "Add", "queryId": 9, "udfPath": "lists:page", "args": [page_args(list_id, 4)]}]})
            await client.wait_closed()
            assert client.fatal is not None and client.fatal.startswith("QueryArgsTooLarge: "), client.fatal
            assert f"at most {node.config.max_session_args_bytes} bytes" in client.fatal
            assert f"would bring them to {4 * one}" in client.fatal and client.close_code == 1008
            await client.close()
            for _ in range(50):
                if node.subscriptions.args_bytes == 0:
                    break
                await asyncio.sleep(0.05)
            assert node.subscriptions.args_bytes == 0 and node.subscriptions.query_count == 0
            other = await WsClient(url).connect(http)  # the budget is per connection
            await other.subscribe("lists:page", page_args(list_id, 5))
            assert other.fatal is None
            await other.close()


async def test_the_global_guard_refuses_new_subscriptions_with_overloaded(tmp_path: Path) -> None:
    one = size(page_args("x" * 32, 0))
    async with served_node(tmp_path / "data", max_total_args_bytes=2 * one + 50) as (node, url):
        async with aiohttp.ClientSession() as http:
            list_id = await new_list(http, url)
            first = await WsClient(url).connect(http)
            for i in range(2):
                await first.subscribe("lists:page", page_args(list_id, i))
            second = await WsClient(url).connect(http)
            small = await second.subscribe("lists:all_lists")  # 4 bytes of args still fit
            refused = await second.subscribe("lists:page", page_args(list_id, 2))
            errors = second.queries[refused].errors
            assert len(errors) == 1 and errors[0].startswith("Overloaded: "), errors
            assert str(2 * one + 50) in errors[0]
            # The connection is fine: mutations run, the other query keeps updating, the id can be removed.
            assert second.fatal is None and not second.closed.is_set()
            resp = await second.mutate("lists:create", {"name": "still-works"})
            assert resp["success"] is True
            await second.wait_value(small, lambda v: any(d["name"] == "still-works" for d in v))
            second.query_set_version += 1
            await second.send({"type": "ModifyQuerySet", "baseVersion": second.query_set_version - 1,
                               "newVersion": second.query_set_version,
                               "modifications": [{"type": "Remove", "queryId": refused}]})
            await second.subscribe("lists:all_lists")
            assert second.fatal is None and not second.violations
            # Once the first connection is gone there is room again.
            await first.close()
            for _ in range(50):
                if node.subscriptions.args_bytes < one:
                    break
                await asyncio.sleep(0.05)
            again = await second.subscribe("lists:page", page_args(list_id, 3))
            assert not second.queries[again].errors and second.queries[again].values
            await second.close()


async def test_a_request_flood_is_throttled_by_backpressure_not_refused(tmp_path: Path) -> None:
    limit = 4
    async with served_node(tmp_path / "data", max_inflight_requests_per_session=limit) as (node, url):
        async with aiohttp.ClientSession() as http:
            client = await WsClient(url, session_id=str(uuid.uuid4())).connect(http)
            await client.mutate("lists:create", {"name": "warm-up"})
            session = next(iter(node.sessions))
            peak = 0
            done = asyncio.Event()

            async def watch() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, session._inflight)
                    await asyncio.sleep(0)
            watcher = asyncio.create_task(watch())
            answers = await asyncio.gather(*(client.mutate("lists:create", {"name": f"n{i}"}, timeout=60)
                                             for i in range(100)))
            done.set()
            await watcher
            assert all(a["success"] for a in answers) and client.fatal is None, [a for a in answers if not a["success"]][:1]
            assert 1 < peak <= limit, peak
            await client.close()


JS_DIR = Path(__file__).resolve().parents[1] / "js"
OVERLOADED_SCENARIO = r"""
import { argsFrom, emit, finish, makeClient } from "./lib.mjs";
const config = JSON.parse(process.argv[1]);
const client = makeClient(config.url);
setTimeout(() => finish(1, [client], { reason: "timeout" }), 15000);
let mutating = false;
let mutated = false;
let listed = false;
const maybeDone = () => { if (mutated && listed) void finish(0, [client]); };
client.onUpdate("lists:page", argsFrom(config.bigArgs), () => emit({ event: "big_update" }), (err) => {
  emit({ event: "big_error", message: err.message });
  if (!mutating) {
    mutating = true;
    client.mutation("lists:create", { name: "after-overload" }).then(
      () => { emit({ event: "mutated" }); mutated = true; maybeDone(); },
      (e) => emit({ event: "mutation_error", message: e.message }));
  }
});
client.onUpdate("lists:all_lists", {}, (lists) => {
  const names = lists.map((d) => d.name);
  emit({ event: "lists", names });
  if (names.includes("after-overload")) { listed = true; maybeDone(); }
});
"""


async def test_the_official_js_client_sees_overloaded_on_that_query_and_keeps_working(tmp_path: Path) -> None:
    """What the JS client does with the global guard's QueryFailed: an error for that one query, nothing else."""
    if shutil.which("node") is None or not (JS_DIR / "node_modules" / "convex").is_dir():
        pytest.fail("the official JS client test needs node and tests/js/node_modules (`make js`)")
    async with served_node(tmp_path / "data", max_total_args_bytes=1000) as (_node, url):
        async with aiohttp.ClientSession() as http:
            list_id = await new_list(http, url)
        proc = await asyncio.create_subprocess_exec(
            "node", "--input-type=module", "-e", OVERLOADED_SCENARIO,
            json.dumps({"url": url, "bigArgs": page_args(list_id, 0)}),
            cwd=JS_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    events = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    described = "\n".join(map(json.dumps, events)) + "\n--- stderr:\n" + err.decode()[-3000:]
    assert proc.returncode == 0, described
    errors = [e["message"] for e in events if e["event"] == "big_error"]
    assert errors and "Overloaded: " in errors[0] and "[CONVEX Q(lists:page)]" in errors[0], described
    assert not any(e["event"] == "big_update" for e in events), described
    assert any(e["event"] == "mutated" for e in events), described
    assert "FATAL" not in err.decode(), described
