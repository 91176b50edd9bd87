"""Primitives of the Convex sync wire format, shared by the server (`gateway.protocol`) and the client SDK.

Encoded timestamps (base64 of a little-endian u64), the canonical
``"module:function"`` path, the ``{querySet, ts, identity}`` version, the
error raised for a message that breaks the protocol, and bounded quoting of
bad values in error messages. The message shapes are in docs/protocol.md.
"""
from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass
from typing import Any, Mapping

U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
MAX_QUOTED_CHARS = 100
"""At most this many characters of a bad value are quoted back in an error message."""


class ProtocolError(ValueError):
    """A message that breaks the protocol.

    ``field`` names the offending field as a dotted path (e.g.
    ``"ModifyQuerySet.modifications[0].queryId"``); the message says what was
    expected and what arrived.
    """

    def __init__(self, field_path: str, message: str) -> None:
        self.field = field_path
        # Messages from values already start with the (deeper) path.
        prefixed = not field_path or message.startswith(field_path)
        super().__init__(message if prefixed else f"{field_path}: {message}")


class _Missing:
    """Type of the `MISSING` sentinel: "field absent", as opposed to None (JSON null)."""

    _instance: "_Missing | None" = None

    def __new__(cls) -> "_Missing":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()
"""Marks an absent optional field (e.g. a failure without ``errorData``)."""


def quote(value: Any, limit: int = MAX_QUOTED_CHARS) -> str:
    """``repr`` of a received value for an error message, cut to ``limit`` characters plus '…'.

    A string is cut before quoting (``'abc…'``), anything else after ``repr``,
    so a huge bad input is never echoed back whole.
    """
    if type(value) is str:
        return repr(value if len(value) <= limit else value[:limit] + "…")
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def json_type_name(value: Any) -> str:
    """The JSON name of a parsed value's type ("null", "number", "object", ...)."""
    if value is None:
        return "null"
    if type(value) is bool:
        return "boolean"
    if type(value) in (int, float):
        return "number"
    if type(value) is str:
        return "string"
    if type(value) is list:
        return "array"
    if type(value) is dict:
        return "object"
    return type(value).__name__


def encode_ts(ts: int) -> str:
    """Encode a u64 timestamp as the protocol does: base64 of 8 little-endian bytes."""
    if type(ts) is not int or not 0 <= ts <= U64_MAX:
        raise ValueError(f"timestamp must be an int in [0, 2**64), got {ts!r}")
    return base64.b64encode(struct.pack("<Q", ts)).decode("ascii")


def decode_ts(text: Any, field_path: str = "ts") -> int:
    """Decode an encoded u64 timestamp; raises `ProtocolError` naming ``field_path``."""
    if type(text) is not str:
        raise ProtocolError(field_path, f"expected a base64 string (encoded u64), got {json_type_name(text)}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ProtocolError(field_path, f"not valid base64: {quote(text)}") from None
    if len(raw) != 8:
        raise ProtocolError(field_path, f"encoded u64 must be 8 bytes, got {len(raw)}")
    return struct.unpack("<Q", raw)[0]


def canonicalize_udf_path(path: Any, field_path: str = "udfPath", max_chars: int | None = None) -> str:
    """Canonical ``"module:function"`` form of a function path.

    Like the official clients: a path without ``:`` names the module's
    ``default`` export, and a trailing ``.js`` on the module is dropped
    (``"lists"`` → ``"lists:default"``, ``"lists.js:all"`` → ``"lists:all"``).
    Raises `ProtocolError` (a ``ValueError``) for a path that cannot name a
    function, or one longer than `max_chars`.
    """
    if type(path) is not str:
        raise ProtocolError(field_path, f"expected a string, got {json_type_name(path)}")
    if max_chars is not None and len(path) > max_chars:
        raise ProtocolError(field_path, f"function path is {len(path)} characters, over the {max_chars} "
                                        f"character limit: {quote(path)}")
    module, sep, function = path.rpartition(":")
    if not sep:
        module, function = path, "default"
    if module.endswith(".js"):
        module = module[:-3]
    if not module or not function:
        raise ProtocolError(field_path, f"invalid function path {quote(path)} (expected 'module:function')")
    if any(ch.isspace() for ch in path):
        raise ProtocolError(field_path, f"invalid function path {quote(path)} (contains whitespace)")
    return f"{module}:{function}"


def require(obj: Mapping[str, Any], key: str, ctx: str) -> Any:
    """``obj[key]``, or `ProtocolError` naming ``ctx.key`` when it is missing."""
    if key not in obj:
        raise ProtocolError(f"{ctx}.{key}", "missing required field")
    return obj[key]


def as_int(value: Any, path: str, lo: int = 0, hi: int = U32_MAX) -> int:
    """An integer in [lo, hi] (JSON numbers may arrive as integral floats); `ProtocolError` naming `path`."""
    if type(value) is int:
        out = value
    elif type(value) is float and value.is_integer():
        out = int(value)
    else:
        raise ProtocolError(path, f"expected an integer, got {json_type_name(value)} {quote(value)}")
    if not lo <= out <= hi:
        raise ProtocolError(path, f"integer {out} out of range [{lo}, {hi}]")
    return out


def int_field(obj: Mapping[str, Any], key: str, ctx: str, lo: int = 0, hi: int = U32_MAX) -> int:
    """`as_int` of the required field ``obj[key]``."""
    return as_int(require(obj, key, ctx), f"{ctx}.{key}", lo, hi)


@dataclass(frozen=True, slots=True)
class StateVersion:
    """A client's position: query-set version, timestamp and identity version."""

    query_set: int = 0
    ts: int = 0
    identity: int = 0

    def to_json(self) -> dict[str, Any]:
        """The wire form ``{querySet, ts: encoded u64, identity}``."""
        return {"querySet": self.query_set, "ts": encode_ts(self.ts), "identity": self.identity}

    @classmethod
    def from_json(cls, obj: Any, field_path: str = "version") -> "StateVersion":
        """Parse the wire form."""
        if type(obj) is not dict:
            raise ProtocolError(field_path, f"expected an object, got {json_type_name(obj)}")
        return cls(
            query_set=int_field(obj, "querySet", field_path),
            ts=decode_ts(require(obj, "ts", field_path), f"{field_path}.ts"),
            identity=int_field(obj, "identity", field_path),
        )
