"""Convex document ids, and the one-to-one mapping between them and Tape ids.

A Convex id (``DeveloperDocumentId``, id format v6 in get-convex/convex-backend
``crates/value/src/id_v6.rs``) is the lowercase Crockford base32 (alphabet
``0123456789abcdefghjkmnpqrstvwxyz``, no padding) of::

    VInt(table number) ++ internal id (16 bytes) ++ footer (2 bytes, little-endian)

where the footer is the Fletcher-16 checksum (modulus 256) of everything
before it, XOR the id version (0). User tables have numbers above 10000.

A Tape id is the URL-safe base64 of ``table name ++ 0x00 ++ 16 bytes``
(`values.ids`). Both carry exactly 16 bytes besides their table, so the
mapping is lossless both ways: a Convex document imported into Tape keeps its
16 bytes under its table's name, and exporting it again with the same table
number (kept in the ``_convex_tables`` system table) gives back the very same
Convex id. A document created in Tape gets a Convex id from its own 16 bytes.
"""
from __future__ import annotations

import base64
import functools
import re

from values import table_of

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_STD32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_TO_CONVEX = str.maketrans(_STD32, ALPHABET)
_TO_HEX = str.maketrans(ALPHABET, "0123456789abcdefghijklmnopqrstuv")  # int(x, 32) reads base32hex digits
_ID_SHAPE = re.compile(r"[0-9a-hjkmnp-tv-z]{31,37}")
INTERNAL_ID_BYTES = 16
ID_VERSION = 0
FIRST_USER_TABLE_NUMBER = 10001
MAX_TABLE_NUMBER = (1 << 32) - 1


def _fletcher16(data: bytes) -> int:
    c0 = c1 = 0
    for byte in data:
        c0 = (c0 + byte) & 0xFF
        c1 = (c1 + c0) & 0xFF
    return (c1 << 8) | c0


def _vint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@functools.lru_cache(maxsize=1 << 16)
def encode_convex_id(table_number: int, internal: bytes) -> str:
    """The Convex id of the document with `internal` (16 bytes) in table number `table_number`."""
    if not 0 < table_number <= MAX_TABLE_NUMBER:
        raise ValueError(f"table number {table_number} is outside 1..{MAX_TABLE_NUMBER}")
    if len(internal) != INTERNAL_ID_BYTES:
        raise ValueError(f"an internal id has {INTERNAL_ID_BYTES} bytes, got {len(internal)}")
    body = _vint(table_number) + internal
    raw = body + (_fletcher16(body) ^ ID_VERSION).to_bytes(2, "little")
    return base64.b32encode(raw).decode("ascii").rstrip("=").translate(_TO_CONVEX)


@functools.lru_cache(maxsize=1 << 16)
def decode_convex_id(text: object) -> tuple[int, bytes] | None:
    """(table number, internal id bytes) of a canonical Convex id, or None if `text` is not one."""
    if type(text) is not str or _ID_SHAPE.fullmatch(text) is None:
        return None
    size = len(text) * 5 // 8
    if _encoded_len(size) != len(text):
        return None
    pad = len(text) * 5 - size * 8
    value = int(text.translate(_TO_HEX), 32)
    if value & ((1 << pad) - 1):
        return None  # stray bits past the last byte: not the canonical spelling
    raw = (value >> pad).to_bytes(size, "big")
    number, shift, pos = 0, 0, 0
    while True:
        if pos >= len(raw) or pos >= 5:
            return None
        byte = raw[pos]
        number |= (byte & 0x7F) << shift
        pos += 1
        shift += 7
        if byte < 0x80:
            break
    if number == 0 or number > MAX_TABLE_NUMBER or len(raw) != pos + INTERNAL_ID_BYTES + 2:
        return None
    if _vint(number) != raw[:pos]:
        return None  # a table number spelled with extra bytes
    footer = int.from_bytes(raw[-2:], "little")
    if footer != _fletcher16(raw[:-2]) ^ ID_VERSION:
        return None
    return number, raw[pos:pos + INTERNAL_ID_BYTES]


def _encoded_len(size: int) -> int:
    return size // 5 * 8 + (0, 2, 4, 5, 7)[size % 5]


@functools.lru_cache(maxsize=1 << 16)
def tape_id(table: str, internal: bytes) -> str:
    """The Tape id of the document with `internal` (16 bytes) in `table`."""
    if len(internal) != INTERNAL_ID_BYTES:
        raise ValueError(f"an internal id has {INTERNAL_ID_BYTES} bytes, got {len(internal)}")
    return base64.urlsafe_b64encode(table.encode() + b"\x00" + internal).rstrip(b"=").decode("ascii")


@functools.lru_cache(maxsize=1 << 16)
def tape_internal(doc_id: str) -> tuple[str, bytes] | None:
    """(table, 16 id bytes) of a Tape id, or None if `doc_id` is not one."""
    table = table_of(doc_id)
    if table is None:
        return None
    raw = base64.urlsafe_b64decode(doc_id + "=" * (-len(doc_id) % 4))
    return table, raw[-INTERNAL_ID_BYTES:]


__all__ = ["FIRST_USER_TABLE_NUMBER", "decode_convex_id", "encode_convex_id", "tape_id", "tape_internal"]
