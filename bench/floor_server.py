"""The raw broadcast floor: a tiny aiohttp WebSocket server that only forwards bytes.

Subscribers connect to ``/sub``; a trigger client connects to ``/trigger``.
Every text message the trigger sends is written, unchanged, to every
subscriber socket in turn (``send_frame`` straight from the handler: no
queues, no JSON, no query). The benchmark sends the exact bytes of a
Transition Tape delivered, so the floor and Tape move the same payload to
the same number of sockets, read by the same client code. Runs with uvloop,
like the Tape server.

``python -m bench.floor_server --port P``
"""
from __future__ import annotations

import argparse
import asyncio
from typing import Any


def build_app() -> Any:
    from aiohttp import WSMsgType, web
    subscribers: list[Any] = []

    async def sub(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, heartbeat=None)
        await ws.prepare(request)
        subscribers.append(ws)
        try:
            async for _ in ws:
                pass
        finally:
            subscribers.remove(ws)
        return ws

    async def trigger(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, heartbeat=None, max_msg_size=64 << 20)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            data = msg.data.encode()
            for target in list(subscribers):
                try:
                    await target.send_frame(data, WSMsgType.TEXT)
                except (ConnectionError, RuntimeError):
                    pass
        return ws

    async def version(_: web.Request) -> web.Response:
        return web.Response(text=f"broadcast floor: {len(subscribers)} subscribers")

    app = web.Application()
    app.router.add_get("/sub", sub)
    app.router.add_get("/trigger", trigger)
    app.router.add_get("/version", version)
    return app


def main(argv: list[str] | None = None) -> None:
    from aiohttp import web
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover
        pass
    web.run_app(build_app(), host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
