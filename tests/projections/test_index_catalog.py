"""Index-key derivation (`projections.index_catalog`) against a plain reference built on `encode_value_key`."""
from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from values import decode_doc, encode_doc, new_id
from projections.index_catalog import (
    TableIndexes,
    by_id_key,
    decode_stored,
    doc_key_from_id,
    field_value,
)
from projections.keys import UNDEFINED, encode_float_key, encode_id_key, encode_string_key, encode_value_key
from projections.layout import index_prefix

SHAPES: dict[str, dict[str, list[str]]] = {
    "none": {},
    "one": {"by_a": ["a"]},
    "several": {"by_a": ["a"], "by_b": ["b"], "by_c": ["c"]},
    "compound": {"by_a": ["a"], "by_ab": ["a", "b"]},
    "dotted": {"by_a": ["a"], "by_db": ["d.b"]},
}

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1), st.floats(allow_nan=True),
    st.sampled_from([0.0, -0.0, math.inf, -math.inf, 1.5, -1.5]), st.text(max_size=8), st.binary(max_size=8),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "x"]), inner, max_size=3)), max_leaves=6)
CREATION_TIMES = st.one_of(st.floats(min_value=1.0, max_value=2e12), st.sampled_from([0.0, -0.0, -5.0, math.nan]),
                           st.integers(0, 10), st.just(UNDEFINED))


@st.composite
def docs(draw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    ct = draw(CREATION_TIMES)
    if ct is not UNDEFINED:
        doc["_creationTime"] = ct
    for field in draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True)):
        doc[field] = draw(VALUES)
    return doc


IDS = st.one_of(st.just(new_id("t")), st.text(min_size=1, max_size=12))


def reference_keys(table: str, indexes: dict[str, list[str]], doc: dict[str, Any], doc_id: str) -> list[bytes]:
    """Every key of `doc`, aligned with `TableIndexes.names`, straight from the key layout."""
    tail = encode_value_key(doc.get("_creationTime", UNDEFINED)) + encode_value_key(doc_id)
    keys = [index_prefix(table, "by_id") + encode_value_key(doc_id), index_prefix(table, "by_creation_time") + tail]
    for name in sorted(indexes):
        parts = [encode_value_key(field_value(doc, tuple(f.split(".")))) for f in indexes[name]]
        keys.append(index_prefix(table, name) + b"".join(parts) + tail)
    return keys


@pytest.mark.parametrize("shape", sorted(SHAPES))
@settings(max_examples=150, deadline=None)
@given(doc=docs(), other=docs(), doc_id=IDS)
def test_doc_keys_and_key_changes_match_the_reference(shape: str, doc: dict[str, Any], other: dict[str, Any],
                                                      doc_id: str) -> None:
    indexes = SHAPES[shape]
    ti = TableIndexes("t", indexes)
    want = reference_keys("t", indexes, doc, doc_id)
    assert list(ti.doc_keys(doc, doc_id.encode())) == want
    assert ti.keys(doc, doc_id) == want
    other_keys = reference_keys("t", indexes, other, doc_id)
    for old, new, old_keys, new_keys in [(doc, other, want, other_keys), (other, doc, other_keys, want)]:
        assert list(ti.key_changes(old, new, doc_id.encode())) == [
            (o, n) for o, n in zip(old_keys, new_keys) if o != n]
    assert ti.key_changes(doc, dict(doc), doc_id.encode()) == ()


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_updates_that_keep_the_indexed_values_change_no_key(shape: str) -> None:
    ti = TableIndexes("t", SHAPES[shape])
    old = {"_creationTime": 1.7e12, "a": "x", "b": 3, "c": None, "d": {"b": True}, "body": "before"}
    new = {**old, "body": "after"}
    assert ti.key_changes(old, new, b"id1") == ()
    if shape != "none":
        assert ti.key_changes(old, {**new, "a": "y"}, b"id1")  # an indexed field changed
        assert ti.key_changes({**old, "a": 0.0}, {**old, "a": -0.0}, b"id1")  # equal, but not the same key
    assert ti.key_changes({**old, "_creationTime": 0.0}, {**old, "_creationTime": -0.0}, b"id1")


@pytest.mark.parametrize("shape", ["one", "several"])
def test_a_value_that_is_no_convex_value_is_refused_as_by_encode_value_key(shape: str) -> None:
    ti = TableIndexes("t", SHAPES[shape])
    with pytest.raises(TypeError, match="not a Convex value"):
        ti.doc_keys({"_creationTime": 1.0, "a": {1, 2}}, b"id1")
    with pytest.raises(ValueError, match="does not fit in int64"):
        ti.doc_keys({"_creationTime": 1.0, "a": 1 << 70}, b"id1")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_id_keys_from_bytes_are_string_keys(doc_id: str) -> None:
    assert encode_id_key(doc_id.encode()) == encode_string_key(doc_id) == encode_value_key(doc_id)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=True))
def test_the_fast_float_key_is_the_float_key(x: float) -> None:
    (bits,) = struct.unpack(">Q", struct.pack(">d", x))
    if x != x:
        want = b"\x04" + b"\xff" * 8
    else:
        want = b"\x04" + struct.pack(">Q", bits ^ ((1 << 64) - 1) if bits >> 63 else bits | (1 << 63))
    assert encode_float_key(x) == encode_value_key(x) == want


def test_by_id_keys_of_ids() -> None:
    doc_id = new_id("items")
    assert doc_key_from_id(doc_id) == by_id_key("items", doc_id) == TableIndexes("items").keys({}, doc_id)[0]
    assert doc_key_from_id("not an id") is None


@pytest.mark.parametrize("doc", [
    {"_id": "x", "n": 1, "s": "plain"},
    {"_id": "x", "price": "$5"},  # a $ that tags nothing
    {"_id": "x", "b": b"\x00\x01", "f": math.inf, "g": -math.inf, "nested": [{"b": b"z"}]},
])
def test_decode_stored_is_decode_doc(doc: dict[str, Any]) -> None:
    raw = encode_doc(doc)
    assert decode_stored(raw) == decode_doc(raw) == doc
