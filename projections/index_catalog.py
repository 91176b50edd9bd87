"""Index definitions, and the one place a document's index keys are derived.

A catalog maps ``{table: {index_name: [field, ...]}}`` (user indexes only).
Every table also has the two system indexes ``by_id`` (fields ``["_id"]``) and
``by_creation_time`` (fields ``["_creationTime", "_id"]``); a user index on
``[f1, ..., fn]`` is ordered by ``[f1, ..., fn, "_creationTime", "_id"]``.
Fields may be dotted paths (``"a.b"``); a missing field (or a path through a
non-object) indexes as `UNDEFINED`, which sorts before every value.

Every path that needs index keys — applying records (`Projection.apply`,
replay), installing indexes, the engine's overlay and read sets
(`Projection.index_keys`, `Projection.doc_key`) — derives them here:
`TableIndexes.doc_keys` / `TableIndexes.keys` for a document's keys (and
`TableIndexes.key_changes` for those two versions of it differ in),
`by_id_key` / `doc_key_from_id` for the by_id key of an id alone, and
`decode_stored` to read a stored document. Values are encoded by `projections.keys`.
"""
from __future__ import annotations

import functools
import struct
from typing import Any, Callable, Mapping

import orjson

from values import decode_doc, table_of

from .errors import IndexCatalogError
from .keys import (
    FLOAT_KEY,
    ID_KEY_FORMAT,
    KEY_ENCODERS,
    STRING_KEYS,
    T_FLOAT,
    UNDEFINED,
    encode_id_key,
    encode_string_key,
    encode_value_key,
)
from .layout import BY_CREATION_TIME, BY_ID, SYSTEM_INDEXES, index_prefix

Catalog = dict[str, dict[str, list[str]]]

_UserIndex = tuple[bytes, "tuple[str, ...] | None", "tuple[tuple[str, ...], ...] | None"]
"""(prefix, top-level field names, or None and the split dotted paths)."""

CREATION_TIME = "_creationTime"
ID = "_id"

SPECIAL_TAG = 0x24
"""The byte ``$``. The storage encoding (`values.encode_doc`) is JSON in which a
value JSON cannot hold (bytes, a non-finite float) is written as a
``{"$bytes": ...}`` / ``{"$float": ...}`` object (field names never start with
``$``): an encoding without a ``$`` byte holds no such value and is plain JSON.
(One with a ``$`` may be plain too, e.g. ``"price: $5"``.)"""


def decode_stored(raw: bytes) -> dict[str, Any]:
    """The document stored as `raw` (`values.encode_doc`'s encoding); the same as `values.decode_doc`.

    Most documents hold no ``$``-tagged special value (see `SPECIAL_TAG`):
    those go straight to ``orjson.loads``, the others through
    `values.decode_doc`, which restores the special values. (The replay's
    hot path: one call per document it indexes.)
    """
    return _decode_doc(raw) if SPECIAL_TAG in raw else _loads(raw)


_loads = orjson.loads
_decode_doc = decode_doc


def normalize_catalog(indexes: Mapping[str, Mapping[str, list[str]]] | None) -> Catalog:
    """Validate `indexes` and return a sorted plain-dict copy.

    Raises `IndexCatalogError` for reserved or malformed names and fields.
    """
    out: Catalog = {}
    for table in sorted(indexes or {}):
        if type(table) is not str or not table:
            raise IndexCatalogError(f"table name must be a non-empty string, got {table!r}")
        per = indexes[table]  # type: ignore[index]
        if not isinstance(per, Mapping):
            raise IndexCatalogError(f"{table}: indexes must be a mapping of name -> fields")
        tab: dict[str, list[str]] = {}
        for name in sorted(per):
            if type(name) is not str or not name:
                raise IndexCatalogError(f"{table}: index name must be a non-empty string, got {name!r}")
            if name in SYSTEM_INDEXES or name.startswith("_"):
                raise IndexCatalogError(f"{table}.{name}: index name is reserved")
            fields = per[name]
            if isinstance(fields, (str, bytes)) or not all(type(f) is str and f for f in fields):
                raise IndexCatalogError(f"{table}.{name}: fields must be a list of non-empty strings")
            fields = list(fields)
            if len(set(fields)) != len(fields):
                raise IndexCatalogError(f"{table}.{name}: duplicate field in {fields}")
            tab[name] = fields
        if tab:
            out[table] = tab
    return out


def field_value(doc: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at a (split) dotted `path` in `doc`, or `UNDEFINED`."""
    v: Any = doc
    for part in path:
        if type(v) is not dict:
            return UNDEFINED
        v = v.get(part, UNDEFINED)
    return v


def by_id_key(table: str, doc_id: str) -> bytes:
    """The by_id index key of document `doc_id` of `table`."""
    return index_prefix(table, BY_ID) + encode_string_key(doc_id)


@functools.lru_cache(maxsize=1 << 16)
def doc_key_from_id(doc_id: str) -> bytes | None:
    """`by_id_key` with the table read out of a Tape id (None if `doc_id` is not one); cached."""
    table = table_of(doc_id)
    return None if table is None else by_id_key(table, doc_id)


DocKeys = Callable[[dict[str, Any], bytes], tuple[bytes, ...]]
"""``doc_keys(doc, idb)``: the keys document `doc`, whose id is `idb` (UTF-8), occupies in each index of a table."""
KeyChanges = Callable[[dict[str, Any], dict[str, Any], bytes], tuple[tuple[bytes, bytes], ...]]
"""``key_changes(old_doc, new_doc, idb)``: (old key, new key) for each index where two versions of a document differ."""

# Types whose == implies identical key encodings (unlike float: -0.0 == 0.0, or list: [1] == [1.0]).
_EXACT_EQ = frozenset({str, int, bool, type(None)})


class TableIndexes:
    """Every index of one table, compiled for fast key computation.

    `names`/`prefixes` list by_id first, then by_creation_time, then the user
    indexes sorted by name. A by_creation_time or user key ends with the
    *tail* ``enc(_creationTime) + enc(_id)``.

    `doc_keys` and `key_changes` are the derivation itself: closures made
    for the shape of the table's indexes when it is built (a table without
    user indexes, one on a single top-level field, several such, any other),
    as the replay calls them once per document.
    """

    __slots__ = ("table", "names", "prefixes", "fields", "by_name", "by_id", "by_ct", "user", "simple",
                 "doc_keys", "key_changes")

    def __init__(self, table: str, user: Mapping[str, list[str]] | None = None) -> None:
        self.table = table
        user = user or {}
        self.names: list[str] = [BY_ID, BY_CREATION_TIME] + sorted(user)
        self.prefixes: list[bytes] = [index_prefix(table, n) for n in self.names]
        self.fields: dict[str, list[str]] = {BY_ID: [ID], BY_CREATION_TIME: [CREATION_TIME, ID]}
        self.by_id = self.prefixes[0]
        self.by_name: dict[str, tuple[bytes, int]] = {}  # index name -> (prefix, number of key fields)
        self.by_ct = self.prefixes[1]
        compiled = []
        for name, prefix in zip(self.names[2:], self.prefixes[2:]):
            fields = list(user[name])
            self.fields[name] = fields + [CREATION_TIME, ID]
            if all("." not in f for f in fields):
                compiled.append((prefix, tuple(fields), None))
            else:
                compiled.append((prefix, None, tuple(tuple(f.split(".")) for f in fields)))
        for name, prefix in zip(self.names, self.prefixes):
            self.by_name[name] = (prefix, len(self.fields[name]))
        self.user: tuple[_UserIndex, ...] = tuple(compiled)
        # (prefix, field) per user index when every user index is on one top-level field
        # (the common case, which `doc_keys` and `key_changes` are specialised for); otherwise None.
        self.simple: tuple[tuple[bytes, str], ...] | None = None
        if all(top is not None and len(top) == 1 for _, top, _ in compiled):
            self.simple = tuple((prefix, top[0]) for prefix, top, _ in compiled)  # type: ignore[index]
        self.doc_keys: DocKeys = self._compile_doc_keys()
        """``doc_keys(doc, idb)``: the key `doc`, whose id is `idb` (its UTF-8 bytes), occupies in
        each index, aligned with `names`."""
        self.key_changes: KeyChanges = self._compile_key_changes()
        """``key_changes(old_doc, new_doc, idb)``: ``(old key, new key)`` for each index in which
        two versions of document `idb` have different keys (none for most updates)."""

    def keys(self, doc: dict[str, Any], doc_id: str) -> list[bytes]:
        """The key `doc` (whose id is `doc_id`) occupies in each index, aligned with `names`."""
        return list(self.doc_keys(doc, doc_id.encode()))

    def _compile_doc_keys(self) -> DocKeys:
        # Each variant starts with the same two lines: the id's key (`encode_id_key`) and the tail,
        # with the usual cases of `encode_id_key` (no NUL) and `encode_float_key` (> 0) inlined.
        by_id = self.by_id
        by_ct = self.by_ct
        simple = self.simple
        user_keys = self._user_keys
        str_keys = STRING_KEYS
        encoders = KEY_ENCODERS
        id_format = ID_KEY_FORMAT
        id_key_of = encode_id_key
        float_key = FLOAT_KEY.pack
        value_key = encode_value_key
        undefined = UNDEFINED
        bad_value = _BAD_VALUE

        if simple is None:  # a compound or dotted index: the general path
            def doc_keys(doc: dict[str, Any], idb: bytes) -> tuple[bytes, ...]:
                id_key = id_format % idb if 0 not in idb else id_key_of(idb)
                ct = doc.get(CREATION_TIME, undefined)
                tail = (float_key(T_FLOAT, -ct) if type(ct) is float and ct > 0.0 else value_key(ct)) + id_key
                return (by_id + id_key, by_ct + tail, *user_keys(doc, tail))
        elif len(simple) == 1:
            ((prefix, field),) = simple

            def doc_keys(doc: dict[str, Any], idb: bytes) -> tuple[bytes, ...]:
                id_key = id_format % idb if 0 not in idb else id_key_of(idb)
                ct = doc.get(CREATION_TIME, undefined)
                tail = (float_key(T_FLOAT, -ct) if type(ct) is float and ct > 0.0 else value_key(ct)) + id_key
                v = doc.get(field, undefined)
                try:
                    return (by_id + id_key, by_ct + tail,
                            prefix + (str_keys[v] if type(v) is str else encoders[type(v)](v)) + tail)
                except bad_value:  # not a Convex value: `encode_value_key` raises the error for it
                    return (by_id + id_key, by_ct + tail, *user_keys(doc, tail))
        else:  # no user index, or several, each on one top-level field
            def doc_keys(doc: dict[str, Any], idb: bytes) -> tuple[bytes, ...]:
                id_key = id_format % idb if 0 not in idb else id_key_of(idb)
                ct = doc.get(CREATION_TIME, undefined)
                tail = (float_key(T_FLOAT, -ct) if type(ct) is float and ct > 0.0 else value_key(ct)) + id_key
                get = doc.get
                keys = [by_id + id_key, by_ct + tail]
                try:
                    for prefix, field in simple:  # type: ignore[union-attr]
                        v = get(field, undefined)
                        keys.append(prefix + (str_keys[v] if type(v) is str else encoders[type(v)](v)) + tail)
                except bad_value:  # not a Convex value: `encode_value_key` raises the error for it
                    return (by_id + id_key, by_ct + tail, *user_keys(doc, tail))
                return tuple(keys)

        return doc_keys

    def _compile_key_changes(self) -> KeyChanges:
        doc_keys = self.doc_keys
        simple = self.simple
        exact = _EXACT_EQ
        str_keys = STRING_KEYS
        encoders = KEY_ENCODERS
        id_format = ID_KEY_FORMAT
        id_key_of = encode_id_key
        float_key = FLOAT_KEY.pack
        undefined = UNDEFINED
        bad_value = _BAD_VALUE

        def compared(old: dict[str, Any], new: dict[str, Any], idb: bytes) -> tuple[tuple[bytes, bytes], ...]:
            return tuple([(o, n) for o, n in zip(doc_keys(old, idb), doc_keys(new, idb)) if o != n])

        if simple is None:  # a compound or dotted index: compare the keys
            return compared

        def key_changes(old: dict[str, Any], new: dict[str, Any], idb: bytes) -> tuple[tuple[bytes, bytes], ...]:
            # The usual update keeps _creationTime (a float: the tail stays) and only the keys
            # of changed fields can change (equal values of the `exact` types have equal keys).
            ct = new.get(CREATION_TIME)
            old_ct = old.get(CREATION_TIME)
            if type(ct) is not float or type(old_ct) is not float or ct != old_ct or not ct:
                return compared(old, new, idb)  # (0.0 == -0.0, whose keys differ)
            changes: tuple[tuple[bytes, bytes], ...] = ()
            tail = b""
            for prefix, field in simple:  # type: ignore[union-attr]
                v = new.get(field, undefined)
                old_v = old.get(field, undefined)
                if v is old_v or (type(v) is type(old_v) and type(v) in exact and v == old_v):
                    continue
                if not tail:  # as in `doc_keys`
                    tail = ((float_key(T_FLOAT, -ct) if ct > 0.0 else encoders[float](ct))
                            + (id_format % idb if 0 not in idb else id_key_of(idb)))
                try:
                    old_key = prefix + (str_keys[old_v] if type(old_v) is str else encoders[type(old_v)](old_v)) + tail
                    new_key = prefix + (str_keys[v] if type(v) is str else encoders[type(v)](v)) + tail
                except bad_value:  # not a Convex value: `encode_value_key` raises the error for it
                    return compared(old, new, idb)
                if old_key != new_key:
                    changes += ((old_key, new_key),)
            return changes

        return key_changes

    def _user_keys(self, doc: dict[str, Any], tail: bytes) -> list[bytes]:
        """The user-index keys of `doc`, given its `tail`, in `names[2:]` order (any index shape)."""
        enc = encode_value_key
        get = doc.get
        out = []
        for prefix, top, paths in self.user:
            if top is not None:
                if len(top) == 1:
                    out.append(prefix + enc(get(top[0], UNDEFINED)) + tail)
                else:
                    out.append(prefix + b"".join([enc(get(f, UNDEFINED)) for f in top]) + tail)
            else:
                assert paths is not None
                out.append(prefix + b"".join([enc(field_value(doc, p)) for p in paths]) + tail)
        return out


_BAD_VALUE = (KeyError, OverflowError, struct.error)  # what the shortcut raises for a value that is not a Convex value
