"""The few pieces of the Convex sync wire format the client needs, with no server code.

Encoded timestamps (base64 of a little-endian u64), the canonical
``"module:function"`` path form, the ``{querySet, ts, identity}`` version
and the error raised when a server message breaks the protocol. The server
has its own, fuller parser in ``gateway.protocol``; the SDK keeps this
minimal copy so that it depends on nothing but `values`. The message
shapes are described in ``docs/protocol.md``.
"""
from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass
from typing import Any

__all__ = ["ProtocolError", "MISSING", "encode_ts", "decode_ts", "canonical_path", "StateVersion"]

U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1


class ProtocolError(ValueError):
    """A server message that breaks the protocol; ``field`` names the offending field as a dotted path."""

    def __init__(self, field_path: str, message: str) -> None:
        self.field = field_path
        prefixed = not field_path or message.startswith(field_path)
        super().__init__(message if prefixed else f"{field_path}: {message}")


class _Missing:
    """Type of the `MISSING` sentinel: "field absent", as opposed to None (JSON null)."""

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()
"""Marks an absent field (e.g. a failure without ``errorData``)."""


def encode_ts(ts: int) -> str:
    """Encode a u64 timestamp as the protocol does: base64 of 8 little-endian bytes."""
    if type(ts) is not int or not 0 <= ts <= U64_MAX:
        raise ValueError(f"timestamp must be an int in [0, 2**64), got {ts!r}")
    return base64.b64encode(struct.pack("<Q", ts)).decode("ascii")


def decode_ts(text: Any, field_path: str = "ts") -> int:
    """Decode an encoded u64 timestamp; raises `ProtocolError` naming ``field_path``."""
    if type(text) is not str:
        raise ProtocolError(field_path, f"expected a base64 string (encoded u64), got {type(text).__name__}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ProtocolError(field_path, f"not valid base64: {text!r}") from None
    if len(raw) != 8:
        raise ProtocolError(field_path, f"encoded u64 must be 8 bytes, got {len(raw)}")
    return struct.unpack("<Q", raw)[0]


def canonical_path(path: Any, field_path: str = "path") -> str:
    """The ``"module:function"`` form the server uses for a function path.

    A path without ``:`` names the module's ``default`` export and a trailing
    ``.js`` on the module is dropped (``"lists"`` → ``"lists:default"``,
    ``"lists.js:all"`` → ``"lists:all"``), as the official clients do.
    Raises `ProtocolError` (a ``ValueError``) for a path that cannot name a function.
    """
    if type(path) is not str:
        raise ProtocolError(field_path, f"expected a string, got {type(path).__name__}")
    module, sep, function = path.rpartition(":")
    if not sep:
        module, function = path, "default"
    if module.endswith(".js"):
        module = module[:-3]
    if not module or not function:
        raise ProtocolError(field_path, f"invalid function path {path!r} (expected 'module:function')")
    if any(ch.isspace() for ch in path):
        raise ProtocolError(field_path, f"invalid function path {path!r} (contains whitespace)")
    return f"{module}:{function}"


def _uint32(obj: dict[str, Any], key: str, field_path: str) -> int:
    """An integer field in [0, 2**32) (JSON numbers may arrive as integral floats)."""
    if key not in obj:
        raise ProtocolError(f"{field_path}.{key}", "missing required field")
    value = obj[key]
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int or not 0 <= value <= U32_MAX:
        raise ProtocolError(f"{field_path}.{key}", f"expected an integer in [0, {U32_MAX}], got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class StateVersion:
    """The client's position: query-set version, timestamp and identity version."""

    query_set: int = 0
    ts: int = 0
    identity: int = 0

    @classmethod
    def from_json(cls, obj: Any, field_path: str = "version") -> "StateVersion":
        """Parse the wire form ``{querySet, ts: encoded u64, identity}``."""
        if type(obj) is not dict:
            raise ProtocolError(field_path, f"expected an object, got {type(obj).__name__}")
        if "ts" not in obj:
            raise ProtocolError(f"{field_path}.ts", "missing required field")
        return cls(query_set=_uint32(obj, "querySet", field_path),
                   ts=decode_ts(obj["ts"], f"{field_path}.ts"),
                   identity=_uint32(obj, "identity", field_path))
