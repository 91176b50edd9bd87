"""`returns=` validators, ConvexError messages, the int/float rule and Convex's value limits, in the engine."""
from __future__ import annotations

import base64
import struct

import pytest

from engine.client_values import client_wire, result_wire
from engine.errors import AppError, ArgumentError, EngineError, js_stringify
from engine.functions import ReturnsValidationError
from engine.validators import v


async def test_returns_mismatch_names_the_function_and_the_path(make_runtime) -> None:
    rt = await make_runtime("fidelity")
    with pytest.raises(ReturnsValidationError) as info:
        rt.run_query("shapes:wrong", {})
    assert str(info.value) == ("ReturnsValidationError: Value does not match validator.\nValue: 42n\n"
                               "Validator: v.string()\nFunction: shapes:wrong")
    with pytest.raises(ReturnsValidationError, match=r"Path: \.items\[1\]\.n\nValue: 5n\nValidator: v\.string\(\)"
                                                     r"\nFunction: shapes:wrong_deep"):
        rt.run_query("shapes:wrong_deep", {})
    # A mutation whose result is refused commits nothing.
    with pytest.raises(ReturnsValidationError, match="Function: shapes:wrong_mutation"):
        await rt.run_mutation("shapes:wrong_mutation", {})
    assert rt.run_query("shapes:counters", {}).value == []


async def test_returns_normalises_numbers(make_runtime) -> None:
    rt = await make_runtime("fidelity")
    value = rt.run_query("shapes:numbers", {}).value
    assert value == {"exact": 5, "approx": 5.0, "plain": 5, "maybe": 7}
    assert type(value["exact"]) is int and type(value["approx"]) is float


def _int64(n: int) -> dict[str, str]:
    return {"$integer": base64.b64encode(struct.pack("<q", n)).decode()}


async def test_int_float_rule_on_the_wire(make_runtime) -> None:
    rt = await make_runtime("fidelity")
    app = rt.app
    assert result_wire(app, "shapes:count", 3) == 3  # a JSON number: JS gets 3, not 3n
    assert result_wire(app, "shapes:numbers", rt.run_query("shapes:numbers", {}).value) == {
        "exact": _int64(5), "approx": 5.0, "plain": 5, "maybe": _int64(7)}
    assert result_wire(app, "shapes:big", [2**60, -(2**53), 2**53 + 1]) == [_int64(2**60), -(2**53), _int64(2**53 + 1)]
    # Documents follow their table's schema: `count` is declared v.int64() and stays exact.
    await rt.run_mutation("shapes:add_counter", {"count": 2, "score": 1.5, "other": 4})
    (doc,) = rt.run_query("shapes:counters", {}).value
    wire = result_wire(app, "shapes:counters", [doc])[0]
    assert wire["count"] == _int64(2) and wire["score"] == 1.5 and wire["other"] == 4
    # Without a schema or validator, nothing is declared: every small int is a number.
    assert client_wire({"a": [1, {"b": 2}], "c": b"\x01"}) == {"a": [1, {"b": 2}], "c": {"$bytes": "AQ=="}}
    assert client_wire(7, v.union(v.string(), v.int64())) == _int64(7)
    assert client_wire({"k": 7}, v.record(v.string(), v.int64())) == {"k": _int64(7)}


async def test_app_error_reads_like_convex_error(make_runtime) -> None:
    rt = await make_runtime("fidelity")
    with pytest.raises(AppError) as info:
        await rt.run_mutation("shapes:refuse", {"code": "NOPE"})
    assert str(info.value) == 'Uncaught ConvexError: {"code":"NOPE","n":3}'
    assert str(AppError("plain words")) == "Uncaught ConvexError: plain words"
    assert js_stringify({"big": 2**60, "f": 2.0, "x": 0.5, "b": b"\x00", "l": [None, True]}) == \
        '{"big":"1152921504606846976n","f":2,"x":0.5,"b":{},"l":[null,true]}'


async def test_value_limits_name_the_path(make_runtime) -> None:
    rt = await make_runtime("fidelity")
    assert len(rt.run_query("shapes:long_list", {"n": 8192.0}).value["rows"]) == 8192
    with pytest.raises(EngineError, match=r"return value of shapes:long_list\.rows: Array length is too long "
                                          r"\(8193 > maximum length 8192\)"):
        rt.run_query("shapes:long_list", {"n": 8193.0})
    with pytest.raises(EngineError, match="return value of shapes:odd_key: Field name 'caf\xe9' has invalid "
                                          "character '\xe9': Field names can only contain non-control ASCII"):
        rt.run_query("shapes:odd_key", {"key": "caf\xe9"})
    with pytest.raises(EngineError, match=r"starts with a '\$', which is reserved"):
        rt.run_query("shapes:odd_key", {"key": "$x"})
    assert rt.run_query("shapes:odd_key", {"key": ""}).value == {"": 1.0}  # allowed in nested values, as in Convex
    cases = [
        ({"_secret": 1.0}, r"insert into 'bag': field '_secret' is reserved"),
        ({"bad-name": 1.0}, r"bag document\.bad-name: Identifier 'bad-name' can only contain alphanumeric"),
        ({"x" * 65: 1.0}, r"Identifier is too long \(65 > maximum 64\)"),
        # arguments are checked against the same limits before the function runs
        ({"ok": {"nested key ok": [1.0] * 8193}},
         r"ArgumentValidationError: args\.doc\.ok\.nested key ok: Array length is too long \(8193 > maximum length"),
        ({"ok": {f"f{i}": 1.0 for i in range(1025)}},
         r"args\.doc\.ok: Object has too many fields \(1025 > maximum number 1024\)"),
        ({"ok": "\ud800"}, r"args\.doc\.ok: string is not valid Unicode"),
    ]
    for doc, pattern in cases:
        with pytest.raises(ArgumentError, match=pattern):
            await rt.run_mutation("shapes:store", {"doc": doc})
    with pytest.raises(ArgumentError, match=r"bag document\.rows: Array length is too long \(8193 > maximum length"):
        await rt.run_mutation("shapes:store_long", {"n": 8193.0})
    await rt.run_mutation("shapes:store_long", {"n": 8192.0})
    deep: object = 1.0
    for _ in range(15):
        deep = [deep]
    await rt.run_mutation("shapes:store", {"doc": {"deep": deep}})  # the document and 15 arrays: 16 levels, allowed
    with pytest.raises(ArgumentError, match=r"too nested \(nesting deeper than 16 levels\)"):
        await rt.run_mutation("shapes:store", {"doc": {"deep": [deep]}})
