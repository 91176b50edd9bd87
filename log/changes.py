"""Change data capture: log records -> one change event per written document.

Each event has the Debezium envelope shape::

    {"op": "c" | "u" | "d",          # create (insert), update (replace/patch), delete
     "before": {...} | null,         # the document before the write (null for "c")
     "after":  {...} | null,         # the document after the write (null for "d")
     "source": {"table", "id", "offset", "ts_ns", "ts_ms", "txId", "function"},
     "ts_ms": <commit time, ms>}

* ``source.offset`` is the log offset of the transaction (= ``txId``): every
  write of one transaction carries the same offset, and events are emitted in
  log order, so a consumer can de-duplicate after an at-least-once redelivery
  by remembering the last offset it fully processed.
* ``ts_ms`` (top level) is the commit time, not the time the exporter ran, so a
  redelivered event is byte-identical to the first delivery.
* ``op`` comes from the record: ``prev is None`` means insert, ``doc is None``
  means delete (`log.record.Write`).

Documents are rendered in one of two encodings (``doc_format``):

* ``"json"`` (default): the storage encoding verbatim — plain JSON where
  int64 values are JSON integers and float64 values always carry a fraction
  or exponent (``1.0``); bytes are ``{"$bytes": "<base64>"}`` and NaN/±inf
  ``{"$float": "<base64 of 8 LE bytes>"}``. Fast: no re-encoding.
* ``"convex"``: Convex JSON as the official clients speak it
  (`values.to_wire`): int64 as ``{"$integer": "<base64>"}``, every JSON
  number a float64.

System tables (names starting with ``_``, e.g. ``_requests``) are skipped
unless named explicitly in `tables` or `include_system` is set.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import orjson

from values import decode_doc, to_wire
from log.codec import FlatRecord, FlatWrite
from log.record import Record

DOC_FORMATS = ("json", "convex")
OPS = ("c", "u", "d")

AVRO_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "ChangeEvent",
    "namespace": "tape.cdc.v1",
    "doc": "One changed document (Debezium-style envelope). before/after hold the document as JSON text.",
    "fields": [
        {"name": "op", "type": {"type": "enum", "name": "Op", "symbols": list(OPS)}},
        {"name": "before", "type": ["null", "string"], "default": None},
        {"name": "after", "type": ["null", "string"], "default": None},
        {
            "name": "source",
            "type": {
                "type": "record",
                "name": "Source",
                "fields": [
                    {"name": "table", "type": "string"},
                    {"name": "id", "type": "string"},
                    {"name": "offset", "type": "long"},
                    {"name": "ts_ns", "type": "long"},
                    {"name": "ts_ms", "type": "long"},
                    {"name": "txId", "type": "long"},
                    {"name": "function", "type": ["null", "string"], "default": None},
                ],
            },
        },
        {"name": "ts_ms", "type": "long"},
    ],
}


class TableFilter:
    """Which tables' writes become events: `tables` if given, else every non-system table."""

    __slots__ = ("tables", "include_system")

    def __init__(self, tables: Iterable[str] | None = None, include_system: bool = False) -> None:
        self.tables = frozenset(tables) if tables else None
        self.include_system = include_system

    def __call__(self, table: str) -> bool:
        if self.tables is not None:
            return table in self.tables
        return self.include_system or not table.startswith("_")


def _convex_json(raw: bytes | None) -> bytes:
    if raw is None:
        return b"null"
    return orjson.dumps(to_wire(decode_doc(raw)))


def _plain_json(raw: bytes | None) -> bytes:
    return b"null" if raw is None else raw


def _doc_renderer(doc_format: str) -> Any:
    if doc_format == "json":
        return _plain_json
    if doc_format == "convex":
        return _convex_json
    raise ValueError(f"unknown document format {doc_format!r} (use one of {', '.join(DOC_FORMATS)})")


def _source(record: Record, table: str, doc_id: str) -> dict[str, Any]:
    return {
        "table": table,
        "id": doc_id,
        "offset": record.offset,
        "ts_ns": record.ts,
        "ts_ms": record.ts // 1_000_000,
        "txId": record.offset,
        "function": record.function,
    }


def iter_changes(records: Iterable[Record], tables: TableFilter | None = None,
                 doc_format: str = "json") -> Iterator[dict[str, Any]]:
    """Change events (as dicts, documents parsed) for `records`, in log order."""
    keep = tables or TableFilter()
    for record in records:
        ts_ms = record.ts // 1_000_000
        for w in record.writes:
            if not keep(w.table):
                continue
            if doc_format == "convex":
                before = None if w.prev is None else to_wire(decode_doc(w.prev))
                after = None if w.doc is None else to_wire(decode_doc(w.doc))
            else:
                before = None if w.prev is None else orjson.loads(w.prev)
                after = None if w.doc is None else orjson.loads(w.doc)
            op = "d" if w.doc is None else ("c" if w.prev is None else "u")
            yield {"op": op, "before": before, "after": after, "source": _source(record, w.table, w.id),
                   "ts_ms": ts_ms}


def change_events(record: Record, tables: TableFilter | None = None, doc_format: str = "json") -> list[dict[str, Any]]:
    """The change events of one record (see the module docstring)."""
    return list(iter_changes([record], tables, doc_format))


_HEAD_CREATE = b'{"op":"c","before":'
_HEAD_UPDATE = b'{"op":"u","before":'
_HEAD_DELETE = b'{"op":"d","before":'


def _event_tail(offset: int, ts: int, function: str | None) -> bytes:
    """The end of every JSON event of one record: the rest of ``source`` and the envelope's ``ts_ms``."""
    ts_ms = ts // 1_000_000
    return (b',"offset":%d,"ts_ns":%d,"ts_ms":%d,"txId":%d,"function":%b},"ts_ms":%d}'
            % (offset, ts, ts_ms, offset, orjson.dumps(function), ts_ms))


def encode_changes(records: Iterable[Record], tables: TableFilter | None = None,
                   doc_format: str = "json") -> Iterator[tuple[str, int, bytes]]:
    """(document id, offset, event as compact JSON bytes) for each event of `records`.

    Builds the JSON by splicing the stored document bytes (``doc_format="json"``)
    instead of parsing and re-serialising them; equal, once parsed, to
    `iter_changes`.
    """
    keep = tables or TableFilter()
    render = _doc_renderer(doc_format)
    dumps = orjson.dumps
    for record in records:
        offset = record.offset
        ts = record.ts
        tail = _event_tail(offset, ts, record.function)
        for w in record.writes:
            table = w.table
            if not keep(table):
                continue
            doc, prev = w.doc, w.prev
            head = _HEAD_DELETE if doc is None else _HEAD_CREATE if prev is None else _HEAD_UPDATE
            yield w.id, offset, b"".join((
                head, render(prev), b',"after":', render(doc),
                b',"source":{"table":', dumps(table), b',"id":', dumps(w.id), tail,
            ))


def jsonl_chunk(records: Iterable[Record], tables: TableFilter | None = None, doc_format: str = "json") -> tuple[bytes, int]:
    """(newline-terminated JSON lines of the events of `records`, number of events)."""
    lines = [event for _id, _off, event in encode_changes(records, tables, doc_format)]
    if not lines:
        return b"", 0
    lines.append(b"")
    return b"\n".join(lines), len(lines) - 1


def jsonl_flat_chunk(writes: list[FlatWrite], records: list[FlatRecord], tables: TableFilter | None = None,
                     doc_format: str = "json") -> tuple[bytes, int]:
    """`jsonl_chunk` for records given flattened: `log.codec.decode_frame_writes` with its `records`.

    The output is byte-identical to `jsonl_chunk` of the same records; no
    `Record` objects are needed (the fast path of `tape stream` to a file).
    """
    keep = tables or TableFilter()
    plain = doc_format == "json"
    render = _doc_renderer(doc_format)
    dumps = orjson.dumps
    table_json: dict[str, bytes | None] = {}  # table -> its JSON string, None when filtered out
    lines: list[bytes] = []
    append = lines.append
    i = 0
    for offset, ts, function, stop in records:
        if i == stop:
            continue
        tail = _event_tail(offset, ts, function)
        for _off, table, ident, doc, prev in writes[i:stop]:
            tj = table_json.get(table, b"")
            if tj == b"":
                tj = table_json[table] = dumps(table) if keep(table) else None
            if tj is None:
                continue
            head = _HEAD_DELETE if doc is None else _HEAD_CREATE if prev is None else _HEAD_UPDATE
            if plain:
                append(b"".join((
                    head, b"null" if prev is None else prev, b',"after":', b"null" if doc is None else doc,
                    b',"source":{"table":', tj, b',"id":', dumps(ident.decode()), tail,
                )))
            else:
                append(b"".join((
                    head, render(prev), b',"after":', render(doc),
                    b',"source":{"table":', tj, b',"id":', dumps(ident.decode()), tail,
                )))
        i = stop
    if not lines:
        return b"", 0
    n = len(lines)
    lines.append(b"")
    return b"\n".join(lines), n


def avro_events(records: Iterable[Record], tables: TableFilter | None = None,
                doc_format: str = "json") -> Iterator[dict[str, Any]]:
    """Events shaped for `AVRO_SCHEMA` (before/after as JSON text)."""
    keep = tables or TableFilter()
    render = _doc_renderer(doc_format)
    for record in records:
        ts_ms = record.ts // 1_000_000
        for w in record.writes:
            if not keep(w.table):
                continue
            op = "d" if w.doc is None else ("c" if w.prev is None else "u")
            yield {
                "op": op,
                "before": None if w.prev is None else render(w.prev).decode(),
                "after": None if w.doc is None else render(w.doc).decode(),
                "source": _source(record, w.table, w.id),
                "ts_ms": ts_ms,
            }


def event_from_avro(datum: dict[str, Any]) -> dict[str, Any]:
    """An Avro-decoded event back in the JSON shape (documents parsed)."""
    out = dict(datum)
    out["before"] = None if datum["before"] is None else orjson.loads(datum["before"])
    out["after"] = None if datum["after"] is None else orjson.loads(datum["after"])
    return out


__all__ = [
    "AVRO_SCHEMA",
    "DOC_FORMATS",
    "TableFilter",
    "avro_events",
    "change_events",
    "encode_changes",
    "event_from_avro",
    "iter_changes",
    "jsonl_chunk",
    "jsonl_flat_chunk",
]
