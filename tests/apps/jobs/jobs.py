"""Scheduler test app: jobs that log events, chains, failures, cancels and sub-transactions."""
import asyncio
import time

from engine import AppError, action, internal_action, internal_mutation, mutation, query, v


@internal_mutation(args={"tag": v.string()})
async def record(ctx, tag):
    """Log one event (a scheduled mutation's visible effect)."""
    return await ctx.db.insert("events", {"tag": tag})


@mutation(args={"ms": v.number()})
async def busy(ctx, ms):
    """Keep the writer busy for `ms` milliseconds (tests queue work behind it)."""
    end = time.monotonic() + ms / 1000.0
    while time.monotonic() < end:
        pass


@mutation(args={"delay_ms": v.number(), "tag": v.string()})
async def schedule(ctx, delay_ms, tag):
    return await ctx.scheduler.run_after(delay_ms, record, {"tag": tag})


@mutation(args={"count": v.number(), "delay_ms": v.number()})
async def schedule_many(ctx, count, delay_ms):
    return [await ctx.scheduler.run_after(delay_ms, "jobs:record", {"tag": f"m{i}"}) for i in range(int(count))]


@mutation(args={"tag": v.string()})
async def schedule_then_throw(ctx, tag):
    await ctx.scheduler.run_after(0, record, {"tag": tag})
    raise AppError({"code": "NOPE"})


@mutation(args={"delay_ms": v.number(), "tag": v.string(), "sleep": v.number()})
async def schedule_action(ctx, delay_ms, tag, sleep):
    return await ctx.scheduler.run_after(delay_ms, work, {"tag": tag, "sleep": sleep})


@mutation(args={"count": v.number(), "sleep": v.number()})
async def schedule_actions(ctx, count, sleep):
    return [await ctx.scheduler.run_after(0, work, {"tag": f"a{i}", "sleep": sleep}) for i in range(int(count))]


@internal_action(args={"tag": v.string(), "sleep": v.number()})
async def work(ctx, tag, sleep):
    """An action that 'calls out' (sleeps), then records its result through a mutation."""
    await ctx.run_mutation("jobs:record", {"tag": tag + ":started"})
    await asyncio.sleep(sleep)
    await ctx.run_mutation("jobs:record", {"tag": tag})
    return tag


@internal_action(args={})
async def broken_action(ctx):
    raise AppError("action failed")


@mutation(args={})
async def schedule_broken_action(ctx):
    return await ctx.scheduler.run_after(0, broken_action, {})


@mutation(args={"job_id": v.string()})
async def cancel(ctx, job_id):
    await ctx.scheduler.cancel(job_id)


@internal_mutation(args={"n": v.number()})
async def chain(ctx, n):
    await ctx.db.insert("events", {"tag": f"chain{int(n)}"})
    if n > 0:
        await ctx.scheduler.run_after(0, chain, {"n": n - 1})


@mutation(args={"n": v.number()})
async def start_chain(ctx, n):
    return await ctx.scheduler.run_after(0, chain, {"n": n})


@internal_mutation(args={})
async def failing(ctx):
    await ctx.db.insert("events", {"tag": "should-not-exist"})
    raise AppError("job failed on purpose")


@mutation(args={})
async def schedule_failing(ctx):
    return await ctx.scheduler.run_after(0, failing, {})


@action(args={"tag": v.string()})
async def schedule_from_action(ctx, tag):
    job = await ctx.scheduler.run_after(0, record, {"tag": tag})
    return job


@action(args={"job_id": v.string()})
async def cancel_from_action(ctx, job_id):
    await ctx.scheduler.cancel(job_id)


@query(args={"job_id": v.string()})
async def job(ctx, job_id):
    return await ctx.db.system.get(job_id)


@query(args={})
async def jobs(ctx):
    return await ctx.db.system.query("_scheduled_functions").collect()


@query(args={})
async def events(ctx):
    return [e["tag"] for e in await ctx.db.query("events").collect()]


@query(args={})
async def peek_requests(ctx):
    return await ctx.db.query("_requests").collect()


@query(args={"job_id": v.string()})
async def peek_job_directly(ctx, job_id):
    return await ctx.db.get(job_id)


@query(args={})
async def count_events(ctx):
    return len(await ctx.db.query("events").collect())


@mutation(args={"fail_inner": v.boolean()})
async def sub_calls(ctx, fail_inner):
    """Writes, then a sub-mutation (which sees the write), then a sub-query that sees both."""
    await ctx.db.insert("events", {"tag": "outer"})
    try:
        await ctx.run_mutation(inner, {"fail": fail_inner})
    except AppError:
        pass
    return await ctx.run_query(count_events, {})


@internal_mutation(args={"fail": v.boolean()})
async def inner(ctx, fail):
    seen = len(await ctx.db.query("events").collect())
    await ctx.db.insert("events", {"tag": f"inner-saw-{seen}"})
    if fail:
        raise AppError("inner failed")


@mutation(args={"prefix": v.string(), "count": v.number(), "span_ms": v.number(), "sleep": v.number()})
async def schedule_spread(ctx, prefix, count, span_ms, sleep):
    """`count` mutations and `count` actions, due evenly over the next `span_ms` ms."""
    for i in range(int(count)):
        delay = span_ms * i / max(1, count)
        await ctx.scheduler.run_after(delay, record, {"tag": f"{prefix}m{i}"})
        await ctx.scheduler.run_after(delay, work, {"tag": f"{prefix}a{i}", "sleep": sleep})


@mutation(args={"count": v.number(), "at_ms": v.number()})
async def schedule_at(ctx, count, at_ms):
    """`count` scheduled `record` mutations, all due at `at_ms` (the scheduler benchmark)."""
    for i in range(int(count)):
        await ctx.scheduler.run_at(at_ms, record, {"tag": f"b{i}"})


@query(args={})
async def peek_requests_system(ctx):
    return await ctx.db.system.query("_requests").collect()
