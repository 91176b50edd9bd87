"""Functions of the storage benchmark: upload URLs in batches (so the timed part is the file transfer)."""
from engine import mutation, v


@mutation(args={"count": v.number()})
async def upload_urls(ctx, count: float) -> list:
    """`count` fresh single-use upload URLs."""
    return [await ctx.storage.generate_upload_url() for _ in range(int(count))]
