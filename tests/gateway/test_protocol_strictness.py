"""Protocol strictness and shape limits on the sync WebSocket and the HTTP API.

* ``Connect`` comes first on a socket, and only once; binary frames are refused
  (the protocol is JSON in text frames); unknown fields are fine.
* ``sessionId`` is 1-64 characters of ``[A-Za-z0-9_-]``, ``requestId`` a
  non-negative integer (u32, as Convex), function paths at most 256 characters;
  a bad value is quoted back with at most 100 of its characters, ending in '…'.

Refusals are a ``FatalError`` naming the field followed by the server closing
the socket, or HTTP 400 naming it.
"""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import orjson
import pytest

from tests.gateway.served_node import served_node
from tests.reliability.reliability_wire import APPS, connect_message, ws_url
from tests.server_process import ServerProcess

LONG_PATH = "m" * 150 + ":" + "f" * 105  # 256 characters: allowed, and no such function


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(APPS / "kitchen", Path(tmp_path_factory.mktemp("strict")) / "data").start()
    try:
        yield proc
    finally:
        proc.stop()


async def exchange(url: str, *frames: Any, timeout: float = 5.0) -> tuple[list[dict[str, Any]], int | None]:
    """Send `frames` (dicts as JSON text, bytes as binary) on a fresh socket; (messages received, close code)."""
    received: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(ws_url(url), max_msg_size=0)
        for frame in frames:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame if isinstance(frame, str) else orjson.dumps(frame).decode())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            try:
                msg = await ws.receive(timeout=left)
            except asyncio.TimeoutError:
                break
            if msg.type == aiohttp.WSMsgType.TEXT:
                received.append(orjson.loads(msg.data))
                if received[-1]["type"] in ("MutationResponse", "ActionResponse") and not any(
                        m["type"] == "FatalError" for m in received):
                    break
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                break
        await ws.close()
        return received, ws.close_code


def fatal(received: list[dict[str, Any]]) -> str:
    errors = [m["error"] for m in received if m["type"] == "FatalError"]
    assert errors, f"no FatalError in {received}"
    return errors[0]


def mutation(request_id: Any = 0, path: Any = "lists:create", **extra: Any) -> dict[str, Any]:
    return {"type": "Mutation", "requestId": request_id, "udfPath": path, "args": [{"name": "n"}], **extra}


def add(path: Any, query_id: int = 0) -> dict[str, Any]:
    return {"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1,
            "modifications": [{"type": "Add", "queryId": query_id, "udfPath": path, "args": [{}]}]}


# ------------------------------------------------------------------ message order and framing


@pytest.mark.parametrize("first", [mutation(), add("lists:all_lists"),
                                   {"type": "Authenticate", "baseVersion": 0, "tokenType": "None"},
                                   {"type": "Event", "eventType": "ClientConnect", "event": {}}])
async def test_messages_before_connect_are_refused(server: ServerProcess, first: dict[str, Any]) -> None:
    received, code = await exchange(server.url, first)
    assert fatal(received) == (f"Invalid message: {first['type']} before Connect "
                               "(the first message on a socket must be Connect)")
    assert code == 1008
    assert not any(m["type"] in ("MutationResponse", "Transition") for m in received), received


async def test_a_second_connect_is_refused(server: ServerProcess) -> None:
    session = str(uuid.uuid4())
    received, code = await exchange(server.url, connect_message(session), connect_message(session, 1), mutation())
    assert "a second Connect on the same socket" in fatal(received)
    assert code == 1008
    assert not any(m["type"] == "MutationResponse" for m in received), received


async def test_binary_frames_are_refused(server: ServerProcess) -> None:
    received, code = await exchange(server.url, connect_message(str(uuid.uuid4())), orjson.dumps(mutation()))
    assert "binary frame" in fatal(received) and "text frame" in fatal(received)
    assert code == 1008
    received, code = await exchange(server.url, orjson.dumps(connect_message(str(uuid.uuid4()))))
    assert "binary frame" in fatal(received)


async def test_unknown_fields_are_ignored(server: ServerProcess) -> None:
    connect = {**connect_message(str(uuid.uuid4())), "someFutureField": {"x": 1}}
    received, _ = await exchange(server.url, connect, mutation(future=True, componentPath=None))
    responses = [m for m in received if m["type"] == "MutationResponse"]
    assert responses and responses[0]["success"] is True, received


async def test_a_socket_that_never_sends_connect_is_closed(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", connect_timeout=0.5) as (node, url):
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(ws_url(url))
            msg = await ws.receive(timeout=5)
            while msg.type == aiohttp.WSMsgType.TEXT:  # a Ping, perhaps
                msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE, msg
            assert msg.data == 1008 and msg.extra.startswith("ConnectTimeout"), msg
            await ws.close()
            ok = await http.ws_connect(ws_url(url))  # one that does send Connect stays
            await ok.send_str(orjson.dumps(connect_message(str(uuid.uuid4()))).decode())
            with pytest.raises(asyncio.TimeoutError):
                await ok.receive(timeout=1.5)
            assert not ok.closed and len(node.sessions) == 1
            await ok.close()


# ------------------------------------------------------------------ shapes and lengths


@pytest.mark.parametrize("session_id", ["x" * 65, "has space", "a:b", "tape:http", "é", "", 7, None])
async def test_bad_session_ids_are_refused(server: ServerProcess, session_id: Any) -> None:
    received, code = await exchange(server.url, {**connect_message("x"), "sessionId": session_id}, mutation())
    error = fatal(received)
    assert error.startswith("Invalid message: Connect.sessionId: "), error
    assert code == 1008
    assert not any(m["type"] == "MutationResponse" for m in received)


@pytest.mark.parametrize("session_id", [str(uuid.uuid4()), "A" * 64, "worker_7-b"])
async def test_good_session_ids_are_accepted(server: ServerProcess, session_id: str) -> None:
    received, _ = await exchange(server.url, connect_message(session_id), mutation())
    assert [m["success"] for m in received if m["type"] == "MutationResponse"] == [True], received


@pytest.mark.parametrize("request_id", [-1, 2 ** 53, 1.5, "1", True, None])
async def test_bad_request_ids_are_refused(server: ServerProcess, request_id: Any) -> None:
    received, _ = await exchange(server.url, connect_message(str(uuid.uuid4())), mutation(request_id))
    assert fatal(received).startswith("Invalid message: Mutation.requestId: "), received


async def test_overlong_function_paths_are_refused_and_quoted_short(server: ServerProcess) -> None:
    path = "m" * 300 + ":f"
    for message in (mutation(path=path), add(path), {**mutation(path=path), "type": "Action"}):
        received, code = await exchange(server.url, connect_message(str(uuid.uuid4())), message)
        error = fatal(received)
        assert "udfPath: function path is 302 characters, over the 256 character limit" in error, error
        assert "'" + "m" * 100 + "…'" in error and "m" * 101 not in error, error
        assert code == 1008


async def test_bad_paths_are_quoted_back_with_at_most_100_characters(server: ServerProcess) -> None:
    bad = "x y" * 80  # whitespace: invalid, 240 characters
    received, _ = await exchange(server.url, connect_message(str(uuid.uuid4())), mutation(path=bad))
    error = fatal(received)
    assert repr(bad[:100] + "…") in error and bad[:101] not in error, error
    # A well-formed but unknown long path: the function error quotes it short too.
    received, _ = await exchange(server.url, connect_message(str(uuid.uuid4())), mutation(path=LONG_PATH))
    failure = [m for m in received if m["type"] == "MutationResponse"][0]
    assert failure["success"] is False and "Could not find public function" in failure["result"], failure
    assert LONG_PATH[:100] + "…" in failure["result"] and LONG_PATH[:101] not in failure["result"]
    received, _ = await exchange(server.url, connect_message(str(uuid.uuid4())), add(LONG_PATH))
    failed = [mod for m in received if m["type"] == "Transition" for mod in m["modifications"]]
    assert failed and failed[0]["type"] == "QueryFailed", received
    assert LONG_PATH[:100] + "…" in failed[0]["errorMessage"] and LONG_PATH[:101] not in failed[0]["errorMessage"]


async def test_http_paths_and_idempotency_keys_are_checked(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async def post(endpoint: str, body: dict[str, Any], **headers: str) -> tuple[int, dict[str, Any]]:
            async with http.post(f"{server.url}/api/{endpoint}", data=orjson.dumps(body), headers=headers) as r:
                return r.status, orjson.loads(await r.read())

        status, body = await post("query", {"path": "q" * 300 + ":f", "args": {}})
        assert status == 400 and body["code"] == "BadPath", body
        assert body["message"].startswith("path: function path is 302 characters, over the 256 character limit")
        assert "q" * 100 + "…" in body["message"] and "q" * 101 not in body["message"]
        status, body = await post("query", {"path": LONG_PATH, "args": {}})
        assert status == 560 and LONG_PATH[:100] + "…" in body["errorMessage"], body
        assert LONG_PATH[:101] not in body["errorMessage"]
        call = {"path": "lists:create", "args": {"name": "k"}}
        for key in ("x" * 65 + ":1", "a b:1", "a:b:1", "k:-1", "k:1.5", f"k:{2 ** 53}", "k:" + "9" * 40, ":3"):
            status, body = await post("mutation", call, **{"Idempotency-Key": key})
            assert status == 400 and body["code"] == "BadIdempotencyKey", (key, body)
            assert body["message"].startswith("Idempotency-Key"), (key, body)
            assert len(body["message"]) < 300, body
        for key in ("k", "k:0", f"k:{2 ** 53 - 1}", str(uuid.uuid4()) + ":12"):
            status, body = await post("mutation", call, **{"Idempotency-Key": key})
            assert status == 200, (key, body)


# ------------------------------------------------------------------ the parsing helpers themselves


def test_quote_cuts_long_values() -> None:
    from gateway.protocol import elide, quote
    assert quote("short") == "'short'"
    assert quote("x" * 100) == repr("x" * 100)
    assert quote("x" * 101) == repr("x" * 100 + "…")
    assert quote(list(range(1000))).endswith("…") and len(quote(list(range(1000)))) == 101
    assert elide(f"no function '{'p' * 150}'", "p" * 150) == f"no function '{'p' * 100}…'"
    assert elide("unchanged 'abc'", "abc") == "unchanged 'abc'"


def test_session_id_and_idempotency_key_rules() -> None:
    from gateway import http_protocol as H
    from gateway import protocol as P
    assert P.check_session_id("6512e133-c2a3-46b8-9396-d3490f6711d5") == "6512e133-c2a3-46b8-9396-d3490f6711d5"
    for bad in ("", "a" * 65, "a:b", "a b", "ü", 3):
        with pytest.raises(P.ProtocolError, match=r"^Connect\.sessionId: "):
            P.check_session_id(bad, "Connect.sessionId")
    assert H.parse_idempotency_key("worker-1:17") == ("worker-1", 17)
    assert H.parse_idempotency_key("worker-1") == ("worker-1", 0)
    assert H.parse_idempotency_key(f"w:{2 ** 53 - 1}") == ("w", 2 ** 53 - 1)
    for bad in ("w:" + str(2 ** 53), "w:²", "w:-1", "w:1e3", "a:b:1", ":1", "w:"):
        with pytest.raises(H.HttpApiError, match="^Idempotency-Key") as info:
            H.parse_idempotency_key(bad)
        assert info.value.status == 400 and info.value.code == "BadIdempotencyKey"


def test_add_query_counts_its_argument_bytes() -> None:
    from gateway import protocol as P
    args = [{"list_id": "abc", "pad": "p" * 50}]
    message = P.parse_client_message_text(orjson.dumps(
        {"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
            {"type": "Add", "queryId": 1, "udfPath": "lists:page", "args": args},
            {"type": "Add", "queryId": 2, "udfPath": "lists:all_lists"}]}))
    first, second = message.modifications
    assert first.args_bytes == len(orjson.dumps(args)) and second.args_bytes == 0
    assert first == P.AddQuery(query_id=1, udf_path="lists:page", args=args[0])  # not part of equality
    big = P.parse_client_message({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
        {"type": "Add", "queryId": 1, "udfPath": "m:f", "args": [{"n": 2 ** 70}]}]})  # not JSON-encodable as is
    assert big.modifications[0].args_bytes > 0
