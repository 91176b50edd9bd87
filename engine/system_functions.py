"""Built-in admin functions under ``_system/dashboard:*``: what the web dashboard reads and writes.

They run like app functions (so a dashboard subscribes to them over the sync
protocol and sees rows change live, and time travel evaluates them as of any
moment), but only for the admin: any other caller gets an error. The queries
read any table, system tables included; the mutations write user tables with
the schema's validation, as a mutation would, and are logged under their path.
"""
from __future__ import annotations

from typing import Any

from engine.context import MutationCtx, QueryCtx, is_admin
from engine.db import QueryBuilder
from engine.errors import ArgumentError, EngineError
from engine.functions import FunctionDef, mutation, query
from engine.validators import Validator, v
from values import table_of

SYSTEM_PREFIX = "_system/"
MAX_PAGE = 500


def _require_admin(ctx: QueryCtx | MutationCtx) -> None:
    if not is_admin(ctx.auth.identity):
        raise EngineError("_system functions need the admin key")


def _check_field(field: Any) -> str:
    if type(field) is not str or not field:
        raise ArgumentError(f"filter.field: expected a field name, got {field!r}")
    return field


def _field_value(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


@query(args={"table": v.string(), "paginationOpts": v.any(), "index": v.optional(v.string()),
             "order": v.optional(v.union(v.literal("asc"), v.literal("desc"))),
             "filter": v.optional(v.object({"field": v.string(), "value": v.any()}))})
async def documents(ctx: QueryCtx, table: str, paginationOpts: dict[str, Any], index: str | None = None,
                    order: str | None = None, filter: dict[str, Any] | None = None) -> dict[str, Any]:
    """One page of any table (system tables too) through an index, optionally where `field` equals `value`."""
    _require_admin(ctx)
    if type(paginationOpts) is dict and type(paginationOpts.get("numItems")) in (int, float) \
            and paginationOpts["numItems"] > MAX_PAGE:
        raise ArgumentError(f"paginationOpts.numItems: at most {MAX_PAGE} rows per page")
    builder = QueryBuilder(ctx.db._tx, table).with_index(index or "by_creation_time").order(order or "asc")
    if filter is not None:
        field, wanted = _check_field(filter["field"]), filter["value"]
        builder = builder.filter(lambda doc: _field_value(doc, field) == wanted)
    return await builder.paginate(paginationOpts)


@query(args={"table": v.string()})
async def count(ctx: QueryCtx, table: str) -> int:
    """How many documents `table` holds (reads them all: for the dashboard's table list)."""
    _require_admin(ctx)
    return len(QueryBuilder(ctx.db._tx, table).collect_now())


@query(args={"id": v.string()})
async def get(ctx: QueryCtx, id: str) -> dict[str, Any] | None:
    """The document with this id, in any table."""
    _require_admin(ctx)
    table = table_of(id)
    if table is None:
        raise ArgumentError(f"id: {id!r} is not a document id")
    found = QueryBuilder(ctx.db._tx, table).with_index("by_id", lambda q: q.eq("_id", id)).collect_now()
    return found[0] if found else None


@mutation(args={"table": v.string(), "document": v.any()})
async def insert(ctx: MutationCtx, table: str, document: Any) -> str:
    """Insert `document` into user table `table` (validated by the schema); returns the new id."""
    _require_admin(ctx)
    return await ctx.db.insert(table, document)


@mutation(args={"id": v.string(), "fields": v.any()})
async def patch(ctx: MutationCtx, id: str, fields: Any) -> None:
    """Set these fields of a user document (a field given as null stays null: use replace to drop one)."""
    _require_admin(ctx)
    await ctx.db.patch(id, fields)


@mutation(args={"id": v.string(), "document": v.any()})
async def replace(ctx: MutationCtx, id: str, document: Any) -> None:
    """Replace a user document's fields (its `_id` and `_creationTime` stay; given ones are ignored)."""
    _require_admin(ctx)
    if type(document) is not dict:
        raise ArgumentError(f"document: expected an object, got {type(document).__name__}")
    await ctx.db.replace(id, {k: val for k, val in document.items() if k not in ("_id", "_creationTime")})


@mutation(args={"id": v.string()})
async def delete(ctx: MutationCtx, id: str) -> None:
    """Delete a user document."""
    _require_admin(ctx)
    await ctx.db.delete(id)


@mutation(args={"id": v.string()})
async def cancel_job(ctx: MutationCtx, id: str) -> None:
    """Cancel a pending (or running) scheduled function."""
    _require_admin(ctx)
    assert ctx.scheduler is not None
    await ctx.scheduler.cancel(id)


def _registry() -> dict[str, FunctionDef]:
    functions: dict[str, FunctionDef] = {}
    for name, fn in (("documents", documents), ("count", count), ("get", get), ("insert", insert),
                     ("patch", patch), ("replace", replace), ("delete", delete), ("cancelJob", cancel_job)):
        fn.path = f"{SYSTEM_PREFIX}dashboard:{name}"
        functions[fn.path] = fn
    return functions


SYSTEM_FUNCTIONS: dict[str, FunctionDef] = _registry()
"""The built-in functions by path (`App.function` falls back to these for ``_system/`` paths)."""


def validator_json(validator: Validator | None) -> Any:
    """A JSON description of a validator, in the shape of Convex's (`{"type": "string"}`, ...)."""
    if validator is None:
        return None
    kind = validator.kind
    if kind == "object":
        fields = getattr(validator, "fields")
        return {"type": "object", "value": {k: {"fieldType": validator_json(f), "optional": bool(f.optional)}
                                            for k, f in fields.items()}}
    if kind == "optional":
        return validator_json(getattr(validator, "inner"))
    if kind == "array":
        return {"type": "array", "value": validator_json(getattr(validator, "item"))}
    if kind == "record":
        return {"type": "record", "keys": validator_json(getattr(validator, "key")),
                "values": {"fieldType": validator_json(getattr(validator, "value")), "optional": False}}
    if kind == "union":
        return {"type": "union", "value": [validator_json(m) for m in getattr(validator, "members")]}
    if kind == "literal":
        return {"type": "literal", "value": getattr(validator, "value")}
    if kind == "id":
        return {"type": "id", "tableName": getattr(validator, "table")}
    return {"type": "number" if kind.startswith("number") or kind == "float64" else kind}
