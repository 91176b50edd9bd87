"""Items of a shopping list: list them live, add, check off and remove."""
from typing import Any

from engine import AppError, mutation, query, v


@query(args={"list_id": v.id("lists")})
async def list(ctx: Any, list_id: str) -> Any:
    """The items of one list, in insertion order."""
    return await ctx.db.query("items").with_index("by_list", lambda q: q.eq("list_id", list_id)).collect()


@mutation(args={"list_id": v.id("lists"), "text": v.string()})
async def add(ctx: Any, list_id: str, text: str) -> str:
    """Add an unchecked item; empty text is refused with `{"code": "EMPTY_TEXT"}`."""
    text = text.strip()
    if not text:
        raise AppError({"code": "EMPTY_TEXT"})
    if await ctx.db.get(list_id) is None:
        raise AppError({"code": "LIST_NOT_FOUND"})
    return await ctx.db.insert("items", {"list_id": list_id, "text": text, "done": False})


@mutation(args={"id": v.id("items")})
async def toggle(ctx: Any, id: str) -> bool:
    """Flip an item's `done` flag; returns the new value."""
    doc = await ctx.db.get(id)
    if doc is None:
        raise AppError({"code": "ITEM_NOT_FOUND"})
    done = not doc["done"]
    await ctx.db.patch(id, {"done": done})
    return done


@mutation(args={"id": v.id("items")})
async def remove(ctx: Any, id: str) -> None:
    """Delete an item (a no-op if it is already gone)."""
    if await ctx.db.get(id) is not None:
        await ctx.db.delete(id)
