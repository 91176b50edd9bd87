"""Messages with full-text search."""
from typing import Any

from engine import mutation, query, v


@mutation(args={"items": v.array(v.object({"body": v.string(), "channel": v.string()}))})
async def send_many(ctx: Any, items: list[dict[str, Any]]) -> list[str]:
    return [await ctx.db.insert("messages", dict(item)) for item in items]


@mutation(args={"id": v.id("messages"), "body": v.string()})
async def edit(ctx: Any, id: str, body: str) -> None:
    await ctx.db.patch(id, {"body": body})


@mutation(args={"id": v.id("messages")})
async def remove(ctx: Any, id: str) -> None:
    await ctx.db.delete(id)


@query(args={"text": v.string(), "channel": v.optional(v.string())})
async def search(ctx: Any, text: str, channel: str | None = None) -> list[str]:
    def build(q: Any) -> Any:
        q = q.search("body", text)
        return q.eq("channel", channel) if channel is not None else q
    docs = await ctx.db.query("messages").with_search_index("search_body", build).take(20)
    return [d["_id"] for d in docs]
