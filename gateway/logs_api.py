"""``GET /api/admin/logs``: function logs, live, for ``tape logs`` (admin key required).

Every finished call that printed or logged something, or failed, is one
entry (`engine.function_logs.LogEntry`): ``{"ts", "requestId", "path",
"kind", "logLines", "error"?}``. The answer is NDJSON, one entry per line:
first the last ``history`` entries the server keeps (default 0), then, with
``follow=1`` (the default), every new one as calls finish, until the client
goes away. ``function=PATH`` (repeatable) keeps only those functions; a
value without ``:`` names a whole module. A client that reads too slowly
loses entries rather than holding memory: a line ``{"dropped": N}`` says how
many.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from engine.app import normalize_path
from engine.function_logs import LogEntry
from gateway.config import NODE_KEY

if TYPE_CHECKING:
    from gateway.node import Node

QUEUE_LIMIT = 10000  # entries waiting for one slow reader before they are dropped
POLL_SECONDS = 1.0  # how often an idle stream checks that its client is still there
_STREAMS: "web.AppKey[set[asyncio.Task[Any]]]" = web.AppKey("tape.logs.streams", set)


def _json(body: Any, status: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def path_filter(names: list[str]) -> Any:
    """A predicate on function paths: exact paths, or whole modules for names without ``:``."""
    if not names:
        return lambda path: True
    exact = {normalize_path(n) for n in names if ":" in n}
    modules = {n.removesuffix(".py") for n in names if ":" not in n}
    return lambda path: path in exact or path.partition(":")[0] in modules


async def logs(request: web.Request) -> web.StreamResponse:
    """GET /api/admin/logs (see the module docstring)."""
    node: Node = request.app[NODE_KEY]
    if not node.admin.check(request.headers.get("Authorization")):
        return _json({"code": "Unauthorized", "message": "this endpoint needs the admin key "
                                                         "(Authorization: Convex <admin key>)"}, 401)
    q = request.query
    try:
        history = int(q.get("history", "0"))
        if history < 0:
            raise ValueError
    except ValueError:
        return _json({"code": "BadRequest", "message": f"history: expected a count >= 0, got {q.get('history')!r}"},
                     400)
    follow = q.get("follow", "1").lower() not in ("0", "false", "no", "off")
    wanted = path_filter(q.getall("function", []))
    stream = node.runtime.function_logs
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[LogEntry] = asyncio.Queue(QUEUE_LIMIT)
    dropped = 0

    def receive(entry: LogEntry) -> None:
        nonlocal dropped
        if not wanted(entry.path):
            return
        try:
            queue.put_nowait(entry)
        except asyncio.QueueFull:
            dropped += 1

    stop = stream.listen(receive, loop) if follow else (lambda: None)
    streams = request.app[_STREAMS]
    task = asyncio.current_task()
    if task is not None:
        streams.add(task)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
    try:
        await resp.prepare(request)
        past = [e for e in stream.recent(history) if wanted(e.path)]
        if past:
            await resp.write(b"".join(orjson.dumps(e.to_json()) + b"\n" for e in past))
        while follow:
            try:
                entry = await asyncio.wait_for(queue.get(), POLL_SECONDS)
            except asyncio.TimeoutError:
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                continue
            lines = [orjson.dumps(entry.to_json())]
            while not queue.empty():
                lines.append(orjson.dumps(queue.get_nowait().to_json()))
            if dropped:
                lines.append(orjson.dumps({"dropped": dropped}))
                dropped = 0
            await resp.write(b"\n".join(lines) + b"\n")
        if not follow:
            await resp.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        stop()
        if task is not None:
            streams.discard(task)
    return resp


async def _on_shutdown(app: web.Application) -> None:
    for task in list(app[_STREAMS]):
        task.cancel()


def add_routes(app: web.Application) -> None:
    """Register ``GET /api/admin/logs``."""
    app[_STREAMS] = set()
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/api/admin/logs", logs)
