"""The site: the app's HTTP actions (`http.py`) served on their own port, like Convex's site URL.

`tape dev` / `tape serve` serve the site next to the API, on
``ServerConfig.site_port`` (default: the API port + 1, so 3211 beside 3210).
Every path and method reaches `handle`, which matches the app's current
router (a reload under ``tape dev`` takes effect on the next request):

* no route: 404; routes for other methods only: 405 with ``Allow``;
* a ``Content-Length`` over ``ServerConfig.max_http_body_bytes``: 413 before
  the handler runs; a body that grows past it while read (chunked uploads)
  raises `PayloadTooLarge` in the handler (413 if not caught); the body must
  arrive within ``ServerConfig.body_timeout`` (408);
* ``Authorization: Bearer <JWT>`` is verified as the API verifies it
  (`gateway.auth`), giving ``ctx.auth``; any other header leaves the request
  anonymous with ``get_user_identity()`` raising (see `HttpAuth`);
* the handler runs on an action worker (`engine.http_runner`); its errors
  are answered 500 with a request id, the traceback goes to the server log.

Replicas serve the site too: a handler's ``ctx.run_mutation`` is forwarded to
the committer exactly as an action's is, queries read the replica's projection.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from engine.http_router import (BadRequestBody, BodySource, BytesBody, HttpRequestError, Match, PayloadTooLarge,
                                Request, RequestBodyTimeout, Response, Route)
from engine.http_runner import HttpAuth, StreamAborted, error_response, on_loop, run_http_action
from gateway.auth import AuthFailure, verifier_for
from gateway.config import NODE_KEY, ServerConfig
from gateway.http_api import BodyTimeout, body_deadline, one_line

if TYPE_CHECKING:
    from gateway.node import Node

log = logging.getLogger("tape.site")

CHUNK_BYTES = 1 << 16
PREREAD_BYTES = 1 << 16  # a body declared this small is read before the handler starts
_SERVER_SET = frozenset({"transfer-encoding", "connection", "keep-alive"})  # framing is the server's to decide


class _SiteBody:
    """The request body for a handler on a worker loop: each read hops to the server loop, counted against the limit."""

    def __init__(self, request: web.Request, limit: int) -> None:
        self._content = request.content
        self._limit = limit
        self._seen = 0
        self._loop = asyncio.get_running_loop()

    async def _chunk(self) -> bytes:
        try:
            chunk = await self._content.read(CHUNK_BYTES)
        except BodyTimeout as exc:
            raise RequestBodyTimeout(str(exc)) from None
        except (web.RequestPayloadError, HttpProcessingError) as exc:
            raise BadRequestBody(f"request body could not be read: {one_line(exc)}") from None
        self._seen += len(chunk)
        if self._seen > self._limit:
            raise PayloadTooLarge(f"request body is over the {self._limit} byte limit")
        return chunk

    async def read_all_here(self) -> bytes:
        """Everything not read yet, read on the server loop (the caller runs there)."""
        parts = []
        while chunk := await self._chunk():
            parts.append(chunk)
        return b"".join(parts)

    async def read_chunk(self) -> bytes:
        return await on_loop(self._loop, self._chunk())

    async def read_all(self) -> bytes:
        return await on_loop(self._loop, self.read_all_here())


class _Sender:
    """Sends a streamed response (`engine.http_runner.ResponseSender`); each call runs on the server loop."""

    def __init__(self, request: web.Request, extra: list[tuple[str, str]]) -> None:
        self._request = request
        self._extra = extra
        self.response: web.StreamResponse | None = None

    async def start(self, response: Response) -> None:
        stream = web.StreamResponse(status=response.status)
        for name, value in response.headers + self._extra:
            if name.lower() not in _SERVER_SET:  # (a Content-Length the handler gives is kept)
                stream.headers.add(name, value)
        self.response = stream
        await stream.prepare(self._request)

    async def write(self, chunk: bytes) -> None:
        assert self.response is not None
        await self.response.write(chunk)

    async def finish(self) -> None:
        assert self.response is not None
        await self.response.write_eof()


def _to_aiohttp(response: Response, extra: list[tuple[str, str]]) -> web.Response:
    out = web.Response(status=response.status, body=response.body)
    for name, value in response.headers + extra:
        if name.lower() not in _SERVER_SET and name.lower() != "content-length":
            out.headers.add(name, value)
    if response.status in (408, 413):
        out.force_close()  # the rest of the body may still be on its way
    return out


async def _auth(request: web.Request, node: "Node") -> HttpAuth:
    """`ctx.auth` for the request's ``Authorization`` header (see the module docstring)."""
    header = request.headers.get("Authorization")
    if not header:
        return HttpAuth(None)
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme != "Bearer" or not token:
        return HttpAuth(None, error="the Authorization header is not 'Bearer <JWT>'")
    verifier = verifier_for(node)
    try:
        verified = verifier.verify_now(token) or await verifier.verify(token)
    except AuthFailure as exc:
        return HttpAuth(None, error=f"Could not verify the Bearer token: {exc}")
    return HttpAuth(verified.identity)


def _cors_headers(match: Match, request: web.Request) -> list[tuple[str, str]]:
    if match.cors is None or request.method == "OPTIONS":
        return []  # (a preflight route answers with its own headers)
    return match.cors.response_headers(request.headers.get("Origin"))


async def handle(request: web.Request) -> web.StreamResponse:
    """Serve one request to the site: match the app's routes, run the handler, send its response."""
    node: Node = request.app[NODE_KEY]
    router = node.app.http
    match = router.match(request.method, request.path) if router is not None else Match(None)
    extra = _cors_headers(match, request)
    route: Route | None = match.route
    if route is None:
        if match.allowed:
            allow = ", ".join(match.allowed)
            return _to_aiohttp(error_response(405, "MethodNotAllowed", f"{request.method} is not routed for "
                                              f"{request.path} (allowed: {allow})"), extra + [("Allow", allow)])
        return _to_aiohttp(error_response(404, "NotFound", f"no HTTP action is routed for {request.method} "
                                          f"{request.path}"), extra)
    limit = node.config.max_http_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _to_aiohttp(error_response(413, "PayloadTooLarge", f"request body is {request.content_length} bytes, "
                                          f"over the {limit} byte limit"), extra)
    site_body = _SiteBody(request, limit)
    body: BodySource = site_body
    if request.content_length is not None and request.content_length <= PREREAD_BYTES:
        try:  # a small body is read here, sparing the handler a hop back to this loop to get it
            body = BytesBody(await site_body.read_all_here())
        except HttpRequestError as exc:
            return _to_aiohttp(error_response(exc.status, exc.code, str(exc)), extra)
    request_id = uuid.uuid4().hex[:16]
    incoming = Request(request.method, str(request.url), request.path, request.headers, request.query, body)
    sender = _Sender(request, extra)
    try:
        response = await run_http_action(node.runtime, route, incoming, await _auth(request, node), sender,
                                         request_id)
    except StreamAborted:
        if request.transport is not None:
            request.transport.close()  # the client must not take a cut body for a whole one
        assert sender.response is not None
        return sender.response
    if response is None:
        assert sender.response is not None
        return sender.response
    return _to_aiohttp(response, extra)


def build_site_app(node: "Node") -> web.Application:
    """The aiohttp app serving `node`'s HTTP actions (the node is started by the API app, not here)."""
    app = web.Application(middlewares=[body_deadline])
    app[NODE_KEY] = node
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def site_port(config: ServerConfig) -> int:
    """The port the site listens on: ``site_port``, or the API port + 1 when not set (0: no site)."""
    return config.port + 1 if config.site_port is None else config.site_port


__all__ = ["build_site_app", "handle", "site_port"]
