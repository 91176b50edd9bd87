"""Shopping lists: `lists:all` (live, newest first) and `lists:create`."""
from typing import Any

from engine import AppError, mutation, query, v


@query(args={})
async def all(ctx: Any) -> list[dict[str, Any]]:
    """Every list, newest first."""
    return await ctx.db.query("lists").order("desc").collect()


@mutation(args={"name": v.string()})
async def create(ctx: Any, name: str) -> str:
    """Create a list named `name` (surrounding whitespace dropped); returns its id."""
    name = name.strip()
    if not name:
        raise AppError({"code": "EMPTY_NAME"})
    return await ctx.db.insert("lists", {"name": name})
