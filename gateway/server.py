"""The aiohttp application: routes, static files, and running a node until Ctrl-C."""
from __future__ import annotations

import asyncio
import logging
import signal
from typing import Callable

from aiohttp import web

from gateway.config import NODE_KEY
from gateway import http_api, replica
from gateway.node import Node
from gateway.sync_session import handle_sync

log = logging.getLogger("tape.server")

BUNDLE_CANDIDATES = ("node_modules/convex/dist/browser.bundle.js",)


def build_app(node: Node) -> web.Application:
    """The aiohttp app for a node (the node is started/stopped by the app's lifecycle hooks)."""
    app = web.Application(client_max_size=node.config.max_message_bytes)
    app[NODE_KEY] = node
    app.router.add_get("/api/sync", handle_sync)
    app.router.add_get("/api/{client_version}/sync", handle_sync)
    http_api.add_routes(app)
    replica.add_internal_routes(app)  # committer-only, admin-key protected
    try:
        from gateway import admin_api
        admin_api.add_routes(app)
    except ImportError:
        pass
    static = node.config.static_dir or (node.config.app_dir / "public")
    bundle = next((node.config.app_dir / c for c in BUNDLE_CANDIDATES if (node.config.app_dir / c).exists()), None)
    if bundle is not None:
        async def convex_bundle(_: web.Request) -> web.FileResponse:
            return web.FileResponse(bundle, headers={"Content-Type": "application/javascript"})
        app.router.add_get("/convex.bundle.js", convex_bundle)
    if static.is_dir():
        index = static / "index.html"

        async def root(_: web.Request) -> web.StreamResponse:
            return web.FileResponse(index)
        if index.exists():
            app.router.add_get("/", root)
        app.router.add_static("/", static, show_index=False)

    async def on_startup(_: web.Application) -> None:
        await node.start()

    async def on_shutdown(_: web.Application) -> None:
        await node.stop()
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


async def serve(node: Node, on_ready: Callable[[], None] | None = None) -> None:
    """Run the node's HTTP server until SIGINT/SIGTERM, then shut down cleanly."""
    app = build_app(node)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, node.config.host, node.config.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise PortInUse(f"cannot listen on {node.config.host}:{node.config.port}: {exc.strerror or exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    if on_ready is not None:
        on_ready()
    await stop.wait()
    await runner.cleanup()


class PortInUse(Exception):
    """The configured port is taken."""

