"""Functions that show who is calling (the auth tests copy this app and add an auth.config.py)."""
import time

from engine import AppError, action, internal_query, mutation, query, v


@query(args={})
async def me(ctx):
    return await ctx.auth.get_user_identity()


@query(args={})
async def slow_me(ctx):
    """Like `me`, but slower than the event loop's slice: its session is served off the loop."""
    deadline = time.perf_counter() + 0.05
    while time.perf_counter() < deadline:
        pass
    return await ctx.auth.get_user_identity()


@query(args={})
async def is_admin(ctx):
    return ctx.auth.is_admin


@mutation(args={})
async def me_in_mutation(ctx):
    return await ctx.auth.get_user_identity()


@mutation(args={"text": v.string()})
async def post(ctx, text):
    identity = await ctx.auth.get_user_identity()
    if identity is None:
        raise AppError({"code": "UNAUTHENTICATED"})
    return await ctx.db.insert("notes", {"owner": identity["tokenIdentifier"], "text": text})


@query(args={})
async def mine(ctx):
    """The caller's own notes: every user reads the same path and sees only theirs."""
    identity = await ctx.auth.get_user_identity()
    if identity is None:
        return []
    notes = await ctx.db.query("notes").with_index("by_owner", lambda q: q.eq("owner", identity["tokenIdentifier"])) \
        .collect()
    return [n["text"] for n in notes]


@action(args={})
async def me_everywhere(ctx):
    """The identity as an action sees it, and as the query and mutation it runs see it."""
    return {
        "action": await ctx.auth.get_user_identity(),
        "query": await ctx.run_query("whoami:me", {}),
        "mutation": await ctx.run_mutation("whoami:me_in_mutation", {}),
    }


@internal_query(args={})
async def secret(ctx):
    return {"secret": 42.0, "identity": await ctx.auth.get_user_identity()}
