"""Functions of the vector search test app."""
from typing import Any

from engine import action, mutation, query, v


@mutation(args={"title": v.string(), "kind": v.string(), "embedding": v.optional(v.array(v.number()))})
async def add(ctx: Any, title: str, kind: str, embedding: list[float] | None = None) -> str:
    doc: dict[str, Any] = {"title": title, "kind": kind}
    if embedding is not None:
        doc["embedding"] = embedding
    return await ctx.db.insert("docs", doc)


@mutation(args={"rows": v.array(v.object({"title": v.string(), "kind": v.string(),
                                          "embedding": v.array(v.number())}))})
async def add_many(ctx: Any, rows: list[dict[str, Any]]) -> list[str]:
    return [await ctx.db.insert("docs", row) for row in rows]


@mutation(args={"id": v.id("docs"), "fields": v.any()})
async def patch(ctx: Any, id: str, fields: dict[str, Any]) -> None:
    await ctx.db.patch(id, fields)


@mutation(args={"id": v.id("docs")})
async def remove(ctx: Any, id: str) -> None:
    await ctx.db.delete(id)


@query(args={"ids": v.array(v.id("docs"))})
async def titles(ctx: Any, ids: list[str]) -> list[str | None]:
    out = []
    for doc_id in ids:
        doc = await ctx.db.get(doc_id)
        out.append(None if doc is None else doc["title"])
    return out


@action(args={"vector": v.array(v.number()), "limit": v.optional(v.number()), "kind": v.optional(v.string()),
              "kinds": v.optional(v.array(v.string()))})
async def similar(ctx: Any, vector: list[float], limit: float | None = None, kind: str | None = None,
                  kinds: list[str] | None = None) -> list[dict[str, Any]]:
    request: dict[str, Any] = {"vector": vector}
    if limit is not None:
        request["limit"] = limit
    if kind is not None:
        request["filter"] = lambda q: q.eq("kind", kind)
    elif kinds is not None:
        request["filter"] = lambda q: q.or_(*[q.eq("kind", k) for k in kinds])
    return await ctx.vector_search("docs", "by_embedding", request)


@action(args={"vector": v.array(v.number())})
async def similar_titles(ctx: Any, vector: list[float]) -> list[str]:
    """Search, then load the documents with a query (the Convex pattern)."""
    hits = await ctx.vector_search("docs", "by_embedding", {"vector": vector, "limit": 3})
    return await ctx.run_query("docs:titles", {"ids": [h["_id"] for h in hits]})


@action(args={"table": v.string(), "index": v.string(), "request": v.any()})
async def raw_search(ctx: Any, table: str, index: str, request: Any) -> Any:
    return await ctx.vector_search(table, index, request)


@query(args={})
async def search_in_query(ctx: Any) -> Any:
    return await ctx.vector_search("docs", "by_embedding", {"vector": [1.0] * 8})


@mutation(args={})
async def search_in_mutation(ctx: Any) -> Any:
    return await ctx.vector_search("docs", "by_embedding", {"vector": [1.0] * 8})


@action(args={"mode": v.string()})
async def bad_filter(ctx: Any, mode: str) -> Any:
    filters: dict[str, Any] = {
        "field": lambda q: q.eq("title", "x"),
        "returns": lambda q: 3,
        "not_callable": 5,
        "or_of_junk": lambda q: q.or_(q.eq("kind", "a"), "b"),
    }
    return await ctx.vector_search("docs", "by_embedding", {"vector": [1.0] * 8, "filter": filters[mode]})
