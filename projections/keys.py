"""Order-preserving, prefix-free byte encoding of Convex values (index keys).

Comparing two encodings bytewise gives the same answer as comparing the
values in Convex order::

    undefined < null < int64 < float64 < boolean < string < bytes < array < object

Every encoding starts with a one-byte type tag (in that order), so values of
different types compare by type first. Within a type:

* int64: 8 bytes big-endian of ``v + 2**63`` (numeric order).
* float64: the IEEE-754 bits, big-endian, with the sign bit flipped for
  positives and all bits flipped for negatives; this is numeric order with
  ``-inf`` first and ``+inf`` last. ``-0.0`` and ``0.0`` are *distinct* keys,
  ``-0.0`` sorting just before ``0.0``. Every NaN is canonicalised to one key
  that sorts *after* ``+inf`` (NaN is the largest float).
* boolean: ``false`` and ``true`` are two tags (no payload).
* string: UTF-8 bytes; bytes: the raw bytes. Both escape ``0x00`` as
  ``0x00 0xFF`` and end with ``0x00 0x01``, so byte order is preserved, a
  shorter string sorts before its extensions, and no encoding is a prefix of
  another.
* array: the element encodings followed by ``0x00`` (below every tag), which
  gives element-wise lexicographic order, shorter first.
* object: its fields sorted by name, each as (name encoded as a string, value
  encoding), followed by ``0x00``: lexicographic over (name, value) pairs.

Because each encoding is prefix-free, a tuple of values is the plain
concatenation of their encodings (`encode_tuple`), and
``[encode_tuple(p), prefix_successor(encode_tuple(p)))`` holds exactly the
keys whose leading values equal ``p``.
"""
from __future__ import annotations

import struct
from typing import Any, Iterable

__all__ = [
    "UNDEFINED",
    "encode_value_key",
    "encode_tuple",
    "encode_string_key",
    "encode_float_key",
    "encode_id_key",
    "FLOAT_KEY",
    "ID_KEY_FORMAT",
    "KEY_ENCODERS",
    "STRING_KEYS",
    "prefix_successor",
    "decode_value_key",
    "decode_tuple",
    "KeyDecodeError",
]


class _Undefined:
    """The "missing field" marker; sorts before every Convex value."""

    _instance: "_Undefined | None" = None

    def __new__(cls) -> "_Undefined":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __reduce__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Any = _Undefined()

T_UNDEFINED = 0x01
T_NULL = 0x02
T_INT = 0x03
T_FLOAT = 0x04
T_FALSE = 0x05
T_TRUE = 0x06
T_STRING = 0x07
T_BYTES = 0x08
T_ARRAY = 0x09
T_OBJECT = 0x0A

END = b"\x00"
_STR_END = b"\x00\x01"
_NUL = b"\x00"
_NUL_ESC = b"\x00\xff"

_K_UNDEFINED = bytes([T_UNDEFINED])
_K_NULL = bytes([T_NULL])
_K_FALSE = bytes([T_FALSE])
_K_TRUE = bytes([T_TRUE])
_P_INT = bytes([T_INT])
_P_FLOAT = bytes([T_FLOAT])
_P_STRING = bytes([T_STRING])
_P_BYTES = bytes([T_BYTES])
_P_ARRAY = bytes([T_ARRAY])
_P_OBJECT = bytes([T_OBJECT])

_INT_BIAS = 1 << 63
_SIGN = 1 << 63
_ALL = (1 << 64) - 1
_K_NAN = _P_FLOAT + b"\xff" * 8  # above +inf (0xfff0... after the flip)

_pack_d = struct.Struct(">d").pack

FLOAT_KEY = struct.Struct(">Bd")
"""The layout of a float key: its tag, then 8 bytes. For ``v > 0.0``,
``FLOAT_KEY.pack(T_FLOAT, -v)`` is `encode_float_key(v)`: a positive float's
key is its IEEE bits with the sign bit set, which are the bits of ``-v``."""
_pack_pos_float = FLOAT_KEY.pack
_unpack_Q = struct.Struct(">Q").unpack
_pack_BQ = struct.Struct(">BQ").pack


class KeyDecodeError(ValueError):
    """The bytes are not a valid value-key encoding."""


def _enc_int(v: int) -> bytes:
    return _pack_BQ(T_INT, v + _INT_BIAS)


def _enc_float(v: float) -> bytes:
    if v > 0.0:  # the usual case (every _creationTime): only the sign bit flips (see `FLOAT_KEY`)
        return _pack_pos_float(T_FLOAT, -v)
    if v != v:
        return _K_NAN
    (u,) = _unpack_Q(_pack_d(v))
    return _pack_BQ(T_FLOAT, u ^ _ALL if u & _SIGN else u | _SIGN)


def _enc_str(v: str) -> bytes:
    return _P_STRING + v.encode().replace(_NUL, _NUL_ESC) + _STR_END


def _enc_bytes(v: bytes) -> bytes:
    return _P_BYTES + bytes(v).replace(_NUL, _NUL_ESC) + _STR_END


def _enc_bool(v: bool) -> bytes:
    return _K_TRUE if v else _K_FALSE


def _enc_none(v: None) -> bytes:
    return _K_NULL


def _enc_undefined(v: Any) -> bytes:
    return _K_UNDEFINED


def _enc_list(v: list) -> bytes:
    return _P_ARRAY + b"".join([encode_value_key(x) for x in v]) + END


def _enc_dict(v: dict) -> bytes:
    parts = [_P_OBJECT]
    for name in sorted(v):  # code-point order == UTF-8 byte order
        parts.append(_enc_str(name))
        parts.append(encode_value_key(v[name]))
    parts.append(END)
    return b"".join(parts)


KEY_ENCODERS: dict[type, Any] = {
    str: _enc_str,
    float: _enc_float,
    int: _enc_int,
    bool: _enc_bool,
    type(None): _enc_none,
    bytes: _enc_bytes,
    bytearray: _enc_bytes,
    memoryview: _enc_bytes,
    list: _enc_list,
    tuple: _enc_list,
    dict: _enc_dict,
    _Undefined: _enc_undefined,
}
"""The encoder of each Python type a Convex value (or `UNDEFINED`) can have.

``KEY_ENCODERS[type(v)](v)`` is `encode_value_key(v)` for a value known to be
a Convex value, without the call and the error translation (hot paths)."""


def encode_value_key(v: Any) -> bytes:
    """The order-preserving, prefix-free key encoding of one Convex value."""
    try:
        return KEY_ENCODERS[type(v)](v)
    except KeyError:
        raise TypeError(f"{type(v).__name__} is not a Convex value") from None
    except (OverflowError, struct.error):
        raise ValueError(f"integer {v} does not fit in int64") from None


encode_string_key = _enc_str
"""Fast path of `encode_value_key` for a value known to be a `str`."""


class StringKeyCache(dict):  # type: ignore[type-arg]
    """A cache of `encode_string_key` (indexed fields often take few distinct values).

    It holds at most `STRING_KEYS_MAX` entries: a miss beyond that empties it first.
    """

    def __missing__(self, value: str) -> bytes:
        if len(self) >= STRING_KEYS_MAX:
            self.clear()
        key = self[value] = encode_string_key(value)
        return key


STRING_KEYS_MAX = 1 << 14
STRING_KEYS = StringKeyCache()
"""``STRING_KEYS[s]`` is `encode_string_key(s)`, cached (shared by the projection's key derivation)."""

encode_float_key = _enc_float
"""Fast path of `encode_value_key` for a value known to be a `float`."""

ID_KEY_FORMAT = _P_STRING + b"%b" + _STR_END
"""``ID_KEY_FORMAT % idb`` is `encode_id_key(idb)` for bytes `idb` that hold no NUL (which needs escaping)."""


def encode_id_key(idb: bytes) -> bytes:
    """`encode_string_key` of a string given as its UTF-8 bytes (a document id, as the log carries it)."""
    return ID_KEY_FORMAT % idb if 0 not in idb else _P_STRING + idb.replace(_NUL, _NUL_ESC) + _STR_END


def encode_tuple(values: Iterable[Any]) -> bytes:
    """Concatenated encodings of `values` (a tuple key; prefix-free, ordered)."""
    return b"".join([encode_value_key(v) for v in values])


def prefix_successor(b: bytes) -> bytes:
    """The smallest byte string greater than every string that starts with `b`.

    Raises ValueError if there is none (`b` is empty or all 0xFF).
    """
    if b and b[-1] != 0xFF:
        return b[:-1] + _NEXT_BYTE[b[-1]]
    stripped = b.rstrip(b"\xff")
    if not stripped:
        raise ValueError("prefix has no successor (empty or all 0xff)")
    return stripped[:-1] + _NEXT_BYTE[stripped[-1]]


_NEXT_BYTE = [bytes([i + 1]) for i in range(255)]


# --- decoding ------------------------------------------------------------------

def _dec_escaped(b: bytes, pos: int) -> tuple[bytes, int]:
    out = bytearray()
    while True:
        i = b.find(_NUL, pos)
        if i < 0 or i + 1 >= len(b):
            raise KeyDecodeError("unterminated string/bytes")
        out += b[pos:i]
        nxt = b[i + 1]
        if nxt == 0xFF:
            out += _NUL
            pos = i + 2
        elif nxt == 0x01:
            return bytes(out), i + 2
        else:
            raise KeyDecodeError(f"bad escape at byte {i}")


def decode_value_key(b: bytes, pos: int = 0) -> tuple[Any, int]:
    """Decode one value starting at `pos`; returns (value, position after it)."""
    if pos >= len(b):
        raise KeyDecodeError("truncated key")
    tag = b[pos]
    pos += 1
    if tag == T_STRING:
        raw, pos = _dec_escaped(b, pos)
        return raw.decode(), pos
    if tag == T_FLOAT:
        if pos + 8 > len(b):
            raise KeyDecodeError("truncated float")
        (u,) = _unpack_Q(b[pos:pos + 8])
        if u == _ALL:
            return float("nan"), pos + 8
        u = u ^ _SIGN if u & _SIGN else u ^ _ALL
        return struct.unpack(">d", u.to_bytes(8, "big"))[0], pos + 8
    if tag == T_INT:
        if pos + 8 > len(b):
            raise KeyDecodeError("truncated int")
        return _unpack_Q(b[pos:pos + 8])[0] - _INT_BIAS, pos + 8
    if tag == T_NULL:
        return None, pos
    if tag == T_UNDEFINED:
        return UNDEFINED, pos
    if tag == T_FALSE:
        return False, pos
    if tag == T_TRUE:
        return True, pos
    if tag == T_BYTES:
        return _dec_escaped(b, pos)
    if tag == T_ARRAY:
        items = []
        while True:
            if pos >= len(b):
                raise KeyDecodeError("unterminated array")
            if b[pos] == 0:
                return items, pos + 1
            item, pos = decode_value_key(b, pos)
            items.append(item)
    if tag == T_OBJECT:
        obj = {}
        while True:
            if pos >= len(b):
                raise KeyDecodeError("unterminated object")
            if b[pos] == 0:
                return obj, pos + 1
            if b[pos] != T_STRING:
                raise KeyDecodeError("object field name is not a string")
            name, pos = decode_value_key(b, pos)
            obj[name], pos = decode_value_key(b, pos)
    raise KeyDecodeError(f"unknown type tag 0x{tag:02x} at byte {pos - 1}")


def decode_tuple(b: bytes, pos: int = 0) -> list[Any]:
    """Decode every value from `pos` to the end of `b`."""
    out = []
    while pos < len(b):
        v, pos = decode_value_key(b, pos)
        out.append(v)
    return out
