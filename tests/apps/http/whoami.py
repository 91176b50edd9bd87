from engine import query


@query(args={})
async def me(ctx):
    return await ctx.auth.get_user_identity()
