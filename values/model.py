"""The Convex value model in Python, and its two encodings (storage and wire).

Python types map to Convex types as follows: ``None`` → null, ``bool`` →
boolean, ``int`` → int64, ``float`` → float64 (JSON numbers), ``str`` →
string, ``bytes`` → bytes, ``list`` → array, ``dict`` with string keys →
object.

* The *storage* encoding (`encode_doc`/`decode_doc`) is what the log and the
  projection hold: orjson, where ints stay JSON integers and floats always
  carry a fraction or exponent, so the int64/float64 distinction survives;
  bytes and non-finite floats become ``{"$bytes": b64}`` / ``{"$float": b64}``.
* The *wire* encoding (`to_wire`/`from_wire`) is Convex JSON as the official
  clients speak it: every JSON number is a float64 and int64 travels as
  ``{"$integer": b64 of 8 little-endian bytes}``.
"""
from __future__ import annotations

import base64
import math
import re
import struct
from typing import Any

import orjson

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects in any value (Convex: ``MAX_NESTING``)."""
MAX_DOC_DEPTH = 16
"""Deepest nesting inside a stored document (Convex's documented "field nesting depth")."""
MAX_DOC_BYTES = 1 << 20
MAX_ARRAY_LEN = 8192
"""Most elements of one array (Convex's limit, for every value)."""
MAX_OBJECT_FIELDS = 1024
"""Most fields of one object (Convex's limit, for every value)."""
MAX_FIELD_NAME_LEN = 1024
"""Longest field name of a nested object; top-level document fields are identifiers of at most 64."""
MAX_IDENTIFIER_LEN = 64
SYSTEM_FIELDS = ("_id", "_creationTime")
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


class ConvexValueError(ValueError):
    """A value outside the Convex value model; the message names the path to it."""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _float_bits(value: float) -> str:
    return _b64(struct.pack("<d", value))


def _storage_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"$bytes": _b64(bytes(obj))}
    raise TypeError(f"{type(obj).__name__} is not a Convex value")


def field_name_problem(key: Any) -> str | None:
    """Why `key` cannot name a field of a Convex object (None when it can), worded as Convex's."""
    if type(key) is not str:
        return f"object keys must be strings, got {type(key).__name__}"
    if key.startswith("$"):
        return f"Field name {key!r} starts with a '$', which is reserved."
    if not (key.isascii() and key.isprintable()):
        bad = next(ch for ch in key if not (ch.isascii() and ch.isprintable()))
        return (f"Field name {key!r} has invalid character {bad!r}: Field names can only contain non-control "
                "ASCII characters")
    if len(key) > MAX_FIELD_NAME_LEN:
        return f"Field name is too long ({len(key)} > maximum {MAX_FIELD_NAME_LEN})"
    return None


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_KNOWN_IDENTIFIERS: set[str] = set()  # names seen valid (field names repeat: most checks are one lookup)


def identifier_problem(name: str) -> str | None:
    """Why `name` is not a Convex identifier (a top-level document field), or None."""
    if name in _KNOWN_IDENTIFIERS:
        return None
    if _IDENTIFIER.match(name) and name.strip("_"):
        if len(_KNOWN_IDENTIFIERS) < 65536:
            _KNOWN_IDENTIFIERS.add(name)
        return None
    if not name:
        return "Identifier cannot be empty"
    if not (name[0].isascii() and (name[0].isalpha() or name[0] == "_")):
        return f"Identifier {name!r} must start with a letter or underscore"
    if not all(ch.isascii() and (ch.isalnum() or ch == "_") for ch in name):
        return f"Identifier {name!r} can only contain alphanumeric characters or underscores"
    if len(name) > MAX_IDENTIFIER_LEN:
        return f"Identifier is too long ({len(name)} > maximum {MAX_IDENTIFIER_LEN})"
    if set(name) == {"_"}:
        return f"Identifier {name!r} cannot have exclusively underscores"
    return None


def check_document(doc: dict[str, Any], path: str) -> bool:
    """`check_value` plus the rules of stored documents: top-level fields are identifiers, names starting
    with ``_`` are reserved (but ``_id`` and ``_creationTime``), and nesting is at most `MAX_DOC_DEPTH`."""
    for key in doc:
        if type(key) is str and key not in SYSTEM_FIELDS:
            if key.startswith("_"):
                raise ConvexValueError(f"{path}: field {key!r} is reserved (top-level fields starting with '_' "
                                       "are system fields)")
            problem = identifier_problem(key)
            if problem is not None:
                raise ConvexValueError(f"{path}.{key}: {problem}")
    return check_value(doc, path, 0, MAX_DOC_DEPTH)


def check_value(value: Any, path: str = "value", depth: int = 0, max_depth: int = MAX_DEPTH) -> bool:
    """Validate `value` against the Convex value model and its limits.

    Raises `ConvexValueError` naming the offending path: nesting deeper than
    `MAX_DEPTH`, an array over `MAX_ARRAY_LEN` elements, an object over
    `MAX_OBJECT_FIELDS` fields, a field name Convex refuses (``$``-prefixed,
    not printable ASCII, too long), an int outside int64, a string that is not
    valid Unicode. Returns True when the value holds a non-finite float (which
    the storage encoding must rewrite).
    """
    if depth > max_depth:
        raise ConvexValueError(f"{path}: Value is too nested (nesting deeper than {max_depth} levels)")
    t = type(value)
    if t is str:
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ConvexValueError(f"{path}: string is not valid Unicode (it holds an unpaired surrogate)") \
                    from None
        return False
    if value is None or t is bool or t is bytes:
        return False
    if t is float:
        return not math.isfinite(value)
    if t is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise ConvexValueError(f"{path}: integer {value} does not fit in int64")
        return False
    if t is list or t is tuple:
        if len(value) > MAX_ARRAY_LEN:
            raise ConvexValueError(f"{path}: Array length is too long ({len(value)} > maximum length {MAX_ARRAY_LEN})")
        special = False
        shallow = depth < max_depth  # its scalar items are checked here, without a call (the common case)
        for i, item in enumerate(value):
            ti = type(item)
            if shallow and (ti is bool or item is None or (ti is str and item.isascii())):
                continue
            if shallow and ti is float:
                special |= item - item != 0.0  # inf and nan
                continue
            special |= check_value(item, f"{path}[{i}]", depth + 1, max_depth)
        return special
    if t is dict:
        if len(value) > MAX_OBJECT_FIELDS:
            raise ConvexValueError(f"{path}: Object has too many fields ({len(value)} > maximum number "
                                   f"{MAX_OBJECT_FIELDS})")
        special = False
        shallow = depth < max_depth
        for key, item in value.items():
            if type(key) is not str or key.startswith("$") or not (key.isascii() and key.isprintable()) \
                    or len(key) > MAX_FIELD_NAME_LEN:
                raise ConvexValueError(f"{path}: {field_name_problem(key)}")
            ti = type(item)
            if shallow and (ti is bool or item is None or (ti is str and item.isascii())):
                continue
            if shallow and ti is float:
                special |= item - item != 0.0  # inf and nan
                continue
            special |= check_value(item, f"{path}.{key}", depth + 1, max_depth)
        return special
    if isinstance(value, (bytearray, memoryview)):
        return False
    raise ConvexValueError(f"{path}: {t.__name__} is not a Convex value (use None, bool, int, float, str, bytes, list or dict)")


def _rewrite_special_floats(value: Any) -> Any:
    t = type(value)
    if t is float and not math.isfinite(value):
        return {"$float": _float_bits(value)}
    if t is list or t is tuple:
        return [_rewrite_special_floats(v) for v in value]
    if t is dict:
        return {k: _rewrite_special_floats(v) for k, v in value.items()}
    return value


def compact(raw: bytes) -> bytes:
    """`raw` in an allocation of its own size.

    orjson (3.13) returns bytes whose allocation keeps its whole output buffer: at least 4 KiB even for
    a 60-byte document. Bytes that outlive the call (cached documents, `_requests` memos, subscription
    results) are copied once, for ~0.2 µs, so they cost their length instead of 4 KiB each.
    """
    return bytes(memoryview(raw))


def encode_value(value: Any, *, checked_special: bool | None = None) -> bytes:
    """Encode any Convex value in the storage encoding."""
    special = check_value(value) if checked_special is None else checked_special
    if special:
        value = _rewrite_special_floats(value)
    return compact(orjson.dumps(value, default=_storage_default))


def encode_doc(doc: dict[str, Any]) -> bytes:
    """Encode a document (validated already) in the storage encoding."""
    try:
        raw = orjson.dumps(doc, default=_storage_default)
    except (TypeError, orjson.JSONEncodeError):
        return encode_value(doc)
    # orjson writes NaN and ±inf as null; only then is a walk needed to keep them.
    if b"null" in raw and _has_special_float(doc):
        raw = orjson.dumps(_rewrite_special_floats(doc), default=_storage_default)
    return compact(raw)


def _has_special_float(value: Any) -> bool:
    t = type(value)
    if t is float:
        return not math.isfinite(value)
    if t is dict:
        return any(_has_special_float(v) for v in value.values())
    if t is list or t is tuple:
        return any(_has_special_float(v) for v in value)
    return False


def _restore_specials(value: Any) -> Any:
    t = type(value)
    if t is dict:
        if len(value) == 1:
            if "$bytes" in value:
                return _unb64(value["$bytes"])
            if "$float" in value:
                return struct.unpack("<d", _unb64(value["$float"]))[0]
        return {k: _restore_specials(v) for k, v in value.items()}
    if t is list:
        return [_restore_specials(v) for v in value]
    return value


def decode_value(raw: bytes) -> Any:
    """Decode a value from the storage encoding."""
    value = orjson.loads(raw)
    if b'"$' in raw:
        value = _restore_specials(value)
    return value


decode_doc = decode_value


# --- wire (Convex JSON) -----------------------------------------------------

def to_wire(value: Any) -> Any:
    """Convert a Python Convex value into Convex JSON (JSON-serialisable)."""
    t = type(value)
    if t is str or t is bool or value is None:
        return value
    if t is float:
        if math.isfinite(value) and not (value == 0.0 and math.copysign(1.0, value) < 0):
            return value
        return {"$float": _float_bits(value)}
    if t is int:
        return {"$integer": _b64(struct.pack("<q", value))}
    if t is dict:
        return {k: to_wire(v) for k, v in value.items()}
    if t is list or t is tuple:
        return [to_wire(v) for v in value]
    if t is bytes or isinstance(value, (bytearray, memoryview)):
        return {"$bytes": _b64(bytes(value))}
    raise ConvexValueError(f"{t.__name__} is not a Convex value")


def from_wire(value: Any, path: str = "value", depth: int = 0) -> Any:
    """Convert Convex JSON (as parsed by orjson) into Python Convex values.

    JSON numbers become floats; ``$integer``/``$bytes``/``$float`` objects
    become int/bytes/float. Raises `ConvexValueError` naming the path on bad input.
    """
    if depth > MAX_DEPTH:
        raise ConvexValueError(f"{path}: Value is too nested (nesting deeper than {MAX_DEPTH} levels)")
    t = type(value)
    if t is str or t is bool or value is None or t is float:
        return value
    if t is int:
        return float(value)
    if t is list:  # (Convex's size limits are checked where the value is used: `check_value`)
        return [from_wire(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if t is dict:
        if len(value) == 1:
            ((key, inner),) = value.items()
            if key.startswith("$"):
                try:
                    if key == "$integer":
                        raw = _unb64(inner)
                        if len(raw) != 8:
                            raise ValueError("need 8 bytes")
                        return struct.unpack("<q", raw)[0]
                    if key == "$bytes":
                        return _unb64(inner)
                    if key == "$float":
                        raw = _unb64(inner)
                        if len(raw) != 8:
                            raise ValueError("need 8 bytes")
                        return struct.unpack("<d", raw)[0]
                except (ValueError, TypeError, AttributeError) as exc:
                    raise ConvexValueError(f"{path}: malformed {key} value ({exc})") from None
                raise ConvexValueError(f"{path}: unknown special value {key!r}")
        out = {}
        for k, v in value.items():
            if k.startswith("$"):
                raise ConvexValueError(f"{path}: {field_name_problem(k)}")
            out[k] = from_wire(v, f"{path}.{k}", depth + 1)
        return out
    raise ConvexValueError(f"{path}: {t.__name__} is not a Convex JSON value")


def wire_dumps(value: Any) -> bytes:
    """Serialise a Python Convex value as Convex JSON bytes."""
    return orjson.dumps(to_wire(value))
