"""Order-preserving key encoding: bytewise order == Convex value order."""
from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.keys import (
    UNDEFINED,
    KeyDecodeError,
    decode_tuple,
    decode_value_key,
    encode_tuple,
    encode_value_key,
    prefix_successor,
)

# --- reference comparator --------------------------------------------------------

_RANK = {type(None): 1, int: 2, float: 3, bool: 4, str: 5, bytes: 6, list: 7, dict: 8}


def _rank(v: Any) -> int:
    return 0 if v is UNDEFINED else _RANK[type(v)]


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def _cmp_plain(a: Any, b: Any) -> int:
    return (a > b) - (a < b)


def _float_key(x: float) -> tuple[int, float, int]:
    """Total order: -inf .. -0.0 < 0.0 .. +inf < NaN (all NaNs equal)."""
    if math.isnan(x):
        return (1, 0.0, 0)
    return (0, x, 0 if math.copysign(1.0, x) < 0 else 1)


def convex_compare(a: Any, b: Any) -> int:
    """Reference Convex ordering, written independently of the encoding."""
    ra, rb = _rank(a), _rank(b)
    if ra != rb:
        return _sign(ra - rb)
    if a is UNDEFINED or a is None:
        return 0
    if type(a) is float:
        return _cmp_plain(_float_key(a), _float_key(b))
    if type(a) is str:
        return _cmp_plain(a.encode(), b.encode())
    if type(a) in (int, bool, bytes):
        return _cmp_plain(a, b)
    if type(a) is list:
        return _cmp_seq(a, b)
    items_a = sorted(a.items(), key=lambda kv: kv[0].encode())
    items_b = sorted(b.items(), key=lambda kv: kv[0].encode())
    for (ka, va), (kb, vb) in zip(items_a, items_b):
        c = convex_compare(ka, kb) or convex_compare(va, vb)
        if c:
            return c
    return _cmp_plain(len(items_a), len(items_b))


def _cmp_seq(a: list[Any], b: list[Any]) -> int:
    for x, y in zip(a, b):
        c = convex_compare(x, y)
        if c:
            return c
    return _cmp_plain(len(a), len(b))


def _cmp_bytes(a: bytes, b: bytes) -> int:
    return _cmp_plain(a, b)


# --- strategies --------------------------------------------------------------------

INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
SMALL_INT = st.integers(min_value=-3, max_value=3)
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, float("inf"), float("-inf"), float("nan"), -float("nan"), 5e-324, -5e-324, 1.0, -1.0]
)
TEXT = st.text(max_size=6) | st.sampled_from(["", "a", "a\x00", "a\x00b", "ab", "\x00", "\x01", "é", "\uffff", "😀"])
BINARY = st.binary(max_size=6) | st.sampled_from([b"", b"\x00", b"\x00\x00", b"\x00\xff", b"\xff", b"\x00\x01", b"a"])

SCALARS = st.none() | st.booleans() | INT64 | SMALL_INT | FLOATS | TEXT | BINARY
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=3) | st.sampled_from(["", "a", "b", "a\x00"]), children, max_size=4),
    max_leaves=12,
)
FIELD_VALUES = VALUES | st.just(UNDEFINED)


# --- properties --------------------------------------------------------------------

@settings(max_examples=1000)
@given(FIELD_VALUES, FIELD_VALUES)
def test_encoding_order_matches_convex_order(a: Any, b: Any) -> None:
    assert _cmp_bytes(encode_value_key(a), encode_value_key(b)) == convex_compare(a, b)


@settings(max_examples=500)
@given(VALUES)
def test_encoding_is_deterministic_and_self_equal(a: Any) -> None:
    assert encode_value_key(a) == encode_value_key(a)
    assert convex_compare(a, a) == 0


@settings(max_examples=1000)
@given(FIELD_VALUES, FIELD_VALUES)
def test_encoding_is_prefix_free(a: Any, b: Any) -> None:
    ea, eb = encode_value_key(a), encode_value_key(b)
    if convex_compare(a, b) != 0:
        assert not eb.startswith(ea)
        assert not ea.startswith(eb)
    else:
        assert ea == eb


@settings(max_examples=800)
@given(st.lists(FIELD_VALUES, max_size=4), st.lists(FIELD_VALUES, max_size=4))
def test_tuple_order_is_lexicographic(a: list[Any], b: list[Any]) -> None:
    assert _cmp_bytes(encode_tuple(a), encode_tuple(b)) == _cmp_seq(a, b)


@settings(max_examples=800)
@given(st.lists(SCALARS, max_size=3), st.lists(SCALARS, min_size=0, max_size=5))
def test_prefix_range_holds_exactly_the_tuples_with_that_prefix(prefix: list[Any], t: list[Any]) -> None:
    lo = encode_tuple(prefix)
    if not lo:
        return
    hi = prefix_successor(lo)
    key = encode_tuple(t)
    inside = lo <= key < hi
    expected = len(t) >= len(prefix) and _cmp_seq(t[:len(prefix)], prefix) == 0
    assert inside == expected


@settings(max_examples=800)
@given(st.lists(FIELD_VALUES, max_size=4))
def test_decode_round_trips(values: list[Any]) -> None:
    decoded = decode_tuple(encode_tuple(values))
    assert len(decoded) == len(values)
    for got, want in zip(decoded, values):
        assert convex_compare(got, want) == 0
        assert type(got) is type(want)


# --- examples --------------------------------------------------------------------

def test_type_order_chain() -> None:
    chain = [UNDEFINED, None, -(1 << 63), (1 << 63) - 1, float("-inf"), float("nan"), False, True,
             "", "\uffff", b"", b"\xff", [], [None], {}, {"a": None}]
    keys = [encode_value_key(v) for v in chain]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


def test_float_order_and_documented_choices() -> None:
    floats = [float("-inf"), -1e308, -1.5, -5e-324, -0.0, 0.0, 5e-324, 1.0, 1e308, float("inf"), float("nan")]
    keys = [encode_value_key(f) for f in floats]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)  # -0.0 and 0.0 are distinct, -0.0 first
    neg_nan = struct.unpack(">d", b"\xff\xf8" + b"\x00" * 6)[0]
    odd_nan = struct.unpack(">d", b"\x7f\xf0" + b"\x00" * 5 + b"\x01")[0]
    assert encode_value_key(neg_nan) == encode_value_key(odd_nan) == encode_value_key(float("nan"))


def test_int_and_float_are_different_types() -> None:
    assert encode_value_key(1) != encode_value_key(1.0)
    assert encode_value_key(10**18) < encode_value_key(-1e300)  # int64 sorts before every float64
    assert encode_value_key(True) > encode_value_key(1.0)


def test_strings_with_nul_bytes() -> None:
    order = ["", "\x00", "\x00\x00", "\x01", "a", "a\x00", "a\x00b", "a\x01", "ab", "b"]
    keys = [encode_value_key(s) for s in order]
    assert keys == sorted(keys)


def test_arrays_and_objects() -> None:
    assert encode_value_key([]) < encode_value_key([None])
    assert encode_value_key([1, 2]) < encode_value_key([1, 2, 0])
    assert encode_value_key([1, 3]) > encode_value_key([1, 2, 99])
    assert encode_value_key({"b": 1, "a": 2}) == encode_value_key({"a": 2, "b": 1})
    assert encode_value_key({"a": 1}) < encode_value_key({"a": 1, "b": 0}) < encode_value_key({"b": 0})


def test_prefix_successor() -> None:
    assert prefix_successor(b"ab") == b"ac"
    assert prefix_successor(b"a\xff\xff") == b"b"
    assert prefix_successor(b"\x00") == b"\x01"
    with pytest.raises(ValueError):
        prefix_successor(b"\xff\xff")
    with pytest.raises(ValueError):
        prefix_successor(b"")


def test_rejects_non_values() -> None:
    with pytest.raises(TypeError):
        encode_value_key(object())
    with pytest.raises(TypeError):
        encode_value_key({1, 2})
    with pytest.raises(ValueError):
        encode_value_key(1 << 63)
    with pytest.raises(ValueError):
        encode_value_key(-(1 << 63) - 1)


def test_decode_rejects_garbage() -> None:
    with pytest.raises(KeyDecodeError):
        decode_value_key(b"\x07abc")  # unterminated string
    with pytest.raises(KeyDecodeError):
        decode_value_key(b"\x03\x00")  # truncated int
    with pytest.raises(KeyDecodeError):
        decode_value_key(b"\x7f")
