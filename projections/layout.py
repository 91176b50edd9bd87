"""The projection's key layout: one RocksDB key space split by a leading byte.

* ``0x00`` + name            — meta keys (format version, applied offset/ts,
  index catalog, per-table document counts).
* ``"d"`` + id (UTF-8)        — the encoded document, by id (point lookups).
* ``"i"`` + enc(table) + enc(index) + ...  — index entries; the value of every
  index entry is the document id (UTF-8). The entry key is

  - ``by_id``:            prefix + enc(_id)
  - ``by_creation_time``: prefix + enc(_creationTime) + enc(_id)
  - user index:           prefix + enc(f1) + ... + enc(fn) + enc(_creationTime) + enc(_id)

  where ``enc`` is `projections.keys.encode_value_key` (strings for the table
  and index name), so prefixes of different (table, index) pairs never nest.
"""
from __future__ import annotations

import functools
import struct

from .keys import encode_string_key, prefix_successor

FORMAT_VERSION = 1

META = b"\x00"
DOC = b"d"
INDEX = b"i"

META_FORMAT = META + b"format_version"
META_APPLIED_OFFSET = META + b"applied_offset"
META_APPLIED_TS = META + b"applied_ts"
META_CATALOG = META + b"index_catalog"
META_COUNT = META + b"count\x00"  # + table (UTF-8)
META_SEARCH_CATALOG = META + b"search_catalog"  # search index definitions (only when there are some)

BY_ID = "by_id"
BY_CREATION_TIME = "by_creation_time"
SYSTEM_INDEXES = (BY_ID, BY_CREATION_TIME)

_int = struct.Struct(">q")
pack_int = _int.pack


def unpack_int(raw: bytes) -> int:
    """Decode a meta integer written by `pack_int`."""
    return _int.unpack(raw)[0]


@functools.lru_cache(maxsize=4096)
def index_prefix(table: str, index: str) -> bytes:
    """The key prefix shared by every entry of `index` on `table`."""
    return INDEX + encode_string_key(table) + encode_string_key(index)


def doc_store_key(doc_id: str) -> bytes:
    """The key holding the encoded document `doc_id`."""
    return DOC + doc_id.encode()


def count_key(table: str) -> bytes:
    """The meta key holding the number of documents in `table`."""
    return META_COUNT + table.encode()


DOC_RANGE = (DOC, prefix_successor(DOC))
