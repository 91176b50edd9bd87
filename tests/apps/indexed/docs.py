"""Documents with a 4-dimensional embedding and vector search."""
from typing import Any

from engine import action, mutation, v


@mutation(args={"rows": v.array(v.object({"title": v.string(), "kind": v.string(),
                                          "embedding": v.array(v.number())}))})
async def add_many(ctx: Any, rows: list[dict[str, Any]]) -> list[str]:
    return [await ctx.db.insert("docs", dict(row)) for row in rows]


@mutation(args={"id": v.id("docs"), "embedding": v.array(v.number())})
async def move(ctx: Any, id: str, embedding: list[float]) -> None:
    await ctx.db.patch(id, {"embedding": embedding})


@mutation(args={"id": v.id("docs")})
async def remove(ctx: Any, id: str) -> None:
    await ctx.db.delete(id)


@action(args={"vector": v.array(v.number()), "kind": v.optional(v.string())})
async def similar(ctx: Any, vector: list[float], kind: str | None = None) -> list[str]:
    request: dict[str, Any] = {"vector": vector, "limit": 8}
    if kind is not None:
        request["filter"] = lambda q: q.eq("kind", kind)
    return [hit["_id"] for hit in await ctx.vector_search("docs", "by_embedding", request)]
