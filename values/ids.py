"""Document ids: opaque, URL-safe strings that carry their table's name."""
from __future__ import annotations

import base64
import functools
import os
import time
from typing import Any

_ID_RANDOM_BYTES = 10


def new_id(table: str) -> str:
    """A fresh document id: URL-safe, opaque, and encoding its table name."""
    raw = table.encode() + b"\x00" + time.time_ns().to_bytes(8, "big")[2:] + os.urandom(_ID_RANDOM_BYTES)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def table_of(doc_id: Any) -> str | None:
    """The table a document id belongs to, or None if `doc_id` is not a Tape id."""
    if type(doc_id) is not str or not 8 <= len(doc_id) <= 200:
        return None
    return _table_of(doc_id)


@functools.lru_cache(maxsize=1 << 16)
def _table_of(doc_id: str) -> str | None:
    try:
        raw = base64.urlsafe_b64decode(doc_id + "=" * (-len(doc_id) % 4))
    except (ValueError, TypeError):
        return None
    table, sep, rest = raw.partition(b"\x00")
    if not sep or len(rest) != 6 + _ID_RANDOM_BYTES or not table:
        return None
    try:
        return table.decode()
    except UnicodeDecodeError:
        return None
