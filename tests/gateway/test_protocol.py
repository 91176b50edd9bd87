"""Tests for gateway.protocol and gateway.http_protocol.

Fixture messages are verbatim captures of what the official clients sent to
a test server: npm ``convex`` 1.48.0 (``JS_*``) and PyPI ``convex`` 0.8.1's
Rust core (``RUST_*``).
"""
from __future__ import annotations

import math

import orjson
import pytest

from gateway import http_protocol as H
from gateway import protocol as P

JS_CONNECT = {"connectionCount": 0, "lastCloseReason": "InitialConnect", "clientTs": 1795457574393, "type": "Connect", "sessionId": "6512e133-c2a3-46b8-9396-d3490f6711d5"}
RUST_CONNECT = {"type": "Connect", "sessionId": "57bca147-be33-44a2-9dc4-2f6f05a24693", "connectionCount": 0, "lastCloseReason": "InitialConnect", "clientTs": 0}
JS_MODIFY = {"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [{"type": "Add", "queryId": 0, "udfPath": "messages:list", "args": [{}]}]}
JS_MODIFY_EMPTY = {"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": []}
RUST_MODIFY = {"modifications": [{"args": [{}], "type": "Add", "queryId": 0, "udfPath": "messages:list"}], "type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1}
RUST_REMOVE = {"modifications": [{"type": "Remove", "queryId": 1}], "type": "ModifyQuerySet", "baseVersion": 2, "newVersion": 3}
JS_MUTATION = {"type": "Mutation", "requestId": 0, "udfPath": "messages:send", "args": [{"big": {"$integer": "BQAAAAAAAAA="}, "body": "js"}]}
RUST_MUTATION = {"args": [{"big": {"$integer": "BQAAAAAAAAA="}, "body": "py", "k": 3.0, "raw": {"$bytes": "AAE="}}], "type": "Mutation", "requestId": 0, "udfPath": "messages:send"}
RUST_ACTION = {"args": [{"x": 1.0}], "type": "Action", "requestId": 2, "udfPath": "echo:run"}
JS_AUTH_USER = {"type": "Authenticate", "baseVersion": 0, "tokenType": "User", "value": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1MSJ9.sig"}
JS_AUTH_NONE = {"type": "Authenticate", "tokenType": "None", "baseVersion": 1}


# --- timestamps ---------------------------------------------------------------

def test_encode_ts_is_base64_of_u64_little_endian() -> None:
    assert P.encode_ts(0) == "AAAAAAAAAAA="
    assert P.encode_ts(1) == "AQAAAAAAAAA="
    assert P.encode_ts(4) == "BAAAAAAAAAA="
    assert P.encode_ts(2**64 - 1) == "//////////8="


@pytest.mark.parametrize("ts", [0, 1, 255, 256, 1_700_000_000_000_000_000, 2**63, 2**64 - 1])
def test_ts_roundtrip(ts: int) -> None:
    assert P.decode_ts(P.encode_ts(ts)) == ts


@pytest.mark.parametrize("bad", [-1, 2**64, 1.0, "1", True])
def test_encode_ts_rejects_non_u64(bad: object) -> None:
    with pytest.raises(ValueError):
        P.encode_ts(bad)  # type: ignore[arg-type]


def test_decode_ts_errors_name_the_field() -> None:
    with pytest.raises(P.ProtocolError, match=r"^Connect\.maxObservedTimestamp: .*8 bytes, got 4"):
        P.decode_ts("AAAAAA==", "Connect.maxObservedTimestamp")
    with pytest.raises(P.ProtocolError, match="not valid base64"):
        P.decode_ts("not base64!", "x")
    with pytest.raises(P.ProtocolError, match="expected a base64 string.*number"):
        P.decode_ts(5, "x")


# --- client messages ------------------------------------------------------------

def test_parse_js_connect() -> None:
    msg = P.parse_client_message(JS_CONNECT)
    assert isinstance(msg, P.Connect)
    assert msg.type == "Connect"
    assert msg.session_id == "6512e133-c2a3-46b8-9396-d3490f6711d5"
    assert msg.connection_count == 0
    assert msg.last_close_reason == "InitialConnect"
    assert msg.client_ts == 1795457574393
    assert msg.max_observed_timestamp is None


def test_parse_rust_connect_and_max_observed_timestamp() -> None:
    assert P.parse_client_message(RUST_CONNECT).client_ts == 0
    msg = P.parse_client_message({**JS_CONNECT, "connectionCount": 3, "lastCloseReason": None, "maxObservedTimestamp": P.encode_ts(77)})
    assert msg == P.Connect(session_id=JS_CONNECT["sessionId"], connection_count=3, last_close_reason=None, max_observed_timestamp=77, client_ts=1795457574393)


def test_connect_validation() -> None:
    bad = dict(JS_CONNECT)
    del bad["sessionId"]
    with pytest.raises(P.ProtocolError) as info:
        P.parse_client_message(bad)
    assert info.value.field == "Connect.sessionId"
    assert "missing required field" in str(info.value)
    with pytest.raises(P.ProtocolError, match=r"Connect\.connectionCount: expected an integer, got string"):
        P.parse_client_message({**JS_CONNECT, "connectionCount": "0"})
    with pytest.raises(P.ProtocolError, match=r"Connect\.connectionCount: expected an integer, got boolean"):
        P.parse_client_message({**JS_CONNECT, "connectionCount": True})
    with pytest.raises(P.ProtocolError, match=r"Connect\.connectionCount: integer -1 out of range"):
        P.parse_client_message({**JS_CONNECT, "connectionCount": -1})
    with pytest.raises(P.ProtocolError, match=r"Connect\.lastCloseReason: expected a string or null"):
        P.parse_client_message({**JS_CONNECT, "lastCloseReason": 1})
    with pytest.raises(P.ProtocolError, match=r"Connect\.maxObservedTimestamp"):
        P.parse_client_message({**JS_CONNECT, "maxObservedTimestamp": "AQ=="})


@pytest.mark.parametrize("raw", [JS_MODIFY, RUST_MODIFY])
def test_parse_modify_query_set_add(raw: dict) -> None:
    msg = P.parse_client_message(raw)
    assert isinstance(msg, P.ModifyQuerySet)
    assert (msg.base_version, msg.new_version) == (0, 1)
    assert msg.modifications == (P.AddQuery(query_id=0, udf_path="messages:list", args={}),)


def test_parse_modify_query_set_empty_and_remove() -> None:
    assert P.parse_client_message(JS_MODIFY_EMPTY).modifications == ()
    msg = P.parse_client_message(RUST_REMOVE)
    assert msg.modifications == (P.RemoveQuery(query_id=1),)
    assert msg.modifications[0].type == "Remove"


def test_add_query_args_journal_component_and_path_canonicalisation() -> None:
    raw = {
        "type": "ModifyQuerySet",
        "baseVersion": 1,
        "newVersion": 2,
        "modifications": [
            {"type": "Add", "queryId": 5, "udfPath": "lists.js:all", "args": [{"n": 3, "i": {"$integer": "BQAAAAAAAAA="}, "b": {"$bytes": "AAE="}}], "journal": "j", "componentPath": "comp"},
            {"type": "Add", "queryId": 6, "udfPath": "lists"},
            {"type": "Add", "queryId": 7, "udfPath": "dir/sub/mod:fn", "args": {"x": None}},
        ],
    }
    a, b, c = P.parse_client_message(raw).modifications
    assert a.udf_path == "lists:all"
    assert a.args == {"n": 3.0, "i": 5, "b": b"\x00\x01"}
    assert type(a.args["n"]) is float and type(a.args["i"]) is int
    assert (a.journal, a.component_path) == ("j", "comp")
    assert (b.udf_path, b.args) == ("lists:default", {})
    assert (c.udf_path, c.args) == ("dir/sub/mod:fn", {"x": None})


def test_modify_query_set_validation() -> None:
    with pytest.raises(P.ProtocolError) as info:
        P.parse_client_message({**JS_MODIFY, "modifications": [{"type": "Replace", "queryId": 0}]})
    assert info.value.field == "ModifyQuerySet.modifications[0].type"
    assert "unknown query set modification 'Replace'" in str(info.value)
    with pytest.raises(P.ProtocolError, match=r"ModifyQuerySet\.modifications: expected an array, got object"):
        P.parse_client_message({**JS_MODIFY, "modifications": {}})
    with pytest.raises(P.ProtocolError, match=r"ModifyQuerySet\.modifications: missing required field"):
        P.parse_client_message({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1})
    with pytest.raises(P.ProtocolError, match=r"ModifyQuerySet\.modifications\[0\]\.queryId: missing"):
        P.parse_client_message({**JS_MODIFY, "modifications": [{"type": "Remove"}]})
    with pytest.raises(P.ProtocolError, match=r"ModifyQuerySet\.modifications\[0\]\.udfPath: expected a string, got number"):
        P.parse_client_message({**JS_MODIFY, "modifications": [{"type": "Add", "queryId": 0, "udfPath": 3}]})
    with pytest.raises(P.ProtocolError, match=r"ModifyQuerySet\.modifications\[0\]: expected an object, got array"):
        P.parse_client_message({**JS_MODIFY, "modifications": [[]]})
    with pytest.raises(P.ProtocolError, match=r"ModifyQuerySet\.baseVersion: expected an integer"):
        P.parse_client_message({**JS_MODIFY, "baseVersion": 0.5})


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        ([{}, {}], r"Mutation\.args: expected an array holding exactly one arguments object, got 2"),
        ([], r"Mutation\.args: .*got 0"),
        ([5], r"Mutation\.args\[0\]: arguments must be an object, got number"),
        ("x", r"Mutation\.args: arguments must be an object, got string"),
        ([{"ok": 1, "$bad": 1}], r"^Mutation\.args\[0\]: Field name '\$bad' starts with a '\$', which is reserved\.$"),
        ([{"$bad": 1}], r"^Mutation\.args\[0\]: unknown special value '\$bad'$"),
        ([{"v": {"$integer": "AQ=="}}], r"Mutation\.args\[0\]\.v: malformed \$integer"),
        ([{"$integer": "AQAAAAAAAAA="}], r"Mutation\.args\[0\]: arguments must be an object, got int"),
    ],
)
def test_bad_args(args: object, pattern: str) -> None:
    with pytest.raises(P.ProtocolError, match=pattern):
        P.parse_client_message({**JS_MUTATION, "args": args})


def test_parse_mutations_and_actions() -> None:
    js = P.parse_client_message(JS_MUTATION)
    assert js == P.Mutation(request_id=0, udf_path="messages:send", args={"big": 5, "body": "js"})
    rust = P.parse_client_message(RUST_MUTATION)
    assert rust.args == {"big": 5, "body": "py", "k": 3.0, "raw": b"\x00\x01"}
    act = P.parse_client_message(RUST_ACTION)
    assert isinstance(act, P.Action) and act.type == "Action"
    assert (act.request_id, act.udf_path, act.args, act.component_path) == (2, "echo:run", {"x": 1.0}, None)
    comp = P.parse_client_message({**JS_MUTATION, "udfPath": "mod", "componentPath": "c/d"})
    assert (comp.udf_path, comp.component_path) == ("mod:default", "c/d")


def test_mutation_validation() -> None:
    raw = dict(JS_MUTATION)
    del raw["args"]
    with pytest.raises(P.ProtocolError, match=r"^Mutation\.args: missing required field$"):
        P.parse_client_message(raw)
    with pytest.raises(P.ProtocolError, match=r"^Action\.requestId: missing"):
        P.parse_client_message({"type": "Action", "udfPath": "a:b", "args": [{}]})
    with pytest.raises(P.ProtocolError, match=r"Mutation\.udfPath: invalid function path ':f'"):
        P.parse_client_message({**JS_MUTATION, "udfPath": ":f"})
    with pytest.raises(P.ProtocolError, match=r"Mutation\.udfPath: invalid function path 'mod:'"):
        P.parse_client_message({**JS_MUTATION, "udfPath": "mod:"})


def test_parse_authenticate() -> None:
    user = P.parse_client_message(JS_AUTH_USER)
    assert user == P.Authenticate(base_version=0, token_type="User", value=JS_AUTH_USER["value"])
    none = P.parse_client_message(JS_AUTH_NONE)
    assert (none.base_version, none.token_type, none.value) == (1, "None", None)
    admin = P.parse_client_message({"type": "Authenticate", "baseVersion": 2, "tokenType": "Admin", "value": "key", "impersonating": {"subject": "u"}})
    assert (admin.token_type, admin.value, admin.impersonating) == ("Admin", "key", {"subject": "u"})
    with pytest.raises(P.ProtocolError, match=r"Authenticate\.tokenType: expected 'User', 'Admin' or 'None', got 'Bearer'"):
        P.parse_client_message({**JS_AUTH_USER, "tokenType": "Bearer"})
    with pytest.raises(P.ProtocolError, match=r"Authenticate\.value: missing required field"):
        P.parse_client_message({"type": "Authenticate", "baseVersion": 0, "tokenType": "User"})
    with pytest.raises(P.ProtocolError, match=r"Authenticate\.baseVersion: missing"):
        P.parse_client_message({"type": "Authenticate", "tokenType": "None"})


def test_parse_event() -> None:
    msg = P.parse_client_message({"type": "Event", "eventType": "ClientReceivedTransition", "event": {"transitionTransitTime": 3.5, "messageLength": 10}})
    assert msg == P.Event(event_type="ClientReceivedTransition", event={"transitionTransitTime": 3.5, "messageLength": 10})
    with pytest.raises(P.ProtocolError, match=r"Event\.eventType: missing"):
        P.parse_client_message({"type": "Event"})


def test_message_level_errors() -> None:
    with pytest.raises(P.ProtocolError, match=r"^type: unknown client message type 'Subscribe'$"):
        P.parse_client_message({"type": "Subscribe"})
    with pytest.raises(P.ProtocolError, match=r"^type: missing required field$"):
        P.parse_client_message({"sessionId": "x"})
    with pytest.raises(P.ProtocolError, match=r"^type: expected a string, got number$"):
        P.parse_client_message({"type": 1})
    with pytest.raises(P.ProtocolError, match=r"^message: expected a JSON object, got array$"):
        P.parse_client_message([])
    with pytest.raises(P.ProtocolError, match=r"^message: invalid JSON"):
        P.parse_client_message_text("{nope")
    assert P.parse_client_message_text(orjson.dumps(JS_MUTATION)).request_id == 0
    assert isinstance(P.parse_client_message_text(orjson.dumps(JS_CONNECT).decode()), P.Connect)


def test_protocol_error_is_a_value_error_with_field() -> None:
    err = P.ProtocolError("Mutation.args", "bad")
    assert isinstance(err, ValueError)
    assert err.field == "Mutation.args"
    assert str(err) == "Mutation.args: bad"


@pytest.mark.parametrize(
    ("path", "canonical"),
    [("a:b", "a:b"), ("a", "a:default"), ("a.js:b", "a:b"), ("a.js", "a:default"), ("x/y.js:z", "x/y:z"), ("m:n:o", "m:n:o")],
)
def test_canonicalize_udf_path(path: str, canonical: str) -> None:
    assert P.canonicalize_udf_path(path) == canonical


# --- server messages ------------------------------------------------------------

def test_transition_message_exact_shape() -> None:
    msg = P.transition_message(
        P.StateVersion(0, 0, 0),
        P.StateVersion(1, 5, 0),
        [P.query_updated(0, [{"n": 1, "x": 1.5}]), P.query_removed(3)],
    )
    assert msg == {
        "type": "Transition",
        "startVersion": {"querySet": 0, "ts": "AAAAAAAAAAA=", "identity": 0},
        "endVersion": {"querySet": 1, "ts": "BQAAAAAAAAA=", "identity": 0},
        "modifications": [
            {"type": "QueryUpdated", "queryId": 0, "value": [{"n": {"$integer": "AQAAAAAAAAA="}, "x": 1.5}], "logLines": [], "journal": None},
            {"type": "QueryRemoved", "queryId": 3},
        ],
    }
    with_extras = P.transition_message(P.StateVersion(), P.StateVersion(1, 1, 1), client_clock_skew=-3, server_ts=123)
    assert (with_extras["clientClockSkew"], with_extras["serverTs"], with_extras["modifications"]) == (-3, 123, [])


def test_query_updated_and_failed() -> None:
    up = P.query_updated(2, None, log_lines=["[LOG] 'hi'"], journal="j")
    assert up == {"type": "QueryUpdated", "queryId": 2, "value": None, "logLines": ["[LOG] 'hi'"], "journal": "j"}
    assert P.query_updated(1, P.Wire({"$integer": "AQAAAAAAAAA="}))["value"] == {"$integer": "AQAAAAAAAAA="}
    assert P.query_updated(1, b"\x00")["value"] == {"$bytes": "AA=="}
    assert P.query_updated(1, math.inf)["value"] == {"$float": "AAAAAAAA8H8="}
    failed = P.query_failed(4, "boom")
    assert failed == {"type": "QueryFailed", "queryId": 4, "errorMessage": "boom", "logLines": [], "journal": None}
    assert "errorData" not in failed
    assert P.query_failed(4, "boom", error_data={"code": "X", "n": 2})["errorData"] == {"code": "X", "n": {"$integer": "AgAAAAAAAAA="}}
    assert P.query_failed(4, "boom", error_data=None)["errorData"] is None


def test_mutation_and_action_responses() -> None:
    ok = P.mutation_success_message(7, {"id": "abc", "n": 1}, 2**40)
    assert ok == {
        "type": "MutationResponse",
        "requestId": 7,
        "success": True,
        "result": {"id": "abc", "n": {"$integer": "AQAAAAAAAAA="}},
        "ts": P.encode_ts(2**40),
        "logLines": [],
    }
    bad = P.mutation_failure_message(8, "Uncaught ConvexError: EMPTY_TEXT", error_data={"code": "EMPTY_TEXT"})
    assert bad == {
        "type": "MutationResponse",
        "requestId": 8,
        "success": False,
        "result": "Uncaught ConvexError: EMPTY_TEXT",
        "ts": None,
        "logLines": [],
        "errorData": {"code": "EMPTY_TEXT"},
    }
    assert "errorData" not in P.mutation_failure_message(8, "plain")
    assert P.action_success_message(9, 1.5, log_lines=["[INFO] x"]) == {
        "type": "ActionResponse", "requestId": 9, "success": True, "result": 1.5, "logLines": ["[INFO] x"]}
    fail = P.action_failure_message(9, "nope", error_data="data")
    assert fail == {"type": "ActionResponse", "requestId": 9, "success": False, "result": "nope", "logLines": [], "errorData": "data"}


def test_other_server_messages_and_encoding() -> None:
    assert P.auth_error_message("bad token", 0) == {"type": "AuthError", "error": "bad token", "baseVersion": 0}
    assert P.auth_error_message("x", 1, auth_update_attempted=True)["authUpdateAttempted"] is True
    assert P.fatal_error_message("oops") == {"type": "FatalError", "error": "oops"}
    assert P.ping_message() == {"type": "Ping"}
    text = P.encode_server_message(P.ping_message())
    assert isinstance(text, str) and orjson.loads(text) == {"type": "Ping"}
    assert orjson.loads(P.encode_server_message_bytes(P.fatal_error_message("é"))) == {"type": "FatalError", "error": "é"}


def test_state_version_json_roundtrip() -> None:
    v = P.StateVersion(3, 2**50, 2)
    assert P.StateVersion.from_json(v.to_json()) == v
    with pytest.raises(P.ProtocolError, match=r"endVersion\.querySet: missing"):
        P.StateVersion.from_json({"ts": "AAAAAAAAAAA=", "identity": 0}, "endVersion")


def test_transition_chunks_reassemble() -> None:
    big = P.transition_message(P.StateVersion(), P.StateVersion(1, 9, 0), [P.query_updated(0, "x" * 1000)])
    chunks = P.transition_chunks(big, 128, "t1")
    assert len(chunks) > 1
    assert [c["partNumber"] for c in chunks] == list(range(len(chunks)))
    assert all(c["type"] == "TransitionChunk" and c["totalParts"] == len(chunks) and c["transitionId"] == "t1" for c in chunks)
    assert all(len(c["chunk"]) <= 128 for c in chunks)
    assert orjson.loads("".join(c["chunk"] for c in chunks)) == big
    small = P.transition_message(P.StateVersion(), P.StateVersion(1, 1, 0))
    assert P.transition_chunks(small, 10_000, "t2") == [small]
    with pytest.raises(ValueError):
        P.transition_chunks(small, 0, "t3")


# --- version tracking -----------------------------------------------------------

def test_version_tracker_follows_the_js_client() -> None:
    t = P.VersionTracker()
    assert not t.has_pending_versions
    t.apply_modify_query_set(P.parse_client_message(JS_MODIFY))
    assert t.has_pending_versions
    first = t.transition(4, [P.query_updated(0, [])])
    assert first["startVersion"] == {"querySet": 0, "ts": P.encode_ts(0), "identity": 0}
    assert first["endVersion"] == {"querySet": 1, "ts": P.encode_ts(4), "identity": 0}
    assert not t.has_pending_versions
    t.apply_authenticate(P.parse_client_message(JS_AUTH_USER))
    second = t.transition(4)
    assert second["startVersion"] == first["endVersion"]
    assert second["endVersion"] == {"querySet": 1, "ts": P.encode_ts(4), "identity": 1}
    t.apply_authenticate(P.parse_client_message(JS_AUTH_NONE))
    t.apply_modify_query_set(P.ModifyQuerySet(1, 2, (P.RemoveQuery(0),)))
    third = t.transition(6, [P.query_removed(0)])
    assert third["endVersion"] == {"querySet": 2, "ts": P.encode_ts(6), "identity": 2}
    assert t.sent == P.StateVersion(2, 6, 2)


def test_version_tracker_noop_transition() -> None:
    t = P.VersionTracker()
    t.apply_modify_query_set(P.parse_client_message(JS_MODIFY_EMPTY))
    t.transition(8)
    noop = t.transition(8)
    assert noop["startVersion"] == noop["endVersion"] == {"querySet": 1, "ts": P.encode_ts(8), "identity": 0}
    assert noop["modifications"] == []


def test_version_tracker_rejects_gaps_and_time_travel() -> None:
    t = P.VersionTracker()
    with pytest.raises(P.ProtocolError, match=r"ModifyQuerySet\.baseVersion: expected 0 .*got 2"):
        t.apply_modify_query_set(P.ModifyQuerySet(2, 3, ()))
    with pytest.raises(P.ProtocolError, match=r"ModifyQuerySet\.newVersion: must be greater than baseVersion 0"):
        t.apply_modify_query_set(P.ModifyQuerySet(0, 0, ()))
    with pytest.raises(P.ProtocolError, match=r"Authenticate\.baseVersion: expected 0 .*got 1"):
        t.apply_authenticate(P.Authenticate(1, "None"))
    t.transition(10)
    with pytest.raises(ValueError, match="older than the last sent ts 10"):
        t.transition(9)


# --- HTTP API ---------------------------------------------------------------------

def test_http_parse_npm_client_body() -> None:
    body = b'{"path":"messages:send","format":"convex_encoded_json","args":[{"body":"hi","n":{"$integer":"AQAAAAAAAAA="}}]}'
    call = H.parse_function_call(body, endpoint="mutation")
    assert call == H.FunctionCall(path="messages:send", args={"body": "hi", "n": 1}, format="convex_encoded_json")


def test_http_parse_python_legacy_body_and_function_endpoint() -> None:
    call = H.parse_function_call('{"path": "messages:list", "format": "convex_encoded_json", "args": {}}')
    assert (call.path, call.args) == ("messages:list", {})
    fn = H.parse_function_call({"componentPath": "comp", "path": "a.js", "format": "convex_encoded_json", "args": {"x": 2}}, endpoint="function")
    assert (fn.path, fn.args, fn.component_path) == ("a:default", {"x": 2.0}, "comp")


def test_http_format_sources() -> None:
    assert H.parse_function_call(b'{"path":"a:b","args":{"x":1}}').format is None
    assert H.parse_function_call(b'{"path":"a:b"}', query_format="json").format == "json"
    assert H.parse_function_call(b'{"path":"a:b","format":"convex_encoded_json"}', query_format="json").format == "convex_encoded_json"
    assert H.parse_function_call(b'{"path":"a:b","format":"json","args":{"x":1}}').args == {"x": 1.0}
    with pytest.raises(H.HttpApiError, match="unsupported format 'xml'") as info:
        H.parse_function_call(b'{"path":"a:b","format":"xml"}')
    assert info.value.status == 400 and info.value.body["code"] == "BadFormat"
    with pytest.raises(H.HttpApiError, match=r"query string"):
        H.parse_function_call(b'{"path":"a:b"}', query_format="yaml")


@pytest.mark.parametrize(
    ("body", "code", "pattern"),
    [
        (b"{not json", "BadJsonBody", "not valid JSON"),
        (b"[1]", "BadJsonBody", "must be a JSON object"),
        (b"", "BadPath", "path: missing required field"),
        (b'{"args":{}}', "BadPath", "path: missing"),
        (b'{"path":5}', "BadPath", "path: expected a string"),
        (b'{"path":"a:b","args":[{},{}]}', "BadArgs", "args: expected an array holding exactly one"),
        (b'{"path":"a:b","args":7}', "BadArgs", "args: arguments must be an object"),
        (b'{"path":"a:b","args":{"y":1,"$x":1}}', "BadArgs", r"^args: Field name '\$x' starts with a '\$', which is reserved"),
        (b'{"path":"a:b","args":[{"v":{"$bytes":"%%"}}]}', "BadArgs", r"^args\[0\]\.v: malformed \$bytes"),
        (b'{"path":"a:b","componentPath":3}', "BadRequest", "componentPath"),
    ],
)
def test_http_bad_requests(body: bytes, code: str, pattern: str) -> None:
    with pytest.raises(H.HttpApiError, match=pattern) as info:
        H.parse_function_call(body)
    assert info.value.body == {"code": code, "message": info.value.message}
    assert info.value.status == 400


def test_http_query_at_ts() -> None:
    ts = H.query_ts_body(42)
    assert ts == {"ts": P.encode_ts(42)}
    body = orjson.dumps({"path": "a:b", "format": "convex_encoded_json", "args": [{}], **ts})
    assert H.parse_function_call(body, endpoint="query_at_ts").ts == 42
    assert H.parse_function_call({"path": "a:b", "ts": 17}, endpoint="query_at_ts").ts == 17
    assert H.parse_function_call({"path": "a:b", "ts": "1234"}, endpoint="query_at_ts").ts == 1234
    assert H.parse_function_call({"path": "a:b", "ts": 99}).ts is None
    with pytest.raises(H.HttpApiError, match="ts: missing"):
        H.parse_function_call({"path": "a:b"}, endpoint="query_at_ts")
    with pytest.raises(H.HttpApiError, match="ts"):
        H.parse_function_call({"path": "a:b", "ts": "zz"}, endpoint="query_at_ts")
    with pytest.raises(H.HttpApiError, match="ts"):
        H.parse_function_call({"path": "a:b", "ts": -1}, endpoint="query_at_ts")


def test_http_response_format() -> None:
    assert H.response_format("json", "npm-1.48.0") == "json"
    assert H.response_format("convex_encoded_json") == "convex_encoded_json"
    assert H.response_format(None, "npm-1.48.0") == "convex_encoded_json"
    assert H.response_format(None, "python-0.8.1") == "convex_encoded_json"
    assert H.response_format(None, None) == "json"
    assert H.response_format(None, "curl/8") == "json"


def test_http_clean_json() -> None:
    value = {"i": 5, "f": 1.5, "nan": math.nan, "inf": math.inf, "ninf": -math.inf, "b": b"\x00\x01", "l": [None, True, "s"]}
    assert H.clean_json(value) == {"i": "5", "f": 1.5, "nan": "NaN", "inf": "Infinity", "ninf": "-Infinity", "b": "AAE=", "l": [None, True, "s"]}
    with pytest.raises(TypeError):
        H.clean_json(object())


def test_http_bodies() -> None:
    assert H.FUNCTION_ERROR_STATUS == 560
    assert H.success_body({"n": 1}) == {"status": "success", "value": {"n": {"$integer": "AQAAAAAAAAA="}}, "logLines": []}
    assert H.success_body({"n": 1}, fmt="json", log_lines=["[LOG] x"]) == {"status": "success", "value": {"n": "1"}, "logLines": ["[LOG] x"]}
    assert H.success_body(P.Wire({"$integer": "AQAAAAAAAAA="}), fmt="json")["value"] == {"$integer": "AQAAAAAAAAA="}
    err = H.error_body("Uncaught ConvexError: EMPTY_TEXT", error_data={"code": "EMPTY_TEXT", "n": 2})
    assert err["status"] == "error"
    assert err["errorMessage"] == "Uncaught ConvexError: EMPTY_TEXT"
    assert err["errorData"] == {"code": "EMPTY_TEXT", "n": {"$integer": "AgAAAAAAAAA="}}
    assert (err["code"], err["message"]) == ("FunctionError", err["errorMessage"])
    assert H.error_body("x", error_data={"n": 2}, fmt="json")["errorData"] == {"n": "2"}
    assert "errorData" not in H.error_body("plain")
