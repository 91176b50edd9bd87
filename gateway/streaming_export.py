"""Convex's streaming-export API, which the Fivetran and Airbyte connectors call: list_snapshot + document_deltas.

Both need ``Authorization: Convex <admin key>``; both take their arguments as
query parameters (GET) or a JSON body (POST), named as Convex names them
(get-convex/convex-backend ``crates/common/src/types/streaming_export``):

* ``/api/list_snapshot`` — ``snapshot`` (a ts; omit on the first call),
  ``cursor`` (opaque; omit on the first call), ``tableName`` (only this
  table), ``format`` — answers ``{"values", "snapshot", "cursor", "hasMore"}``:
  every user document as of ``snapshot``, in pages. Call again with the
  returned ``snapshot`` and ``cursor`` while ``hasMore``.
* ``/api/json_schemas?deltaSchema=true&format=..`` — ``{table: JSON Schema}``
  from schema.py (open objects for tables without a validator): how the
  Airbyte connector finds the tables; ``/api/test_streaming_export_connection``.
* ``/api/get_table_column_names`` — ``{"byComponent": {"": [{"name", "columns"}]}}``.
* ``/api/document_deltas`` — ``cursor`` (a ts; start with the snapshot),
  ``tableName``, ``format`` — answers ``{"values", "cursor", "hasMore"}``:
  every write after ``cursor`` in commit order, whole transactions per page;
  a deleted document is ``{"_id", "_deleted": true}``.

Each value is the document's fields plus ``_table``, ``_component`` (always
``""``), ``_ts`` (the commit ts; the snapshot's ts in list_snapshot) and, in
deltas, ``_deleted``. ``format``: ``json`` (the default, Convex's clean JSON:
int64 as a decimal string, bytes as base64), ``convex_encoded_json``
(``{"$integer": ..}``) or ``export_json``. Instead of ``tableName``, a POST
may send Convex's ``selection`` object (tables and columns to include or
exclude; see `Selection`), as the Fivetran connector does. ``limit`` (a Tape
extension) bounds a page (default `PAGE_SIZE`).

Fed from the log: a snapshot at ts S is the live projection with every write
after S undone — the documents written after S are taken from the ``prev``
image of their first later write in the log — so pages of one snapshot stay
consistent while writes go on, and ``document_deltas`` from S then gives
exactly the writes the snapshot does not hold.
"""
from __future__ import annotations

import asyncio
import heapq
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Iterator

import orjson
from aiohttp import web

from engine.validators import (Validator, _Any, _Array, _Boolean, _Bytes, _Id, _Int64, _Literal, _Null, _Number,
                               _Object, _Optional, _Record, _String, _Union)
from gateway.config import NODE_KEY
from gateway.http_protocol import clean_json
from history.convex_zip import export_json
from log.errors import LogError
from values import decode_doc, to_wire

if TYPE_CHECKING:
    from gateway.node import Node

PAGE_SIZE = 1000
UNDO_CACHE = 4  # snapshots whose undo maps are kept between list_snapshot pages
MAX_PAGE_SIZE = 10000
FORMATS = ("json", "convex_clean_json", "convex_encoded_json", "convex_json", "export_json")


class StreamingExportError(Exception):
    """A bad request: answered with 400 and ``{"code", "message"}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _formatter(fmt: str | None) -> Callable[[Any], Any]:
    if fmt is None or fmt in ("json", "convex_clean_json"):
        return clean_json
    if fmt in ("convex_encoded_json", "convex_json"):
        return to_wire
    if fmt == "export_json":
        return lambda v: export_json(v, {})
    raise StreamingExportError("BadFormat", f"format: use one of {', '.join(FORMATS)}, got {fmt!r}")


async def _args(request: web.Request) -> dict[str, Any]:
    if request.method == "POST":
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise StreamingExportError("BadJsonBody", f"request body is not valid JSON: {exc}") from None
        if type(body) is not dict:
            raise StreamingExportError("BadJsonBody", "request body must be a JSON object")
        return body
    return dict(request.query)


def _int_arg(args: dict[str, Any], name: str) -> int | None:
    value = args.get(name)
    if value is None or value == "":
        return None
    if type(value) is str and value.lstrip("-").isdigit():
        value = int(value)
    if type(value) is not int or value < 0:
        raise StreamingExportError("InvalidArgument", f"{name}: expected a non-negative integer, got {value!r}")
    return value


def _limit(args: dict[str, Any]) -> int:
    limit = _int_arg(args, "limit")
    if limit is None:
        return PAGE_SIZE
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise StreamingExportError("InvalidArgument", f"limit: expected 1..{MAX_PAGE_SIZE}, got {limit}")
    return limit


_INCLUSION = {"included": True, "incl": True, "excluded": False, "excl": False}


def _inclusion(value: Any, where: str) -> bool:
    if type(value) is not str or value not in _INCLUSION:
        raise StreamingExportError("InvalidSelection", f"{where}: expected \"included\" or \"excluded\", got {value!r}")
    return _INCLUSION[value]


class Selection:
    """Which tables and columns to export: Convex's ``selection`` object, or ``tableName`` / ``component``.

    ``{"_other": "included"|"excluded", "<component>": "excluded" | {"_other": .., "<table>": "excluded" |
    {"_other": .., "<column>": "included"|"excluded"}}}``; Tape has only the root component ``""``.
    """

    def __init__(self, tables: dict[str, tuple[bool, dict[str, bool]] | None], other_tables: bool) -> None:
        self.tables = tables  # table -> None (excluded) or (other columns included, {column: included})
        self.other_tables = other_tables

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> "Selection":
        """The selection a request asks for (everything when it names none)."""
        if args.get("selection") is not None:
            return cls._exact(args["selection"])
        table = args.get("tableName", args.get("table_name"))
        if table is not None and type(table) is not str:
            raise StreamingExportError("InvalidArgument", "tableName: expected a string")
        component = args.get("component")
        if component not in (None, ""):
            raise StreamingExportError("InvalidArgument", f"component {component!r}: Tape has only the root component")
        if table:
            return cls({table: (True, {})}, False)
        return cls({}, True)

    @classmethod
    def _exact(cls, sel: Any) -> "Selection":
        if type(sel) is not dict:
            raise StreamingExportError("InvalidSelection", "selection: expected an object")
        other_components = _inclusion(sel.get("_other", "included"), "selection._other")
        root = sel.get("", "included" if other_components else "excluded")
        if type(root) is str:
            return cls({}, False) if not _inclusion(root, 'selection[""]') else cls({}, True)
        if type(root) is not dict:
            raise StreamingExportError("InvalidSelection", 'selection[""]: expected an object or "excluded"')
        tables: dict[str, tuple[bool, dict[str, bool]] | None] = {}
        for name, table_sel in root.items():
            if name == "_other":
                continue
            where = f'selection[""].{name}'
            if type(table_sel) is str:
                tables[name] = (True, {}) if _inclusion(table_sel, where) else None
            elif type(table_sel) is dict:
                columns = {c: _inclusion(v, f"{where}.{c}") for c, v in table_sel.items() if c != "_other"}
                tables[name] = (_inclusion(table_sel.get("_other", "included"), f"{where}._other"), columns)
            else:
                raise StreamingExportError("InvalidSelection", f"{where}: expected an object or \"excluded\"")
        return cls(tables, _inclusion(root.get("_other", "included"), 'selection[""]._other'))

    def includes(self, table: str) -> bool:
        """Whether documents of `table` are exported."""
        if table.startswith("_"):
            return False
        if table in self.tables:
            return self.tables[table] is not None
        return self.other_tables

    def project(self, table: str, doc: dict[str, Any]) -> dict[str, Any]:
        """`doc` with only the selected columns (``_id`` always stays)."""
        rule = self.tables.get(table)
        if rule is None or (rule[0] and not rule[1]):
            return doc
        other, columns = rule
        return {k: v for k, v in doc.items() if k == "_id" or columns.get(k, other)}


def _value(doc: dict[str, Any], table: str, ts: int, fmt: Callable[[Any], Any],
           deleted: bool | None = None) -> dict[str, Any]:
    out = fmt(doc)
    out["_table"] = table
    out["_component"] = ""
    out["_ts"] = ts
    if deleted is not None:
        out["_deleted"] = deleted
    return out


# ----------------------------------------------------------------- list_snapshot


class _Undo:
    """The documents written after one snapshot offset, as of that offset, read from the log up to `read_to`."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.read_to = offset
        self.tables: dict[str, dict[str, bytes | None]] = {}
        self.lock = asyncio.Lock()


_UNDO: "web.AppKey[OrderedDict[int, _Undo]]" = web.AppKey("tape.streaming_export.undo", OrderedDict)


async def _snapshot_state(request: web.Request, snapshot_ts: int | None) -> tuple[int, dict[str, dict[str, bytes | None]]]:
    """(the snapshot's ts, {table: {id: encoding as of the snapshot}} for documents written after it).

    When this returns, the live projection is at the offset the undo map was
    read up to, and stays there until the caller next awaits. The maps of the
    last `UNDO_CACHE` snapshots are kept, so each page reads only the records
    committed since the previous one.
    """
    node: Node = request.app[NODE_KEY]
    projection = node.runtime.projection
    if snapshot_ts is None:
        offset, ts = projection.applied_offset, projection.applied_ts
    else:
        ts = snapshot_ts
        if ts > projection.applied_ts:
            raise StreamingExportError("InvalidSnapshot",
                                       f"snapshot {ts} is in the future (latest {projection.applied_ts})")
        offset = await node.log.offset_for_timestamp(ts + 1) - 1
    cache = request.app[_UNDO]
    undo = cache.get(offset)
    if undo is None:
        undo = cache[offset] = _Undo(offset)
        while len(cache) > UNDO_CACHE:
            cache.popitem(last=False)
    cache.move_to_end(offset)
    async with undo.lock:
        while True:
            live = projection.applied_offset
            if undo.read_to < live:
                try:
                    async for records in node.log.read(undo.read_to + 1, live + 1):
                        for rec in records:
                            for w in rec.writes:
                                undo.tables.setdefault(w.table, {}).setdefault(w.id, w.prev)
                except LogError as exc:
                    cache.pop(offset, None)  # partly read: start over next time
                    raise StreamingExportError("LogError", f"cannot read the log: {exc}") from None
                undo.read_to = live
            if projection.applied_offset == undo.read_to:
                return ts, undo.tables


def _cursor_arg(text: Any) -> tuple[str, str] | None:
    if text is None or text == "":
        return None
    try:
        obj = orjson.loads(text) if type(text) is str else None
        if type(obj) is dict and type(obj.get("table")) is str and type(obj.get("id")) is str:
            return obj["table"], obj["id"]
    except orjson.JSONDecodeError:
        pass
    raise StreamingExportError("InvalidListSnapshotCursor",
                               "Invalid value for the `cursor` argument of list_snapshot. Use a `cursor` returned by "
                               "a previous list_snapshot call, and treat it as an opaque value.")


def _table_rows(node: "Node", table: str, after: str | None,
                undo: dict[str, bytes | None]) -> Iterator[tuple[str, bytes]]:
    """(id, encoding) of `table`'s documents as of the snapshot, in by_id order, after id `after`."""
    projection = node.runtime.projection
    lo, hi = projection.index_range(table, "by_id")
    start = projection.doc_key(after, table) if after is not None else None
    if start is not None:
        lo = max(lo, start + b"\x00")
    live = ((key, doc_id) for key, doc_id in projection.scan(lo, hi) if doc_id not in undo)
    old = sorted((projection.doc_key(doc_id, table), doc_id) for doc_id, prev in undo.items()
                 if prev is not None and (start is None or projection.doc_key(doc_id, table) > start))
    for _key, doc_id in heapq.merge(live, old):
        raw = undo[doc_id] if doc_id in undo else projection.get(doc_id)
        if raw is not None:
            yield doc_id, raw


async def list_snapshot(request: web.Request) -> web.Response:
    """GET/POST /api/list_snapshot (see the module docstring)."""
    node: Node = request.app[NODE_KEY]
    if not node.admin.check(request.headers.get("Authorization")):
        return _unauthorized()
    try:
        args = await _args(request)
        fmt = _formatter(args.get("format"))
        selection = Selection.from_args(args)
        limit = _limit(args)
        cursor = _cursor_arg(args.get("cursor"))
        ts, undo = await _snapshot_state(request, _int_arg(args, "snapshot"))
    except StreamingExportError as exc:
        return _json({"code": exc.code, "message": str(exc)}, 400)
    # from here on nothing awaits: the projection and the undo map agree
    projection = node.runtime.projection
    tables = sorted(t for t in set(projection.tables()) | set(undo) if selection.includes(t))
    if cursor is not None:
        tables = [t for t in tables if t >= cursor[0]]
    values: list[dict[str, Any]] = []
    last: tuple[str, str] | None = None
    has_more = False
    for table in tables:
        after = cursor[1] if cursor is not None and table == cursor[0] else None
        for doc_id, raw in _table_rows(node, table, after, undo.get(table, {})):
            if len(values) >= limit:
                has_more = True
                break
            values.append(_value(selection.project(table, decode_doc(raw)), table, ts, fmt))
            last = (table, doc_id)
        if has_more:
            break
    out_cursor = orjson.dumps({"table": last[0], "id": last[1]}).decode() if last else (args.get("cursor") or None)
    return _json({"values": values, "snapshot": ts, "cursor": out_cursor, "hasMore": has_more})


# ----------------------------------------------------------------- document_deltas


async def document_deltas(request: web.Request) -> web.Response:
    """GET/POST /api/document_deltas (see the module docstring)."""
    node: Node = request.app[NODE_KEY]
    if not node.admin.check(request.headers.get("Authorization")):
        return _unauthorized()
    try:
        args = await _args(request)
        fmt = _formatter(args.get("format"))
        selection = Selection.from_args(args)
        limit = _limit(args)
        cursor = _int_arg(args, "cursor")
        if cursor is None:
            raise StreamingExportError("DocumentDeltasCursorRequired", "/api/document_deltas requires a cursor")
    except StreamingExportError as exc:
        return _json({"code": exc.code, "message": str(exc)}, 400)
    end = node.runtime.projection.applied_offset + 1  # serve what queries can already see
    start = await node.log.offset_for_timestamp(cursor + 1)
    values: list[dict[str, Any]] = []
    new_cursor = cursor
    has_more = False
    if start < end:
        try:
            async for records in node.log.read(start, end):
                for rec in records:
                    if len(values) >= limit:
                        has_more = True
                        break
                    for w in rec.writes:
                        if not selection.includes(w.table):
                            continue
                        if w.doc is None:
                            values.append(_value({"_id": w.id}, w.table, rec.ts, fmt, deleted=True))
                        else:
                            doc = selection.project(w.table, decode_doc(w.doc))
                            values.append(_value(doc, w.table, rec.ts, fmt, deleted=False))
                    new_cursor = rec.ts
                if has_more:
                    break
        except LogError as exc:
            return _json({"code": "LogError", "message": f"cannot read the log: {exc}"}, 500)
    return _json({"values": values, "cursor": new_cursor, "hasMore": has_more})


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _unauthorized() -> web.Response:
    return _json({"code": "Unauthorized", "message": "this endpoint needs the admin key: send "
                  "'Authorization: Convex <admin key>'"}, 401)


async def test_connection(request: web.Request) -> web.Response:
    """GET /api/test_streaming_export_connection: 200 ``null`` with the admin key (connectors check this first)."""
    node: Node = request.app[NODE_KEY]
    if not node.admin.check(request.headers.get("Authorization")):
        return _unauthorized()
    return _json(None)


# ----------------------------------------------------------------- json_schemas


def json_schema_of(validator: Validator | None, encoded: bool) -> dict[str, Any]:
    """The JSON Schema of values `validator` accepts, as the export `format` writes them (`encoded`: Convex JSON)."""
    if validator is None or isinstance(validator, _Any):
        return {}
    if isinstance(validator, _Optional):
        return json_schema_of(validator.inner, encoded)
    if isinstance(validator, (_String, _Id)):
        return {"type": "string"}
    if isinstance(validator, _Number):
        return {"type": "number"}
    if isinstance(validator, _Boolean):
        return {"type": "boolean"}
    if isinstance(validator, _Null):
        return {"type": "null"}
    if isinstance(validator, (_Int64, _Bytes)):
        if not encoded:
            return {"type": "string"}
        key = "$integer" if isinstance(validator, _Int64) else "$bytes"
        return {"type": "object", "properties": {key: {"type": "string"}}, "required": [key],
                "additionalProperties": False}
    if isinstance(validator, _Literal):
        value = validator.value
        if type(value) is int:
            return json_schema_of(_Int64(), encoded)
        return {"const": value}
    if isinstance(validator, _Array):
        return {"type": "array", "items": json_schema_of(validator.item, encoded)}
    if isinstance(validator, _Record):
        return {"type": "object", "additionalProperties": json_schema_of(validator.value, encoded)}
    if isinstance(validator, _Union):
        return {"anyOf": [json_schema_of(m, encoded) for m in validator.members]}
    if isinstance(validator, _Object):
        return {"type": "object",
                "properties": {k: json_schema_of(f, encoded) for k, f in validator.fields.items()},
                "required": [k for k, f in validator.fields.items() if not isinstance(f, _Optional)],
                "additionalProperties": False}
    return {}


def table_json_schema(validator: Validator | None, encoded: bool, delta: bool) -> dict[str, Any]:
    """A table's document JSON Schema: its fields (from schema.py, or open), the system and change fields."""
    if isinstance(validator, _Object):
        schema = json_schema_of(validator, encoded)
    else:
        schema = {"type": "object", "properties": {}, "additionalProperties": True}
    schema["properties"] = {"_id": {"type": "string"}, "_creationTime": {"type": "number"}, **schema["properties"]}
    schema["required"] = ["_id", "_creationTime", *schema.get("required", [])]
    if delta:
        schema["properties"].update({"_table": {"type": "string"}, "_component": {"type": "string"},
                                     "_ts": {"type": "integer"}, "_deleted": {"type": "boolean"}})
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    return schema


async def json_schemas(request: web.Request) -> web.Response:
    """GET /api/json_schemas?deltaSchema=true&format=...: {table: JSON Schema} (connectors discover tables here)."""
    node: Node = request.app[NODE_KEY]
    if not node.admin.check(request.headers.get("Authorization")):
        return _unauthorized()
    fmt = request.query.get("format")
    try:
        _formatter(fmt)
    except StreamingExportError as exc:
        return _json({"code": exc.code, "message": str(exc)}, 400)
    encoded = fmt in ("convex_encoded_json", "convex_json")
    delta = request.query.get("deltaSchema", "").lower() in ("1", "true", "yes")
    schema = node.runtime.app.schema
    tables = sorted(t for t in set(node.runtime.projection.tables()) | set(schema.tables) if not t.startswith("_"))
    out = {}
    for table in tables:
        definition = schema.tables.get(table)
        out[table] = table_json_schema(definition.validator if definition else None, encoded, delta)
    return _json(out)


async def get_table_column_names(request: web.Request) -> web.Response:
    """GET /api/get_table_column_names: ``{"byComponent": {"": [{"name", "columns"}]}}`` (the Fivetran connector).

    Columns come from schema.py; for a table without a validator, from every
    top-level field its documents hold.
    """
    node: Node = request.app[NODE_KEY]
    if not node.admin.check(request.headers.get("Authorization")):
        return _unauthorized()
    schema = node.runtime.app.schema
    projection = node.runtime.projection
    out = []
    for table in sorted(t for t in set(projection.tables()) | set(schema.tables) if not t.startswith("_")):
        definition = schema.tables.get(table)
        columns = ["_id", "_creationTime"]
        if definition is not None and isinstance(definition.validator, _Object):
            columns += [c for c in definition.validator.fields if c not in columns]
        else:
            seen: dict[str, None] = {}
            for raw in projection.iter_documents(table):
                seen.update(dict.fromkeys(decode_doc(raw)))
            columns += sorted(c for c in seen if c not in columns)
        out.append({"name": table, "columns": columns})
    return _json({"byComponent": {"": out}})


def add_routes(app: web.Application) -> None:
    """Install the streaming-export endpoints."""
    app[_UNDO] = OrderedDict()
    for path, handler in (("/api/list_snapshot", list_snapshot), ("/api/document_deltas", document_deltas)):
        app.router.add_get(path, handler)
        app.router.add_post(path, handler)
    app.router.add_get("/api/test_streaming_export_connection", test_connection)
    app.router.add_get("/api/json_schemas", json_schemas)
    app.router.add_get("/api/get_table_column_names", get_table_column_names)


__all__ = ["add_routes", "document_deltas", "list_snapshot"]
