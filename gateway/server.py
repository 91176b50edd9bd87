"""The aiohttp application: routes, static files, and running a node until Ctrl-C.

Slow or broken clients cannot hold the server (see `runner_options`): a
connection that has not sent a complete request header within
`ServerConfig.header_timeout` seconds of opening (or of its previous
response) is closed, a request body that has not arrived within
`ServerConfig.body_timeout` is answered 408 (`http_api.body_deadline`), and
requests aiohttp cannot parse or decode are logged as one line, not a traceback.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import sys
from typing import Any, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.config import NODE_KEY, ServerConfig
from gateway.cors import cors_middleware
from gateway import (admin_api, dashboard_api, health, http_api, logs_api, metrics, replica, storage_api,
                     streaming_export)
from gateway.node import Node
from gateway.site import build_site_app, site_port
from gateway.sync_session import handle_sync

log = logging.getLogger("tape.server")

BUNDLE_CANDIDATES = ("node_modules/convex/dist/browser.bundle.js",)


def build_app(node: Node) -> web.Application:
    """The aiohttp app for a node (the node is started/stopped by the app's lifecycle hooks)."""
    cors = cors_middleware(node.config.cors_origins, node.config.cors_max_age)  # public API routes only
    app = web.Application(client_max_size=node.config.max_message_bytes, middlewares=[cors, http_api.body_deadline])
    app[NODE_KEY] = node
    app.router.add_get("/api/sync", handle_sync)
    app.router.add_get("/api/{client_version}/sync", handle_sync)
    http_api.add_routes(app)
    replica.add_internal_routes(app)  # committer-only, admin-key protected
    admin_api.add_routes(app)
    dashboard_api.add_routes(app)  # /_dashboard and the admin endpoints it uses
    streaming_export.add_routes(app)  # /api/list_snapshot, /api/document_deltas (admin key)
    health.add_routes(app)  # GET /health: 200 or 503 with role, state, offset, lag
    metrics.add_routes(app, node)  # GET /metrics, admin key required
    logs_api.add_routes(app)  # GET /api/admin/logs: function log lines, streamed (admin key)
    storage_api.add_routes(app)  # file uploads and downloads (ctx.storage)
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


class ClientFaultLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, with a client's fault logged as one INFO line instead of a traceback.

    aiohttp logs every request it cannot parse or whose body it cannot decode
    (bad ``Content-Encoding``, say), and every client that vanished mid-request,
    with ``logger.exception``. Those are the client's doing: one line at INFO
    (seen with ``tape -v``) says what happened; anything else keeps its traceback.
    """

    CLIENT_FAULTS = (HttpProcessingError, web.RequestPayloadError, ConnectionError, http_api.BodyTimeout)

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1] if exc_info else None
        if isinstance(exc, self.CLIENT_FAULTS):
            self.logger.info(f"{msg}: %s", *args, http_api.one_line(exc))
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


SERVER_LOGGER = ClientFaultLogger(logging.getLogger("aiohttp.server"), {})


def runner_options(config: ServerConfig) -> dict[str, Any]:
    """Keyword arguments for `web.AppRunner` (or `TestServer.start_server`) serving a node with `config`.

    aiohttp arms its keep-alive timer when a connection opens and after each
    response, and closes the connection when it fires while no complete
    request has arrived - so `keepalive_timeout` bounds both the idle time of
    a kept-alive connection and the time to send a request header (a
    slowloris client trickling a header byte by byte is cut off after it).
    A WebSocket, once upgraded, is a running request and is not affected.
    `shutdown_timeout` bounds how long a stopping server waits for requests
    still running (an action may run for minutes: its caller gets a closed
    connection and may retry).
    """
    return {"keepalive_timeout": config.header_timeout, "logger": SERVER_LOGGER, "access_log": None,
            "shutdown_timeout": config.shutdown_timeout}


async def serve(node: Node, on_ready: Callable[[], None] | None = None) -> None:
    """Run the node's HTTP server until SIGINT/SIGTERM, then shut down cleanly."""
    # Slow user code runs on worker threads (engine.runtime, engine.committer); while one holds the GIL the
    # event loop waits for it up to one switch interval per turn: a short interval keeps I/O prompt.
    sys.setswitchinterval(node.config.switch_interval)
    app = build_app(node)
    runner = web.AppRunner(app, handle_signals=False, **runner_options(node.config))
    await runner.setup()
    site = web.TCPSite(runner, node.config.host, node.config.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise listen_error(node.config.host, node.config.port, exc) from None
    node.config.port = runner.addresses[0][1]  # the port it got when asked for port 0
    try:
        site_runner = await _start_site(node)
    except PortInUse:
        await runner.cleanup()
        raise
    try:
        metrics_runner = await _serve_metrics(node) if node.config.metrics_port is not None else None
    except (PortInUse, BadHost):
        if site_runner is not None:
            await site_runner.cleanup()
        await runner.cleanup()  # stops the node cleanly
        raise
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
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    if site_runner is not None:
        await site_runner.cleanup()
    await runner.cleanup()


async def _start_site(node: Node) -> web.AppRunner | None:
    """Serve the app's HTTP actions on the site port (`gateway.site`); sets `node.site_url`.

    A site port given explicitly that is taken is an error (`PortInUse`); the
    default one (API port + 1) being taken only disables HTTP actions, with a
    WARNING, so existing set-ups that use neighbouring ports keep working.
    """
    config = node.config
    port = site_port(config)
    if port == 0:
        return None
    runner = web.AppRunner(build_site_app(node), handle_signals=False, **runner_options(config))
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        message = f"cannot listen on {config.host}:{port} for HTTP actions: {exc.strerror or exc}"
        if config.site_port is not None:
            raise PortInUse(message + " (use --site-port to pick another port)") from None
        log.warning("%s: HTTP actions are not served (pass --site-port PORT)", message)
        return None
    node.site_url = f"http://{config.host}:{port}"
    return runner


async def _serve_metrics(node: Node) -> web.AppRunner:
    """Serve `GET /metrics` without the admin key on ``config.metrics_port`` (0: a free port, stored back)."""
    runner = web.AppRunner(metrics.metrics_app(node), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, node.config.host, node.config.metrics_port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise listen_error(node.config.host, node.config.metrics_port or 0, exc, option="--metrics-port") from None
    node.config.metrics_port = runner.addresses[0][1]
    return runner


class PortInUse(Exception):
    """The configured port is taken (or not ours to listen on)."""


class BadHost(Exception):
    """The configured host is not a name or address this machine can listen on."""


def listen_error(host: str, port: int, exc: OSError, option: str = "--port") -> PortInUse | BadHost:
    """The error that says why listening on host:port failed, and which option (`option`, --host) to change."""
    if isinstance(exc, socket.gaierror):
        return BadHost(f"cannot listen on host {host!r}: it is not an address or a name this machine resolves "
                       f"({exc.strerror or exc})")
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return BadHost(f"cannot listen on host {host}: no network interface of this machine has that address")
    if exc.errno == errno.EACCES:
        hint = f"ports below 1024 need root: pick another with {option}"
    elif exc.errno == errno.EADDRINUSE:
        hint = f"is another server running? Pick another port with {option} (0: any free port)"
    else:
        hint = f"pick another port with {option}"
    return PortInUse(f"cannot listen on {host}:{port}: {exc.strerror or exc} — {hint}")

