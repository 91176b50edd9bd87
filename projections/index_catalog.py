"""Index definitions: validating the catalog and computing a document's index keys.

A catalog maps ``{table: {index_name: [field, ...]}}`` (user indexes only).
Every table also has the two system indexes ``by_id`` (fields ``["_id"]``) and
``by_creation_time`` (fields ``["_creationTime", "_id"]``); a user index on
``[f1, ..., fn]`` is ordered by ``[f1, ..., fn, "_creationTime", "_id"]``.
Fields may be dotted paths (``"a.b"``); a missing field (or a path through a
non-object) indexes as `UNDEFINED`, which sorts before every value.
"""
from __future__ import annotations

from typing import Any, Mapping

from .errors import IndexCatalogError
from .keys import UNDEFINED, encode_float_key, encode_string_key, encode_value_key
from .layout import BY_CREATION_TIME, BY_ID, SYSTEM_INDEXES, index_prefix

Catalog = dict[str, dict[str, list[str]]]

_UserIndex = tuple[bytes, "tuple[str, ...] | None", "tuple[tuple[str, ...], ...] | None"]
"""(prefix, top-level field names, or None and the split dotted paths)."""

CREATION_TIME = "_creationTime"
ID = "_id"


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


class TableIndexes:
    """Every index of one table, compiled for fast key computation.

    `names`/`prefixes` list by_id first, then by_creation_time, then the user
    indexes sorted by name. A by_creation_time or user key ends with the
    *tail* ``enc(_creationTime) + enc(_id)`` (see `tail`).
    """

    __slots__ = ("table", "names", "prefixes", "fields", "by_name", "by_id", "by_ct", "user", "simple")

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
        # (the common case, which the write path inlines); otherwise None.
        self.simple: tuple[tuple[bytes, str], ...] | None = None
        if all(top is not None and len(top) == 1 for _, top, _ in compiled):
            self.simple = tuple((prefix, top[0]) for prefix, top, _ in compiled)  # type: ignore[index]

    def user_keys(self, doc: dict[str, Any], tail: bytes) -> list[bytes]:
        """The user-index keys of `doc`, given its `tail`, in `names[2:]` order."""
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

    def keys(self, doc: dict[str, Any], doc_id: str) -> list[bytes]:
        """The key `doc` (whose id is `doc_id`) occupies in each index, aligned with `names`."""
        idk = encode_string_key(doc_id)
        t = tail(doc, idk)
        out = [self.by_id + idk, self.by_ct + t]
        if self.user:
            out += self.user_keys(doc, t)
        return out


def tail(doc: dict[str, Any], id_key: bytes) -> bytes:
    """``enc(doc._creationTime) + id_key``: the common end of by_creation_time and user keys."""
    ct = doc.get(CREATION_TIME, UNDEFINED)
    return (encode_float_key(ct) if type(ct) is float else encode_value_key(ct)) + id_key
