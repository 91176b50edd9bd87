"""The index keys of replayed writes, computed without the projection's state.

Replaying the log, most of the work per write does not depend on what the
projection holds: parsing the new document and the previous one (which the
log carries as `Write.prev`) and encoding their index keys. `WritePreparer`
does most of that part (the new document's keys), so it can run apart from the projection — in the child
process that decodes the log (`log.forked`) — and `Projection.apply_prepared`
folds the result in, resolving what does depend on the state (whether a
document without `prev` exists, the counts) on its side.

Keys are computed exactly as `Projection.apply` computes them (tests compare
the resulting projections byte for byte).
"""
from __future__ import annotations

from typing import Any, Mapping

import orjson

from values import decode_doc
from log.codec import FlatWrite

from .errors import ProjectionError
from .index_catalog import TableIndexes, normalize_catalog
from .keys import _ENCODERS, UNDEFINED, _NUL, _NUL_ESC, _P_STRING, _STR_END, encode_value_key
from .keys import FLOAT_POS_HEAD as _FLOAT_POS
from .keys import ID_KEY_FORMAT as _ID_KEY
from .keys import STRING_KEYS as _STRING_KEYS
from .keys import STRING_KEYS_MAX as _STRING_KEYS_MAX
from .keys import _pack_d

DocKeys = tuple[bytes, ...]
"""The keys a document occupies: (by_creation_time key, user index keys in `TableIndexes.names[2:]` order).

(Its by_id key depends only on its id: the projection makes that one itself.)"""

PreparedWrite = tuple[int, str, bytes, "bytes | None", "DocKeys | None", "bytes | None"]
"""(record offset, table, id as UTF-8, doc, keys of doc (None if doc is), prev).

(The keys of `prev` are left to the projection: that balances the work of a
child process that prepares writes with that of the projection applying them.)"""


class WritePreparer:
    """Computes `PreparedWrite`s for a user index catalog (``{table: {name: [field, ...]}}``)."""

    def __init__(self, catalog: Mapping[str, Mapping[str, list[str]]], where: str = "projection") -> None:
        self._catalog = normalize_catalog(catalog)
        self._where = where
        self._tables: dict[str, TableIndexes] = {}

    def table(self, table: str) -> TableIndexes:
        """The compiled indexes of `table`."""
        ti = self._tables.get(table)
        if ti is None:
            ti = self._tables[table] = TableIndexes(table, self._catalog.get(table))
        return ti

    def __call__(self, writes: list[FlatWrite]) -> list[PreparedWrite]:
        """`writes` (as `log.codec.decode_frame_writes` gives them), each with the keys of its doc."""
        out: list[PreparedWrite] = []
        append = out.append
        tables = self._tables
        last_table = ti = None
        off = table = idb = None
        if len(_STRING_KEYS) > _STRING_KEYS_MAX:
            _STRING_KEYS.clear()
        try:
            for off, table, idb, new_raw, old_raw in writes:
                if table is not last_table:
                    ti = tables.get(table) or self.table(table)
                    last_table = table
                idk = _ID_KEY % idb if 0 not in idb else _P_STRING + idb.replace(_NUL, _NUL_ESC) + _STR_END
                append((off, table, idb, new_raw, None if new_raw is None else doc_keys(ti, new_raw, idb, idk), old_raw))
        except Exception as exc:
            where = "" if idb is None else f" ({table} {idb.decode(errors='replace')})"
            raise ProjectionError(f"{self._where}: cannot apply record {off}{where}: {exc}") from exc
        return out


def id_key(idb: bytes) -> bytes:
    """``encode_string_key`` of a document id given as UTF-8 bytes."""
    return _ID_KEY % idb if 0 not in idb else _P_STRING + idb.replace(_NUL, _NUL_ESC) + _STR_END


def doc_keys(ti: TableIndexes, raw: bytes, idb: bytes, idk: bytes) -> DocKeys:
    """The keys of the encoded document `raw` (id `idb`, whose string key is `idk`) in table `ti`."""
    doc: dict[str, Any] = decode_doc(raw) if 36 in raw else _loads(raw)
    ct = doc.get("_creationTime", UNDEFINED)
    if type(ct) is float and ct > 0.0:  # encode_float_key, inlined for the usual case
        packed = _pack_d(ct)
        tail = _FLOAT_POS[packed[0]] + packed[1:] + idk
    else:
        tail = encode_value_key(ct) + idk
    simple = ti.simple
    if simple is None:
        return (ti.by_ct + tail, *ti.user_keys(doc, tail))
    if len(simple) == 1:
        prefix, field = simple[0]
        v = doc.get(field, UNDEFINED)
        return (ti.by_ct + tail,
                prefix + (_STRING_KEYS[v] if type(v) is str else _ENCODERS[type(v)](v)) + tail)
    get = doc.get
    keys = [ti.by_ct + tail]
    for prefix, field in simple:
        v = get(field, UNDEFINED)
        keys.append(prefix + (_STRING_KEYS[v] if type(v) is str else _ENCODERS[type(v)](v)) + tail)
    return tuple(keys)


_loads = orjson.loads
