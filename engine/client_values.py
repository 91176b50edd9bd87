"""The int/float rule: how function results reach clients.

JavaScript has one number type, float64, and Convex's int64 arrives in the
JS client as a ``BigInt`` (``1n``), which does not mix with numbers
(``count + 1`` throws). Python has ``int`` everywhere (``len(rows)``), so a
faithful int64 would turn the common case into a bug. The rule:

* a position declared ``v.int64()`` (or an int ``v.literal``) — by the
  function's ``returns=`` validator, or for a document by its table's schema
  validator — keeps its exact int64: ``{"$integer": ...}``, a BigInt in JS;
* a position declared ``v.number()`` holds a float already (the validator
  converts ints);
* any other Python ``int`` with ``|n| <= 2**53`` is sent as a JSON number
  (exact in float64); a bigger one stays int64 (a number could not hold it).

So a query returning ``len(rows)`` gives JS ``3`` and Python clients ``3.0``.
The rule applies to everything a client receives from a function: query
results, mutation and action return values, and ``AppError`` data. Stored
documents keep their ints as int64; only what leaves for a client changes.
"""
from __future__ import annotations

import base64
import math
import struct
from typing import Any

from engine.app import App, normalize_path
from engine.schema import Schema
from engine.validators import Validator, _Array, _Int64, _Literal, _Object, _Optional, _Record, _Union
from values import ConvexValueError, table_of, to_wire

JS_SAFE_INT = 1 << 53

_EMPTY: dict[str, Validator] = {}
_SCHEMA_CACHE: dict[int, tuple[Schema, dict[str, Validator]]] = {}


def _int64(value: int) -> dict[str, str]:
    return {"$integer": base64.b64encode(struct.pack("<q", value)).decode("ascii")}


def _int64_tables(schema: Schema | None) -> dict[str, Validator]:
    """Tables whose document validator declares an int64 somewhere: their documents need a guided walk."""
    if schema is None:
        return _EMPTY
    cached = _SCHEMA_CACHE.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    found = {name: t.validator for name, t in schema.tables.items()
             if t.validator is not None and t.validator.declares_int64}
    if len(_SCHEMA_CACHE) > 64:
        _SCHEMA_CACHE.clear()
    _SCHEMA_CACHE[id(schema)] = (schema, found)
    return found


def client_wire(value: Any, declared: Validator | None = None, schema: Schema | None = None) -> Any:
    """Convex JSON of a value sent to a client, with the int/float rule (module docstring).

    `declared` is the function's ``returns`` validator, `schema` the app's schema (for documents).
    """
    tables = _int64_tables(schema)
    if (declared is None or not declared.declares_int64) and not tables:
        return _plain(value)
    return _guided(value, declared if declared is not None and declared.declares_int64 else None, tables)


def _plain(value: Any) -> Any:
    """The rule with nothing declared int64: small ints become JSON numbers."""
    t = type(value)
    if t is str or t is bool or value is None:
        return value
    if t is int:
        return value if -JS_SAFE_INT <= value <= JS_SAFE_INT else _int64(value)
    if t is float:
        if math.isfinite(value) and not (value == 0.0 and math.copysign(1.0, value) < 0):
            return value
        return to_wire(value)
    if t is dict:
        return {k: _plain(v) for k, v in value.items()}
    if t is list or t is tuple:
        return [_plain(v) for v in value]
    if t is bytes or isinstance(value, (bytearray, memoryview)):
        return to_wire(bytes(value))
    raise ConvexValueError(f"{t.__name__} is not a Convex value")


def _member(union: _Union, value: Any) -> Validator | None:
    """The first member of `union` that accepts `value` (None if none does)."""
    for member in union.members:
        try:
            member.check(value, "")
        except Exception:
            continue
        return member
    return None


def _guided(value: Any, validator: Validator | None, tables: dict[str, Validator]) -> Any:
    while isinstance(validator, (_Optional, _Union)):
        validator = validator.inner if isinstance(validator, _Optional) else _member(validator, value)
    t = type(value)
    if t is int:
        if isinstance(validator, (_Int64, _Literal)):
            return _int64(value)
        return value if -JS_SAFE_INT <= value <= JS_SAFE_INT else _int64(value)
    if t is dict:
        if validator is None and tables:
            doc_id = value.get("_id")
            if type(doc_id) is str and "_creationTime" in value:
                validator = tables.get(table_of(doc_id) or "")
        if isinstance(validator, _Object):
            fields = validator.fields
            return {k: _guided(v, fields.get(k), tables) for k, v in value.items()}
        if isinstance(validator, _Record):
            inner = validator.value
            return {k: _guided(v, inner, tables) for k, v in value.items()}
        if not tables:
            return _plain(value)
        return {k: _guided(v, None, tables) for k, v in value.items()}
    if t is list or t is tuple:
        item = validator.item if isinstance(validator, _Array) else None
        if item is None and not tables:
            return _plain(value)
        return [_guided(v, item, tables) for v in value]
    return _plain(value)


def result_wire(app: App, path: str, value: Any) -> Any:
    """`client_wire` of a result of the function at `path` of `app` (its ``returns`` and the app's schema)."""
    fn = app.functions.get(normalize_path(path))
    return client_wire(value, fn.returns if fn is not None else None, app.schema)


def error_data_wire(app: App, data: Any) -> Any:
    """`client_wire` of an `AppError`'s data (documents in it follow their schema)."""
    return client_wire(data, None, app.schema)
