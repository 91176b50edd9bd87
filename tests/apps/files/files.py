"""A test app for file storage: upload URLs, saving ids, URLs, actions storing and reading bytes."""
import time

from engine import action, mutation, query, v


@mutation(args={})
async def generate_upload_url(ctx):
    return await ctx.storage.generate_upload_url()


@mutation(args={"storage_id": v.id("_storage"), "name": v.string()})
async def save(ctx, storage_id, name):
    return await ctx.db.insert("files", {"storage_id": storage_id, "name": name})


@query(args={})
async def listing(ctx):
    out = []
    for row in await ctx.db.query("files").collect():
        meta = await ctx.db.system.get(row["storage_id"])
        out.append({"name": row["name"], "storage_id": row["storage_id"],
                    "url": await ctx.storage.get_url(row["storage_id"]),
                    "size": meta["size"] if meta else None,
                    "contentType": meta.get("contentType") if meta else None})
    return out


@query(args={"storage_id": v.id("_storage")})
async def url(ctx, storage_id):
    return await ctx.storage.get_url(storage_id)


@query(args={})
async def stored(ctx):
    return await ctx.db.system.query("_storage").collect()


@mutation(args={"storage_id": v.id("_storage")})
async def remove(ctx, storage_id):
    await ctx.storage.delete(storage_id)


@action(args={"text": v.string()})
async def store_text(ctx, text):
    storage_id = await ctx.storage.store(text.encode(), "text/plain")
    return {"id": storage_id, "url": await ctx.storage.get_url(storage_id)}


@action(args={"storage_id": v.id("_storage")})
async def read_text(ctx, storage_id):
    data = await ctx.storage.get(storage_id)
    return None if data is None else data.decode()


@action(args={"storage_id": v.id("_storage")})
async def delete_in_action(ctx, storage_id):
    await ctx.storage.delete(storage_id)


@action(args={})
async def upload_url_in_action(ctx):
    return await ctx.storage.generate_upload_url()


@mutation(args={"seconds": v.number()})
async def hold_writer(ctx, seconds):
    """Keeps the single writer busy (the SIGKILL test queues an upload's commit behind it)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return seconds
