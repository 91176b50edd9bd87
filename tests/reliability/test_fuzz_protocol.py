"""Bad input: hypothesis-driven fuzzing of the sync WebSocket and the HTTP function API.

One real `tape dev` server (kitchen app) takes every input. Each WebSocket
input goes to a fresh connection (after a valid Connect, and for some cases
valid messages that set up state); each HTTP input is one POST. Every bad
input must get a clear error:

* WebSocket, broken protocol (malformed JSON, wrong types, unknown message
  types, nesting deeper than 64, version gaps in the query set or identity):
  a ``FatalError`` with a message, then the server closes the socket;
* WebSocket, well-formed call of a function that cannot run (unknown or
  internal function, bad arguments, invalid ids): a failed
  ``MutationResponse``/``ActionResponse`` or a ``QueryFailed`` with a message,
  and the connection stays usable;
* WebSocket message over the 8 MiB limit: close code 1009 (message too big);
* HTTP: a 4xx or 560 status with a JSON body carrying the message.

Meanwhile an observer connection stays subscribed to `lists:all_lists`; at
checkpoints a list is created and the observer must receive it, proving the
server stays up and other clients keep working. The number of inputs tried
is printed at the end.
"""
from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.app import App
from values import new_id
from tests.reliability.reliability_wire import APPS, WsClient, connect_message, http_call, ws_url
from tests.server_process import ServerProcess

MAX_MESSAGE = 8 << 20
PUBLIC = {f.path: f.kind for f in App.load(APPS / "kitchen").functions.values() if not f.internal}
SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TRIED: Counter[str] = Counter()


def enc(value: Any) -> str:
    """JSON text of `value` (the stdlib writes integers beyond 64 bits, which orjson refuses)."""
    return json.dumps(value, separators=(",", ":"))


@dataclass
class Outcome:
    kind: str            # fatal | function-error | query-failed | auth-error | closed | silent | ok
    message: str = ""
    close_code: int | None = None


class FuzzEnv:
    """The server, an event loop for the synchronous hypothesis tests, and the observer client."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.http: aiohttp.ClientSession | None = None
        self.observer: WsClient | None = None
        self.qid = 0
        self.canaries = 0
        self.list_ids: list[str] = []

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def setup(self) -> None:
        self.http = aiohttp.ClientSession()
        self.observer = await WsClient(self.server.url).connect(self.http)
        self.qid = await self.observer.subscribe("lists:all_lists")
        status, body = await http_call(self.http, self.server.url, "mutation", "lists:create", {"name": "fixture"})
        assert status == 200, body
        self.list_ids.append(body["value"])

    async def canary(self) -> None:
        """Create a list: the observer's subscription must show it (the server is up and pushing)."""
        self.canaries += 1
        name = f"canary-{self.canaries}"
        status, body = await http_call(self.http, self.server.url, "mutation", "lists:create", {"name": name})
        assert status == 200, f"server stopped serving after bad inputs: {status} {body}"
        assert self.observer is not None
        await self.observer.wait_value(self.qid, lambda v: any(d["name"] == name for d in v), timeout=10)
        assert self.observer.fatal is None and not self.observer.closed.is_set()
        assert self.server.proc is not None and self.server.proc.poll() is None

    async def teardown(self) -> None:
        if self.observer is not None:
            await self.observer.close()
        if self.http is not None:
            await self.http.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzEnv]:
    server = ServerProcess(APPS / "kitchen", Path(tmp_path_factory.mktemp("fuzz")) / "data").start()
    fuzz = FuzzEnv(server)
    try:
        fuzz.run(fuzz.setup())
        yield fuzz
        fuzz.run(fuzz.canary())
    finally:
        fuzz.run(fuzz.teardown())
        fuzz.loop.close()
        server.stop()
        total = sum(TRIED.values())
        print(f"\nprotocol fuzzing: {total} bad inputs tried ({dict(sorted(TRIED.items()))}), "
              f"{fuzz.canaries} observer checks passed; the server stayed up")


# ------------------------------------------------------------------ the WebSocket probe


async def ws_probe(env: FuzzEnv, payload: str | bytes, prelude: tuple[Any, ...] = (), connect: bool = True,
                   timeout: float = 5.0) -> Outcome:
    """Send `payload` on a fresh connection; return the first clear answer (or what happened instead)."""
    assert env.http is not None
    ws = await env.http.ws_connect(ws_url(env.server.url), max_msg_size=0)
    try:
        if connect:
            await ws.send_str(orjson.dumps(connect_message("fuzz-session")).decode())
        for message in prelude:
            await ws.send_str(enc(message))
        try:
            if isinstance(payload, bytes):
                await ws.send_bytes(payload)
            else:
                await ws.send_str(payload)
        except (ConnectionError, aiohttp.ClientError):
            pass  # the server may hang up before it has read all of an oversized message
        outcome: Outcome | None = None
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return outcome or Outcome("silent")
            try:
                msg = await ws.receive(timeout=left)
            except asyncio.TimeoutError:
                return outcome or Outcome("silent")
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                            aiohttp.WSMsgType.ERROR):
                code = msg.data if msg.type == aiohttp.WSMsgType.CLOSE else ws.close_code
                if outcome is None:
                    return Outcome("closed", str(msg.extra or ""), code)
                outcome.close_code = code
                return outcome
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = orjson.loads(msg.data)
            kind = data.get("type")
            if kind == "FatalError":
                outcome = Outcome("fatal", data.get("error") or "")  # now wait for the close
            elif kind == "AuthError":
                outcome = Outcome("auth-error", data.get("error") or "")
            elif kind in ("MutationResponse", "ActionResponse"):
                if data["success"]:
                    return Outcome("ok", orjson.dumps(data).decode())
                return Outcome("function-error", data["result"] if isinstance(data["result"], str) else "")
            elif kind == "Transition":
                failed = [m for m in data["modifications"] if m["type"] == "QueryFailed"]
                if failed:
                    return Outcome("query-failed", failed[0].get("errorMessage") or "")
    finally:
        await ws.close()


def check_ws(env: FuzzEnv, label: str, payload: str | bytes, allowed: set[str], prelude: tuple[Any, ...] = (),
             connect: bool = True) -> Outcome:
    TRIED[f"ws:{label}"] += 1
    out = env.run(ws_probe(env, payload, prelude, connect))
    shown = payload[:200] if isinstance(payload, (str, bytes)) else payload
    assert out.kind in allowed, f"{label}: expected one of {allowed}, got {out} for {shown!r}"
    assert out.message.strip() or out.kind == "closed", f"{label}: error without a message for {shown!r}"
    if out.kind in ("fatal", "auth-error"):
        assert out.close_code is not None and out.close_code >= 1000, f"{label}: not closed after {out}"
    if TRIED.total() % 60 == 0:
        env.run(env.canary())
    return out


# ------------------------------------------------------------------ strategies

CONNECT = connect_message("fuzz-session")
TEMPLATES: dict[str, dict[str, Any]] = {
    "Connect": CONNECT,
    "ModifyQuerySet": {"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1,
                       "modifications": [{"type": "Add", "queryId": 0, "udfPath": "lists:all_lists", "args": [{}]}]},
    "Mutation": {"type": "Mutation", "requestId": 0, "udfPath": "lists:create", "args": [{"name": "n"}]},
    "Action": {"type": "Action", "requestId": 0, "udfPath": "lists:create_via_action", "args": [{"name": "n"}]},
    "Authenticate": {"type": "Authenticate", "baseVersion": 0, "tokenType": "None"},
    "Event": {"type": "Event", "eventType": "ClientConnect", "event": {}},
}

ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def _is_u32(v: Any) -> bool:
    return (type(v) is int or (type(v) is float and v.is_integer())) and 0 <= v <= 0xFFFFFFFF


def _is_i64(v: Any) -> bool:
    return (type(v) is int or (type(v) is float and v.is_integer())) and -(1 << 63) <= v < (1 << 63)


def _is_path(v: Any) -> bool:
    """What a function path may look like: "module:function", or "module" for its default export."""
    if type(v) is not str or any(c.isspace() for c in v):
        return False
    module, sep, function = v.rpartition(":")
    if not sep:
        module, function = v, "default"
    return bool(module.removesuffix(".js")) and bool(function)


def _is_args(v: Any) -> bool:
    return type(v) is dict or (type(v) is list and len(v) == 1 and type(v[0]) is dict)


def _is_ts(v: Any) -> bool:
    if v is None:
        return True
    try:
        return type(v) is str and len(base64.b64decode(v, validate=True)) == 8
    except ValueError:
        return False


# (message type, dotted field, predicate for values the server accepts there)
FIELDS: list[tuple[str, tuple[Any, ...], Callable[[Any], bool]]] = [
    ("Connect", ("sessionId",), lambda v: type(v) is str and v != ""),
    ("Connect", ("connectionCount",), _is_u32),
    ("Connect", ("lastCloseReason",), lambda v: v is None or type(v) is str),
    ("Connect", ("clientTs",), lambda v: v is None or _is_i64(v)),
    ("Connect", ("maxObservedTimestamp",), _is_ts),
    ("ModifyQuerySet", ("baseVersion",), lambda v: _is_u32(v) and v == 0),
    ("ModifyQuerySet", ("newVersion",), lambda v: _is_u32(v) and v > 0),
    ("ModifyQuerySet", ("modifications",), lambda v: type(v) is list and all(
        type(m) is dict and m.get("type") == "Add" and _is_u32(m.get("queryId")) for m in v)),
    ("ModifyQuerySet", ("modifications", 0), lambda v: False),
    ("ModifyQuerySet", ("modifications", 0, "type"), lambda v: v in ("Add", "Remove")),
    ("ModifyQuerySet", ("modifications", 0, "queryId"), _is_u32),
    ("ModifyQuerySet", ("modifications", 0, "udfPath"), _is_path),
    ("ModifyQuerySet", ("modifications", 0, "args"), lambda v: v is None or _is_args(v)),
    ("ModifyQuerySet", ("modifications", 0, "journal"), lambda v: v is None or type(v) is str),
    ("Mutation", ("requestId",), _is_u32),
    ("Mutation", ("udfPath",), _is_path),
    ("Mutation", ("args",), _is_args),
    ("Mutation", ("componentPath",), lambda v: v is None or type(v) is str),
    ("Action", ("requestId",), _is_u32),
    ("Action", ("args",), _is_args),
    ("Authenticate", ("baseVersion",), lambda v: _is_u32(v) and v == 0),
    ("Authenticate", ("tokenType",), lambda v: v in ("None", "User", "Admin")),
    ("Event", ("eventType",), lambda v: type(v) is str and v != ""),
    ("Event", ("type",), lambda v: v == "Event"),
]


def _replace(message: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(message)
    target = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return out


@st.composite
def wrong_type_messages(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    kind, path, accepts = draw(st.sampled_from(FIELDS))
    value = draw(ANY_JSON.filter(lambda v: not accepts(v)))
    return f"{kind}.{'.'.join(map(str, path))}", _replace(TEMPLATES[kind], path, value)


def _not_a_message(text: str) -> bool:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return True
    return type(obj) is not dict or obj.get("type") not in TEMPLATES


@st.composite
def malformed_json(draw: st.DrawFn) -> str | bytes:
    choice = draw(st.integers(0, 3))
    if choice == 0:  # a valid message cut short
        text = enc(draw(st.sampled_from(list(TEMPLATES.values()))))
        return text[:draw(st.integers(1, len(text) - 1))]
    if choice == 1:
        return draw(st.text(max_size=300).filter(_not_a_message))
    if choice == 2:  # JSON, but not an object
        return enc(draw(ANY_JSON.filter(lambda v: type(v) is not dict)))
    return draw(st.binary(min_size=1, max_size=300).filter(lambda b: _not_a_message_bytes(b)))


def _not_a_message_bytes(raw: bytes) -> bool:
    try:
        return _not_a_message(raw.decode())
    except UnicodeDecodeError:
        return True


# ------------------------------------------------------------------ WebSocket tests


@SETTINGS
@given(text=malformed_json())
def test_ws_malformed_json(env: FuzzEnv, text: str | bytes) -> None:
    check_ws(env, "malformed-json", text, {"fatal"})


@SETTINGS
@given(case=wrong_type_messages())
def test_ws_wrong_types(env: FuzzEnv, case: tuple[str, dict[str, Any]]) -> None:
    label, message = case
    allowed = {"fatal"}
    if message.get("type") == "Authenticate":  # a well-typed token of an unusable kind is an auth error
        allowed.add("auth-error")
    check_ws(env, "wrong-type", enc(message), allowed)


@SETTINGS
@given(kind=st.text(max_size=40).filter(lambda t: t not in TEMPLATES), extra=st.dictionaries(
    st.text(max_size=8).filter(lambda k: k != "type"), ANY_JSON, max_size=3))
def test_ws_unknown_message_types(env: FuzzEnv, kind: str, extra: dict[str, Any]) -> None:
    check_ws(env, "unknown-type", enc({**extra, "type": kind}), {"fatal"})


@settings(max_examples=40, deadline=None, database=None)
@given(depth=st.integers(65, 3000), shape=st.sampled_from(["list", "dict"]),
       where=st.sampled_from(["Mutation", "ModifyQuerySet", "Action"]))
def test_ws_deeply_nested_values(env: FuzzEnv, depth: int, shape: str, where: str) -> None:
    value = "@@DEEP@@"
    if where == "Mutation":
        message = {"type": "Mutation", "requestId": 1, "udfPath": "lists:create", "args": [{"name": value}]}
    elif where == "Action":
        message = {"type": "Action", "requestId": 1, "udfPath": "lists:create_via_action", "args": [{"name": value}]}
    else:
        message = _replace(TEMPLATES["ModifyQuerySet"], ("modifications", 0, "args"), [{"x": value}])
    check_ws(env, "deep-nesting", deep_json(message, depth, shape), {"fatal"})


def deep_json(message: dict[str, Any], depth: int, shape: str = "list") -> str:
    """`message` with its "@@DEEP@@" placeholder replaced by a value nested `depth` levels deep
    (written by hand: orjson refuses to serialise more than 255 levels)."""
    opening, closing = ("[", "]") if shape == "list" else ('{"k":', "}")
    return enc(message).replace('"@@DEEP@@"', opening * depth + "1" + closing * depth)


@SETTINGS
@given(bad_id=st.one_of(st.text(max_size=40), st.just(new_id("items")), st.just(new_id("nope")),
                        st.integers().map(float), st.just("bGlzdHM"), st.binary(max_size=20).map(
                            lambda b: base64.urlsafe_b64encode(b).decode())),
       target=st.sampled_from(["lists:add", "lists:toggle", "lists:remove", "query:lists:get", "query:lists:items"]))
def test_ws_invalid_ids(env: FuzzEnv, bad_id: Any, target: str) -> None:
    if target.startswith("query:"):
        path = target[len("query:"):]
        args = {"id": bad_id} if path == "lists:get" else {"list_id": bad_id}
        message = _replace(TEMPLATES["ModifyQuerySet"], ("modifications", 0), {
            "type": "Add", "queryId": 0, "udfPath": path, "args": [args]})
        check_ws(env, "invalid-id", enc(message), {"query-failed"})
        return
    args = {"list_id": bad_id, "text": "t"} if target == "lists:add" else {"id": bad_id}
    message = {"type": "Mutation", "requestId": 3, "udfPath": target, "args": [args]}
    check_ws(env, "invalid-id", enc(message), {"function-error"})


@SETTINGS
@given(base=st.integers(0, 2 ** 32 - 1), new=st.integers(0, 2 ** 32 - 1), first=st.booleans())
def test_ws_out_of_order_query_set_versions(env: FuzzEnv, base: int, new: int, first: bool) -> None:
    """A ModifyQuerySet whose baseVersion is not the current version, or that does not advance it."""
    current = 0 if first else 1
    if base == current and new > base:
        base = current + 1 + base % 5  # a gap
    prelude = () if first else (TEMPLATES["ModifyQuerySet"],)
    message = {"type": "ModifyQuerySet", "baseVersion": base, "newVersion": new, "modifications": []}
    check_ws(env, "query-set-version", enc(message), {"fatal"}, prelude=prelude)


@settings(max_examples=30, deadline=None, database=None)
@given(case=st.sampled_from(["duplicate-add", "remove-unknown", "auth-gap", "auth-bad-admin-key"]),
       qid=st.integers(0, 1000))
def test_ws_inconsistent_state_changes(env: FuzzEnv, case: str, qid: int) -> None:
    add = {"type": "Add", "queryId": qid, "udfPath": "lists:all_lists", "args": [{}]}
    if case == "duplicate-add":
        message = {"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [add, add]}
        check_ws(env, case, enc(message), {"fatal"})
    elif case == "remove-unknown":
        message = {"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1,
                   "modifications": [{"type": "Remove", "queryId": qid}]}
        check_ws(env, case, enc(message), {"fatal"})
    elif case == "auth-gap":
        message = {"type": "Authenticate", "baseVersion": qid + 1, "tokenType": "None"}
        check_ws(env, case, enc(message), {"fatal"})
    else:  # the AuthError message itself may be lost (see test_ws_bad_admin_key_gets_an_auth_error_message)
        message = {"type": "Authenticate", "baseVersion": 0, "tokenType": "Admin", "value": f"tape_admin_{qid}"}
        out = check_ws(env, case, enc(message), {"auth-error", "closed"})
        assert out.close_code == 4001 and (out.kind == "auth-error" or "AuthError" in out.message), out


def test_ws_bad_admin_key_gets_an_auth_error_message(env: FuzzEnv) -> None:
    """The protocol answers a rejected token with an AuthError message, then closes (the JS client
    reacts to the message: it refetches a token). The close must not overtake the message."""
    message = {"type": "Authenticate", "baseVersion": 0, "tokenType": "Admin", "value": "tape_admin_wrong"}
    out = env.run(ws_probe(env, enc(message)))
    assert out.kind == "auth-error", f"no AuthError message before the close: {out}"


@settings(max_examples=60, deadline=None, database=None)
@given(path=st.one_of(st.sampled_from(["lists:secret", "nope:nothing", "lists:nothing", "lists:all_lists",
                                       "lists:create_via_action", "lists"]),
                      st.from_regex(r"[a-z]{1,8}:[a-z_]{1,12}", fullmatch=True)),
       kind=st.sampled_from(["Mutation", "Action"]))
def test_ws_unknown_internal_or_wrong_kind_functions(env: FuzzEnv, path: str, kind: str) -> None:
    if PUBLIC.get(path) == kind.lower():
        return  # a real function of that kind: not a bad input
    message = {"type": kind, "requestId": 9, "udfPath": path, "args": [{}]}
    check_ws(env, "bad-function", enc(message), {"function-error"})


def test_ws_internal_query_subscription_fails(env: FuzzEnv) -> None:
    message = _replace(TEMPLATES["ModifyQuerySet"], ("modifications", 0, "udfPath"), "lists:secret")
    check_ws(env, "bad-function", enc(message), {"query-failed"})


def test_ws_oversized_message_is_refused(env: FuzzEnv) -> None:
    big = {"type": "Mutation", "requestId": 1, "udfPath": "lists:create", "args": [{"name": "x" * (MAX_MESSAGE + 10)}]}
    out = check_ws(env, "oversized", enc(big), {"closed", "fatal"})
    assert out.close_code == 1009, f"expected close 1009 (message too big), got {out}"
    env.run(env.canary())


def test_ws_huge_values_under_the_limit(env: FuzzEnv) -> None:
    """Large but allowed messages: the function's own limits answer (document too large)."""
    for size in (2 << 20, 7 << 20):
        message = {"type": "Mutation", "requestId": 1, "udfPath": "lists:create", "args": [{"name": "y" * size}]}
        check_ws(env, "huge-value", enc(message), {"function-error"})
    many = {"type": "Mutation", "requestId": 2, "udfPath": "lists:create", "args": [{"name": ["z"] * 500_000}]}
    check_ws(env, "huge-value", enc(many), {"function-error"})
    env.run(env.canary())


# ------------------------------------------------------------------ HTTP


async def http_probe(env: FuzzEnv, endpoint: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    assert env.http is not None
    async with env.http.post(f"{env.server.url}/api/{endpoint}", data=body, headers=headers or {},
                             timeout=aiohttp.ClientTimeout(total=30)) as r:
        raw = await r.read()
        try:
            return r.status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return r.status, raw[:300]


def check_http(env: FuzzEnv, label: str, endpoint: str, body: bytes, allowed: set[int] | None = None) -> None:
    TRIED[f"http:{label}"] += 1
    status, reply = env.run(http_probe(env, endpoint, body))
    allowed = allowed or {400, 404, 413, 560}
    assert status in allowed, f"{label}: HTTP {status} {reply!r} for {body[:200]!r}"
    assert isinstance(reply, dict), f"{label}: HTTP {status} without a JSON error body: {reply!r}"
    message = reply.get("errorMessage") or reply.get("message")
    assert isinstance(message, str) and message.strip(), f"{label}: no error message in {reply}"
    if TRIED.total() % 60 == 0:
        env.run(env.canary())


ENDPOINTS = st.sampled_from(["query", "mutation", "action", "function", "query_at_ts"])


@SETTINGS
@given(endpoint=ENDPOINTS, body=st.one_of(
    st.binary(min_size=1, max_size=200).filter(lambda b: _not_json_object(b)),
    st.text(min_size=1, max_size=200).map(str.encode).filter(lambda b: _not_json_object(b)),
    ANY_JSON.filter(lambda v: type(v) is not dict).map(lambda v: enc(v).encode())))
def test_http_malformed_bodies(env: FuzzEnv, endpoint: str, body: bytes) -> None:
    check_http(env, "malformed-body", endpoint, body)


def _not_json_object(raw: bytes) -> bool:
    if not raw.strip():
        return False  # an empty body means "no arguments": a valid (if useless) request
    try:
        return type(orjson.loads(raw)) is not dict
    except orjson.JSONDecodeError:
        return True


HTTP_FIELDS: list[tuple[str, Callable[[Any], bool]]] = [
    ("path", _is_path),
    ("args", lambda v: v is None or _is_args(v)),
    ("format", lambda v: v is None or v in ("json", "convex_encoded_json")),
    ("componentPath", lambda v: v is None or type(v) is str),
]


@SETTINGS
@given(endpoint=ENDPOINTS, field=st.sampled_from(HTTP_FIELDS), data=st.data())
def test_http_wrong_types(env: FuzzEnv, endpoint: str, field: tuple[str, Callable[[Any], bool]],
                          data: st.DataObject) -> None:
    name, accepts = field
    body: dict[str, Any] = {"path": "lists:create", "args": {"name": "x"}, "format": "json"}
    body[name] = data.draw(ANY_JSON.filter(lambda v: not accepts(v)))
    if endpoint == "query_at_ts":
        body["ts"] = 0
    check_http(env, "wrong-type", endpoint, enc(body).encode())


@SETTINGS
@given(endpoint=ENDPOINTS, path=st.one_of(
    st.sampled_from(["lists:secret", "nope:nothing", "lists:nothing"]),
    st.from_regex(r"[a-z]{1,8}:[a-z_]{1,12}", fullmatch=True).filter(lambda p: not p.startswith("lists:"))),
    args=st.dictionaries(st.text(max_size=6), ANY_JSON, max_size=3))
def test_http_unknown_and_internal_functions(env: FuzzEnv, endpoint: str, path: str, args: dict[str, Any]) -> None:
    body: dict[str, Any] = {"path": path, "args": args}
    if endpoint == "query_at_ts":
        body["ts"] = 0
    check_http(env, "bad-function", endpoint, enc(body).encode())


@SETTINGS
@given(bad_id=st.one_of(st.text(max_size=40), st.just(new_id("items")), st.integers().map(float)),
       path=st.sampled_from(["lists:add", "lists:toggle", "lists:get", "lists:items"]))
def test_http_invalid_ids(env: FuzzEnv, bad_id: Any, path: str) -> None:
    args = {"list_id": bad_id, "text": "t"} if path in ("lists:add", "lists:items") else {"id": bad_id}
    endpoint = "query" if path in ("lists:get", "lists:items") else "mutation"
    check_http(env, "invalid-id", endpoint, orjson.dumps({"path": path, "args": args}), {560})


@settings(max_examples=40, deadline=None, database=None)
@given(depth=st.integers(65, 3000), endpoint=st.sampled_from(["query", "mutation", "action"]))
def test_http_deeply_nested_args(env: FuzzEnv, depth: int, endpoint: str) -> None:
    path = {"query": "lists:all_lists", "mutation": "lists:create", "action": "lists:create_via_action"}[endpoint]
    body = '{"path":"%s","args":{"name":%s1%s}}' % (path, "[" * depth, "]" * depth)
    check_http(env, "deep-nesting", endpoint, body.encode(), {400})


@settings(max_examples=30, deadline=None, database=None)
@given(ts=st.one_of(st.text(max_size=20).filter(lambda t: not t.isdigit()), st.floats(allow_nan=False).filter(
    lambda f: not (f.is_integer() and f >= 0)), st.integers(max_value=-1), st.none(), st.lists(st.integers(), max_size=2)))
def test_http_query_at_ts_bad_timestamps(env: FuzzEnv, ts: Any) -> None:
    body = enc({"path": "lists:all_lists", "args": {}, "ts": ts}).encode()
    if isinstance(ts, str):
        try:
            if len(base64.b64decode(ts, validate=True)) == 8:
                return
        except ValueError:
            pass
    check_http(env, "bad-ts", "query_at_ts", body, {400})


def test_http_oversized_body(env: FuzzEnv) -> None:
    body = b'{"path":"lists:create","args":{"name":"' + b"x" * (MAX_MESSAGE + 10) + b'"}}'
    check_http(env, "oversized", "mutation", body, {413})
    env.run(env.canary())


def test_http_large_body_is_read_completely(env: FuzzEnv) -> None:
    """A valid 600 KB mutation (documents may hold 1 MiB) must be read whole, not cut at a TCP chunk."""
    body = orjson.dumps({"path": "lists:create", "args": {"name": "w" * (600 << 10)}})
    status, reply = env.run(http_probe(env, "mutation", body))
    assert status == 200, f"HTTP {status}: {reply}"


def test_http_huge_values_under_the_limit(env: FuzzEnv) -> None:
    for size in (2 << 20, 7 << 20):
        body = orjson.dumps({"path": "lists:create", "args": {"name": "y" * size}})
        check_http(env, "huge-value", "mutation", body, {560})
    env.run(env.canary())


def test_ws_probe_sees_a_good_mutation_succeed(env: FuzzEnv) -> None:
    """Calibrates the probe: a good message (integral float requestId, as JS sends) is not an error."""
    message = {"type": "Mutation", "requestId": 5.0, "udfPath": "lists:create", "args": [{"name": "float-id"}]}
    out = env.run(ws_probe(env, enc(message)))
    assert out.kind == "ok", out
