"""HTTP actions of the site tests: a webhook, echo routes, streaming, errors, auth, CORS."""
import asyncio
import time

from engine import HttpRouter, Response, http_action

from .events import record

http = HttpRouter()


@http_action
async def webhook(ctx, request):
    event = await request.json()
    event_id = await ctx.run_mutation(record, {"kind": event["type"], "amount": event["amount"]})
    return Response.json({"received": event_id})


@http_action
async def echo(ctx, request):
    return Response({
        "method": request.method, "path": request.path, "url": request.url,
        "query": dict(request.query), "header": request.headers.get("x-test"),
        "text": await request.text(),
    }, headers={"X-Echo": "yes"})


@http_action
async def exact(ctx, request):
    return Response("exact")


@http_action
async def numbers(ctx, request):
    count = int(request.query.get("n", "3"))

    async def chunks():
        for i in range(count):
            await asyncio.sleep(0)
            yield f"{i}\n"
    return Response(chunks(), headers={"Content-Type": "text/plain"})


@http_action
async def forever(ctx, request):
    async def chunks():
        while True:
            yield b"." * 1024
            await asyncio.sleep(0.001)
    return Response(chunks())


@http_action
async def framing(ctx, request):
    """Framing headers the server must decide itself, and a bodiless status with a streamed body."""
    if request.query.get("stream"):
        async def chunks():
            yield b"never sent"
        return Response(chunks(), status=304)
    return Response("four", headers={"Content-Length": "999", "Transfer-Encoding": "chunked", "X-Kept": "1"})


@http_action
async def count_body(ctx, request):
    chunks = size = 0
    async for chunk in request.stream():
        chunks += 1
        size += len(chunk)
    return Response({"chunks": chunks, "bytes": size})


@http_action
async def boom(ctx, request):
    raise RuntimeError("secret internals")


@http_action
async def not_a_response(ctx, request):
    return {"plain": "dict"}


@http_action
async def whoami(ctx, request):
    try:
        identity = await ctx.auth.get_user_identity()
    except Exception as exc:
        return Response({"error": str(exc)}, status=401)
    return Response.json({"identity": identity, "query": await ctx.run_query("whoami:me", {})})


@http_action
async def spin(ctx, request):
    deadline = time.perf_counter() + float(request.query.get("seconds", "0.5"))
    while time.perf_counter() < deadline:
        pass
    return Response("spun")


@http_action
async def data(ctx, request):
    return Response.json({"ok": True})


http.route(path="/stripe/webhook", method="POST", handler=webhook)
http.route(path_prefix="/echo/", method="GET", handler=echo)
http.route(path_prefix="/echo/", method="POST", handler=echo)
http.route(path="/echo/exact", method="GET", handler=exact)
http.route(path="/numbers", method="GET", handler=numbers)
http.route(path="/forever", method="GET", handler=forever)
http.route(path="/framing", method="GET", handler=framing)
http.route(path="/count", method="POST", handler=count_body)
http.route(path="/boom", method="GET", handler=boom)
http.route(path="/not-a-response", method="GET", handler=not_a_response)
http.route(path="/whoami", method="GET", handler=whoami)
http.route(path="/spin", method="GET", handler=spin)
http.route(path_prefix="/api/", method="GET", handler=data)
http.cors(path_prefix="/api/", origins=["https://app.example.com"])
