"""End-to-end tests of `client.Client` against real Tape servers.

Most tests run a `tape dev` subprocess (``server_factory``). Some put a small
recording WebSocket relay (`Relay`) between the client and the real server,
to see exactly what went over the wire and to cut a connection at a chosen
moment; the cleanup tests run the server in-process to look at its
subscription table.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from client import (
    ClientAppError,
    ClientClosedError,
    Client,
    ConnectionLostError,
    FatalServerError,
    FunctionError,
    sync_url,
)
from engine.app import App
from gateway.config import ServerConfig
from gateway.node import Node
from gateway.server import build_app

APPS = Path(__file__).parent.parent / "apps"


# --- helpers -------------------------------------------------------------------------

async def eventually(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def same_value(a: Any, b: Any) -> bool:
    """Equality in the Convex value model: types must match too (1 != 1.0, -0.0 != 0.0, nan == nan)."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if type(a) is list:
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return a == b


def as_client_sees(value: Any) -> Any:
    """`value` after the int/float rule (`engine.client_values`): undeclared ints within ±2**53 become floats."""
    if type(value) is int:
        return float(value) if -(2**53) <= value <= 2**53 else value
    if type(value) is list:
        return [as_client_sees(v) for v in value]
    if type(value) is dict:
        return {k: as_client_sees(v) for k, v in value.items()}
    return value


Hook = Callable[[int, dict[str, Any]], "dict[str, Any] | None"]


class Relay:
    """A WebSocket relay in front of a real server that records every message.

    ``log`` holds ``(direction, connection index, message)`` with direction
    ``"c2s"``, ``"s2c"`` or ``"dropped"``. Set ``cut_after`` to a predicate on
    client messages: the matching message is forwarded, then everything the
    server answers is dropped and both sockets are closed after
    ``cut_delay`` seconds - the client never sees the answer. ``s2c_hook``
    may rewrite (or, returning None, drop) server messages.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = sync_url(upstream)
        self.log: list[tuple[str, int, dict[str, Any]]] = []
        self.cut_after: Callable[[dict[str, Any]], bool] | None = None
        self.cut_delay = 0.5
        self.s2c_hook: Hook | None = None
        self.connections = 0
        self._live: list[tuple[web.WebSocketResponse, aiohttp.ClientWebSocketResponse]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "Relay":
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_get("/api/sync", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        await self.drop_all()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def drop_all(self) -> None:
        """Cut every live connection (both sides), like a network failure."""
        for down, up in list(self._live):
            await up.close()
            await down.close()

    def sent(self, kind: str, connection: int | None = None) -> list[dict[str, Any]]:
        """Client messages of type ``kind`` (on one connection, or all)."""
        return [m for d, c, m in self.log if d == "c2s" and m.get("type") == kind and connection in (None, c)]

    def received(self, kind: str, connection: int | None = None) -> list[dict[str, Any]]:
        """Server messages of type ``kind`` relayed to the client."""
        return [m for d, c, m in self.log if d == "s2c" and m.get("type") == kind and connection in (None, c)]

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        assert self._session is not None
        down = web.WebSocketResponse(max_msg_size=0)
        await down.prepare(request)
        conn = self.connections
        self.connections += 1
        up = await self._session.ws_connect(self.upstream, max_msg_size=0)
        self._live.append((down, up))
        cut = False

        async def server_to_client() -> None:
            async for msg in up:
                if msg.type is not WSMsgType.TEXT:
                    break
                message = orjson.loads(msg.data)
                if cut:
                    self.log.append(("dropped", conn, message))
                    continue
                if self.s2c_hook is not None:
                    message = self.s2c_hook(conn, message)
                    if message is None:
                        continue
                self.log.append(("s2c", conn, message))
                await down.send_str(orjson.dumps(message).decode())
            await down.close()

        pump = asyncio.get_running_loop().create_task(server_to_client())
        try:
            async for msg in down:
                if msg.type is not WSMsgType.TEXT:
                    break
                message = orjson.loads(msg.data)
                self.log.append(("c2s", conn, message))
                trigger = self.cut_after is not None and self.cut_after(message)
                if trigger:
                    self.cut_after = None
                    cut = True
                await up.send_str(msg.data)
                if trigger:
                    await asyncio.sleep(self.cut_delay)
                    break
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            await up.close()
            await down.close()
            self._live.remove((down, up))
        return down


@pytest.fixture
async def relay_factory() -> AsyncIterator[Callable[[str], Any]]:
    made: list[Relay] = []

    async def make(upstream: str) -> Relay:
        relay = await Relay(upstream).start()
        made.append(relay)
        return relay

    yield make
    for relay in made:
        await relay.close()


@pytest.fixture
async def inproc(tmp_path: Path) -> AsyncIterator[tuple[Node, str]]:
    """The kitchen app served in-process: (node, url)."""
    config = ServerConfig(app_dir=APPS / "kitchen", data_dir=tmp_path / "inproc")
    node = Node(config, App.load(APPS / "kitchen"))
    server = TestServer(build_app(node), host="127.0.0.1")
    await server.start_server()
    yield node, str(server.make_url("/"))
    await server.close()


# --- subscribe / mutate ------------------------------------------------------------------

async def test_subscribe_then_other_client_mutates(server_factory) -> None:
    server = server_factory("kitchen")
    async with Client(server.url) as alice, Client(server.url) as bob:
        list_id = await alice.mutation("lists:create", {"name": "groceries"})
        sub = alice.subscribe("lists:items", {"list_id": list_id})
        assert await sub.next(timeout=5) == []

        await bob.mutation("lists:add", {"list_id": list_id, "text": "milk"})
        items = await sub.next(timeout=5)
        assert [i["text"] for i in items] == ["milk"]

        # Read-your-writes: once alice's own mutation returns, the subscription already has it.
        item_id = await alice.mutation("lists:add", {"list_id": list_id, "text": "eggs"})
        items = await sub.next(timeout=0)
        assert [i["text"] for i in items] == ["milk", "eggs"]
        assert items[1]["_id"] == item_id

        await bob.mutation("lists:toggle", {"id": item_id})
        assert [i["done"] for i in await sub.next(timeout=5)] == [False, True]
        assert await alice.query("lists:open_items", {"list_id": list_id}) == ["milk"]
        made = await bob.action("lists:create_via_action", {"name": "x"})
        assert made["name"] == "x" and made["secret"] == "internal"
        assert (await bob.query("lists:get", {"id": made["id"]}))["name"] == "x"
        assert alice.connection_count == 1 and alice.state == "connected"


async def test_async_for_yields_current_result_then_changes(server_factory) -> None:
    server = server_factory("kitchen")
    async with Client(server.url) as tape:
        list_id = await tape.mutation("lists:create", {"name": "l"})
        seen: list[list[str]] = []

        async def consume() -> None:
            async for items in tape.subscribe("lists:items", {"list_id": list_id}):
                seen.append([i["text"] for i in items])
                if len(seen) == 3:
                    break

        task = asyncio.create_task(consume())
        await eventually(lambda: len(seen) == 1)
        await tape.mutation("lists:add", {"list_id": list_id, "text": "a"})
        await eventually(lambda: len(seen) == 2)
        await tape.mutation("lists:add", {"list_id": list_id, "text": "b"})
        await asyncio.wait_for(task, 5)
        assert seen == [[], ["a"], ["a", "b"]]
        await eventually(lambda: tape.query_table() == [], what="the subscription to go after break")


# --- many subscriptions on one socket ---------------------------------------------------------

async def test_many_subscriptions_share_one_socket_and_dedupe(server_factory, relay_factory) -> None:
    server = server_factory("kitchen")
    relay = await relay_factory(server.url)
    async with Client(relay.url) as tape:
        list_ids = [await tape.mutation("lists:create", {"name": f"l{i}"}) for i in range(50)]
        subs = []
        for list_id in list_ids:
            subs.append(tape.subscribe("lists:items", {"list_id": list_id}))
            subs.append(tape.subscribe("lists.js:items", {"list_id": list_id}))  # same query, other spelling
        latest = [tape.subscribe("lists:latest", {"list_id": list_ids[0], "n": 2.0}),
                  tape.subscribe("lists:latest", {"n": 2.0, "list_id": list_ids[0]})]  # key order is irrelevant
        distinct = tape.subscribe("lists:latest", {"list_id": list_ids[0], "n": 3.0})
        for sub in subs + latest + [distinct]:
            assert await sub.next(timeout=5) == []

        table = tape.query_table()
        assert len(table) == 52
        assert all(row.subscribers == 2 for row in table if row.query_id != distinct.query_id)
        assert len({row.query_id for row in table}) == 52
        for a, b in zip(subs[::2], subs[1::2]):
            assert a.query_id == b.query_id
        assert latest[0].query_id == latest[1].query_id != distinct.query_id
        assert len({s.query_id for s in subs[::2]}) == 50

        # The server saw each distinct query exactly once, on a single socket.
        adds = [m for msg in relay.sent("ModifyQuerySet") for m in msg["modifications"] if m["type"] == "Add"]
        assert len(adds) == 52
        assert relay.connections == 1 and tape.connection_count == 1
        # Subscribing in one event-loop tick sends one ModifyQuerySet (after the handshake's).
        assert len(relay.sent("ModifyQuerySet")) == 2

        await tape.mutation("lists:add", {"list_id": list_ids[7], "text": "x"})
        for i, sub in enumerate(subs):
            assert sub.received == (2 if i // 2 == 7 else 1)
        assert [i["text"] for i in await subs[14].next(timeout=0)] == ["x"]
        assert [i["text"] for i in await subs[15].next(timeout=0)] == ["x"]


# --- restart mid-stream -------------------------------------------------------------------

async def test_server_restart_mid_stream_exactly_once(server_factory) -> None:
    server = server_factory("kitchen")
    async with Client(server.url, backoff_max=0.5) as tape:
        states: list[str] = []
        tape.on_state_change(states.append)
        list_id = await tape.mutation("lists:create", {"name": "restart"})
        sub = tape.subscribe("lists:items", {"list_id": list_id})
        assert await sub.next(timeout=5) == []

        acked: list[str] = []
        stop = asyncio.Event()

        async def worker(w: int) -> None:
            i = 0
            while not stop.is_set():
                text = f"w{w}-{i}"
                await tape.mutation("lists:add", {"list_id": list_id, "text": text})
                acked.append(text)
                i += 1

        workers = [asyncio.create_task(worker(w)) for w in range(4)]
        await eventually(lambda: len(acked) >= 20)
        await asyncio.to_thread(server.kill)  # SIGKILL, mutations in flight
        await eventually(lambda: tape.state != "connected", what="the client to notice the dead server")
        at_kill = len(acked)
        issued_while_down = asyncio.create_task(tape.mutation("lists:add", {"list_id": list_id, "text": "while-down"}))
        await asyncio.sleep(0.3)
        assert len(acked) == at_kill and not issued_while_down.done()
        assert tape.pending_requests == 5  # one per worker, all to be retried, plus the new one
        await asyncio.to_thread(server.start)  # same port, same data directory
        await eventually(lambda: len(acked) >= at_kill + 20, timeout=30, what="mutations after the restart")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), 20)
        await asyncio.wait_for(issued_while_down, 10)
        acked.append("while-down")

        assert tape.connection_count >= 2
        assert "disconnected" in states and states[-1] == "connected"
        # The subscription resumed: its latest value holds every acknowledged mutation exactly once.
        texts = [i["text"] for i in await sub.next(timeout=5)]
        assert len(texts) == len(set(texts)), "a retried mutation was applied twice"
        assert sorted(texts) == sorted(acked)
        # ... and it keeps receiving later changes.
        await tape.mutation("lists:add", {"list_id": list_id, "text": "after"})
        assert [i["text"] for i in await sub.next(timeout=0)][-1] == "after"
    async with Client(server.url) as fresh:
        texts = [i["text"] for i in await fresh.query("lists:items", {"list_id": list_id})]
        assert sorted(texts) == sorted(acked + ["after"])


async def test_reconnect_resends_unanswered_mutation_with_same_request_id(server_factory, relay_factory) -> None:
    server = server_factory("kitchen")
    relay = await relay_factory(server.url)
    async with Client(relay.url) as tape:
        list_id = await tape.mutation("lists:create", {"name": "l"})
        sub_a = tape.subscribe("lists:items", {"list_id": list_id})
        sub_b = tape.subscribe("lists:all_lists")
        assert await sub_a.next(timeout=5) == []
        assert len(await sub_b.next(timeout=5)) == 1

        # The server commits the mutation, but the connection dies before its answer gets through.
        relay.cut_after = lambda m: m.get("type") == "Mutation" and m["args"][0].get("text") == "once"
        item_id = await asyncio.wait_for(tape.mutation("lists:add", {"list_id": list_id, "text": "once"}), 20)

        assert [m["type"] for d, c, m in relay.log if d == "dropped"].count("MutationResponse") == 1
        first, second = relay.sent("Connect")
        assert first["connectionCount"] == 0 and first["lastCloseReason"] == "InitialConnect"
        assert second["sessionId"] == first["sessionId"] == tape.session_id
        assert second["connectionCount"] == 1 and "maxObservedTimestamp" in second
        resync = relay.sent("ModifyQuerySet", connection=1)[0]
        assert (resync["baseVersion"], resync["newVersion"]) == (0, 1)
        assert sorted(m["queryId"] for m in resync["modifications"]) == sorted([sub_a.query_id, sub_b.query_id])
        original = [m for m in relay.sent("Mutation", connection=0) if m["args"][0].get("text") == "once"]
        retried = relay.sent("Mutation", connection=1)
        assert [m["requestId"] for m in retried] == [original[0]["requestId"]]

        items = await sub_a.next(timeout=5)
        assert [(i["text"], i["_id"]) for i in items] == [("once", item_id)]  # applied once, original result


# --- cleanup of server-side state -------------------------------------------------------------

async def test_cancel_break_and_close_remove_server_queries(inproc) -> None:
    node, url = inproc
    count = lambda: node.subscriptions.query_count  # noqa: E731
    async with Client(url) as tape:
        list_id = await tape.mutation("lists:create", {"name": "l"})
        args = {"list_id": list_id}

        # Cancelling the consuming task.
        seen: list[Any] = []

        async def consume() -> None:
            async for items in tape.subscribe("lists:items", args):
                seen.append(items)

        task = asyncio.create_task(consume())
        await eventually(lambda: seen == [[]])
        assert count() == 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await eventually(lambda: count() == 0, what="the query to be removed after cancel")
        assert tape.query_table() == []

        # Breaking out of the loop.
        async for _ in tape.subscribe("lists:items", args):
            assert count() == 1
            break
        await eventually(lambda: count() == 0, what="the query to be removed after break")

        # A failing query ends the loop with an exception; that also leaves.
        with pytest.raises(FunctionError, match="tries_to_write"):
            async for _ in tape.subscribe("lists:tries_to_write"):
                pass
        await eventually(lambda: count() == 0, what="the query to be removed after an error")

        # Duplicates: only the last local subscriber leaving removes the server query.
        s1, s2 = tape.subscribe("lists:items", args), tape.subscribe("lists:items", args)
        await s1.next(timeout=5)
        await s2.next(timeout=5)
        assert count() == 1
        s1.close()
        await tape.mutation("lists:add", {"list_id": list_id, "text": "x"})  # a round trip after the close
        assert count() == 1 and [i["text"] for i in await s2.next(timeout=0)] == ["x"]
        with pytest.raises(StopAsyncIteration):
            await s1.next()
        async with s2:
            pass
        await eventually(lambda: count() == 0)

        # query() is a one-shot subscription.
        assert len(await tape.query("lists:items", args)) == 1
        await eventually(lambda: count() == 0)
        session = next(iter(node.sessions))
        assert session.queries == {}


async def test_close_sends_remove_and_server_confirms(server_factory, relay_factory) -> None:
    server = server_factory("kitchen")
    relay = await relay_factory(server.url)
    async with Client(relay.url) as tape:
        sub = tape.subscribe("lists:all_lists")
        await sub.next(timeout=5)
        query_id = sub.query_id
        sub.close()
        await eventually(lambda: any(m.get("type") == "QueryRemoved" for t in relay.received("Transition")
                                     for m in t["modifications"]))
        removes = [m for msg in relay.sent("ModifyQuerySet") for m in msg["modifications"] if m["type"] == "Remove"]
        assert removes == [{"type": "Remove", "queryId": query_id}]
        # Subscribing and leaving in the same tick never bothers the server.
        tape.subscribe("lists:all_lists").close()
        await tape.mutation("lists:create", {"name": "x"})
        assert len(relay.sent("ModifyQuerySet")) == 2


# --- errors -----------------------------------------------------------------------------------------

async def test_app_error_data_arrives_as_exception_data(server_factory) -> None:
    server = server_factory("values")
    async with Client(server.url) as tape:
        with pytest.raises(ClientAppError) as info:
            await tape.mutation("values:fail", {"data": {"code": "NOPE", "n": 5, "raw": b"\x01"}})
        assert same_value(info.value.data, {"code": "NOPE", "n": 5.0, "raw": b"\x01"})
        assert info.value.kind == "mutation" and info.value.path == "values:fail"

        with pytest.raises(ClientAppError) as info:
            await tape.action("values:fail_action", {"data": "plain message"})
        assert info.value.data == "plain message" and info.value.message == "Uncaught ConvexError: plain message"

        # Engine errors (bad arguments, unknown functions) carry no data.
        with pytest.raises(FunctionError) as plain:
            await tape.mutation("values:put", {"key": 1.0, "value": 2.0})
        assert not isinstance(plain.value, ClientAppError) and plain.value.data is None
        with pytest.raises(FunctionError):
            await tape.query("values:nope")

        # A failing subscription raises with data, stays open, and recovers.
        await tape.mutation("values:put", {"key": "k", "value": "bad"})
        sub = tape.subscribe("values:strict_get", {"key": "k"})
        with pytest.raises(ClientAppError) as info:
            await sub.next(timeout=5)
        assert info.value.data == {"code": "BAD_CELL", "key": "k"}
        with pytest.raises(ClientAppError):
            await tape.query("values:strict_get", {"key": "k"})
        await tape.mutation("values:put", {"key": "k", "value": 2.5})
        assert await sub.next(timeout=0) == 2.5
        await tape.mutation("values:put", {"key": "k", "value": "bad"})
        with pytest.raises(ClientAppError):
            await sub.next(timeout=0)


async def test_action_in_flight_fails_on_disconnect_mutations_survive(server_factory, relay_factory) -> None:
    server = server_factory("values")
    relay = await relay_factory(server.url)
    async with Client(relay.url) as tape:
        await tape.wait_connected(5)
        action = asyncio.create_task(tape.action("values:slow_action", {"seconds": 1.0}))
        await eventually(lambda: bool(relay.sent("Action")))
        relay.cut_after = lambda m: m.get("type") == "Mutation"
        relay.cut_delay = 0.0
        mutation = asyncio.create_task(tape.mutation("values:put", {"key": "m", "value": 1.0}))
        with pytest.raises(ConnectionLostError, match="slow_action"):
            await asyncio.wait_for(action, 5)
        assert await asyncio.wait_for(mutation, 10) == 1.0
        assert tape.connection_count == 2
        assert len(relay.sent("Action")) == 1  # never retried
        assert await tape.query("values:get", {"key": "m"}) == 1.0


# --- slow consumers ------------------------------------------------------------------------------------

async def test_slow_consumer_does_not_stall_other_subscriptions(server_factory) -> None:
    server = server_factory("values")
    async with Client(server.url) as tape:
        slow = tape.subscribe("values:get", {"key": "slow"})
        fast = tape.subscribe("values:get", {"key": "fast"})
        assert await slow.next(timeout=5) is None
        assert await fast.next(timeout=5) is None
        slow_seen: list[Any] = []
        unblock = asyncio.Event()

        async def stuck() -> None:
            async for value in slow:
                slow_seen.append(value)
                await unblock.wait()  # holds its first update until the test lets go: slower than any writer

        consumer = asyncio.create_task(stuck())
        fast_seen = []
        for i in range(30):
            await tape.mutation("values:put", {"key": "slow", "value": float(i)})
            await tape.mutation("values:put", {"key": "fast", "value": float(i)})
            # A mutation returns once its Transition is applied: the fast mailbox already holds it.
            fast_seen.append(await fast.next(timeout=0))
        assert fast_seen == [float(i) for i in range(30)]
        assert fast.skipped == 0
        assert len(slow_seen) == 1  # the slow consumer took one update and is still stuck on it
        unblock.set()
        await eventually(lambda: slow_seen[-1] == 29.0, timeout=5, what="the slow consumer to catch up")
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        assert slow_seen == sorted(slow_seen) and len(slow_seen) == 2  # one-slot mailbox: straight to the newest
        # Every result that reached the slow mailbox was either read (the initial None too) or skipped.
        assert slow.received >= 31 and slow.received - slow.skipped == len(slow_seen) + 1


# --- values -----------------------------------------------------------------------------------------------

ROUND_TRIP = {
    "int": 2**62,
    "int_min": -(2**63),
    "int_max": 2**63 - 1,
    "small_int": 1,
    "float_integral": 1.0,
    "float": 0.1,
    "inf": math.inf,
    "ninf": -math.inf,
    "negzero": -0.0,
    "nan": math.nan,
    "bytes": b"\x00\xff\x10binary",
    "empty_bytes": b"",
    "nested": [1, 2.5, None, True, False, "s", {"deep": [2**40, b"\x01"]}],
    "unicode": "grüße ✓",
}


NON_FINITE = ("inf", "ninf", "nan")


async def test_int64_bytes_and_floats_round_trip(server_factory) -> None:
    server = server_factory("values")
    async with Client(server.url) as tape:
        seen = as_client_sees(ROUND_TRIP)  # ints beyond ±2**53 stay exact, smaller ones arrive as floats
        assert same_value(await tape.query("values:echo", {"value": ROUND_TRIP}), seen)
        assert same_value(await tape.mutation("values:echo_mutation", {"value": ROUND_TRIP}), seen)
        assert same_value(await tape.action("values:echo_action", {"value": ROUND_TRIP}), seen)
        # Through a stored document and a subscription (finite floats; see the next test).
        finite = {k: v for k, v in ROUND_TRIP.items() if k not in NON_FINITE}
        sub = tape.subscribe("values:get", {"key": "v"})
        assert await sub.next(timeout=5) is None
        stored = await tape.mutation("values:put", {"key": "v", "value": finite})
        assert same_value(stored, as_client_sees(finite))
        assert same_value(await sub.next(timeout=0), as_client_sees(finite))
        # int and float arguments are different queries (int64 vs float64).
        a, b = tape.subscribe("values:echo", {"value": 1}), tape.subscribe("values:echo", {"value": 1.0})
        assert a.query_id != b.query_id
        assert same_value(await a.next(timeout=5), 1.0) and same_value(await b.next(timeout=5), 1.0)


async def test_non_finite_floats_survive_a_stored_document(server_factory) -> None:
    server = server_factory("values")
    async with Client(server.url) as tape:
        value = {k: ROUND_TRIP[k] for k in NON_FINITE}
        await tape.mutation("values:put", {"key": "nf", "value": value})
        assert same_value(await tape.query("values:get", {"key": "nf"}), value)


# --- protocol edge cases (real server, messages altered by the relay) --------------------------------------

async def test_bad_start_version_triggers_resync(server_factory, relay_factory, caplog) -> None:
    server = server_factory("kitchen")
    relay = await relay_factory(server.url)
    transitions = 0

    def corrupt_second_transition(conn: int, message: dict[str, Any]) -> dict[str, Any]:
        nonlocal transitions
        if conn == 0 and message.get("type") == "Transition":
            transitions += 1
            if transitions == 2:
                message["startVersion"]["querySet"] += 5
        return message

    relay.s2c_hook = corrupt_second_transition
    with caplog.at_level(logging.ERROR, logger="tape.client"):
        async with Client(relay.url) as tape:
            sub = tape.subscribe("lists:all_lists")
            assert await sub.next(timeout=5) == []
            list_id = await asyncio.wait_for(tape.mutation("lists:create", {"name": "l"}), 10)
            assert [d["_id"] for d in await sub.next(timeout=0)] == [list_id]
            assert tape.connection_count == 2
    assert any("invalid Transition" in m and "reconnecting" in m for m in caplog.messages)


async def test_fatal_error_stops_the_client(server_factory, relay_factory) -> None:
    server = server_factory("kitchen")
    relay = await relay_factory(server.url)

    def fatal_instead_of_response(conn: int, message: dict[str, Any]) -> dict[str, Any]:
        if message.get("type") == "MutationResponse":
            return {"type": "FatalError", "error": "test says stop"}
        return message

    relay.s2c_hook = fatal_instead_of_response
    async with Client(relay.url) as tape:
        sub = tape.subscribe("lists:all_lists")
        await sub.next(timeout=5)
        with pytest.raises(FatalServerError, match="test says stop"):
            await asyncio.wait_for(tape.mutation("lists:create", {"name": "l"}), 5)
        with pytest.raises(FatalServerError):
            await sub.next(timeout=1)
        await asyncio.sleep(0.5)
        assert relay.connections == 1 and tape.state == "disconnected" and tape.closed
        with pytest.raises(ClientClosedError):
            await tape.mutation("lists:create", {"name": "again"})


# --- connection state -------------------------------------------------------------------------------------

async def test_state_changes_and_waiting_while_no_server(tmp_path: Path, server_factory) -> None:
    from tests.server_process import ServerProcess, free_port

    port = free_port()
    async with Client(f"http://127.0.0.1:{port}", backoff_initial=0.05, backoff_max=0.2) as tape:
        states: list[str] = []
        tape.on_state_change(states.append)
        with pytest.raises(TimeoutError):
            await tape.wait_connected(timeout=0.5)
        assert tape.state in ("connecting", "disconnected") and tape.connection_count == 0
        pending = asyncio.create_task(tape.query("lists:all_lists"))
        server = await asyncio.to_thread(server_factory, "kitchen", port=port)
        await tape.wait_connected(timeout=5)
        assert await asyncio.wait_for(pending, 5) == []
        assert states[-1] == "connected" and states.count("connecting") >= 2
        assert isinstance(server, ServerProcess)
    assert tape.state == "disconnected"
    with pytest.raises(ClientClosedError):
        tape.subscribe("lists:all_lists")


async def test_close_fails_pending_calls(tmp_path: Path) -> None:
    from tests.server_process import free_port

    tape = Client(f"http://127.0.0.1:{free_port()}")
    tape.start()
    call = asyncio.create_task(tape.mutation("lists:create", {"name": "never"}))
    given_up = asyncio.create_task(tape.mutation("lists:create", {"name": "unsent"}))
    sub = tape.subscribe("lists:all_lists")
    await asyncio.sleep(0.1)
    given_up.cancel()
    await asyncio.gather(given_up, return_exceptions=True)
    assert tape.pending_requests == 1  # never sent, so simply forgotten
    await tape.close()
    with pytest.raises(ClientClosedError):
        await call
    with pytest.raises(ClientClosedError):
        await sub.next()
    await tape.close()  # idempotent


def test_backoff_is_bounded_with_jitter() -> None:
    tape = Client("http://127.0.0.1:1", backoff_initial=0.1, backoff_max=5.0)
    for failures, (lo, hi) in {0: (0.05, 0.1), 1: (0.1, 0.2), 3: (0.4, 0.8), 6: (2.5, 5.0), 1000: (2.5, 5.0)}.items():
        tape._failures = failures
        delays = [tape._backoff() for _ in range(200)]
        assert all(lo <= d <= hi for d in delays)
        assert len(set(delays)) > 1
