"""CORS for the public HTTP API, so the official `ConvexHttpClient` works from a page on any origin.

A browser page served from another origin (another host or port) may only
call the API if the server says so. Calls carry tokens (``Authorization``),
never cookies, so by default every origin is allowed
(``ServerConfig.cors_origins = ("*",)``); a list of origins
(``("https://app.example.com",)``) allows only those, and ``()`` turns CORS
off. Only the public function routes (`PUBLIC_PATHS`) answer:

* a preflight ``OPTIONS`` gets 204 with ``Access-Control-Allow-Origin``,
  ``-Allow-Methods`` (POST), ``-Allow-Headers`` (the headers the client sends:
  ``Content-Type``, ``Authorization``, ``Convex-Client``, ``Idempotency-Key``)
  and ``-Max-Age`` (``ServerConfig.cors_max_age``); from an origin not in a
  configured list it gets 403 with a one-line ``{"code", "message"}`` body;
* every other response on those routes (errors included) carries
  ``Access-Control-Allow-Origin``, plus ``Vary: Origin`` when a list is
  configured (the answer then depends on the caller's origin).

Admin (``/api/admin/*``), internal (``/api/internal/*``) and every other route
never get CORS headers: a browser page on another origin cannot read them. The
sync WebSocket needs none (browsers do not apply CORS to WebSockets).
"""
from __future__ import annotations

from typing import Awaitable, Callable, Sequence

import orjson
from aiohttp import web

PUBLIC_PATHS = frozenset({
    "/api/query", "/api/mutation", "/api/action", "/api/function", "/api/query_ts", "/api/query_at_ts",
})
ALLOW_METHODS = "POST, OPTIONS"
ALLOW_HEADERS = "Content-Type, Authorization, Convex-Client, Idempotency-Key"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CorsPolicy:
    """Which origins may call the public API from a browser, and the headers that say so."""

    def __init__(self, origins: Sequence[str], max_age: int) -> None:
        self.any_origin = "*" in origins
        self.origins = frozenset(o.rstrip("/") for o in origins if o != "*")
        self.enabled = self.any_origin or bool(self.origins)
        self.max_age = max(0, int(max_age))

    def allow_origin(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for a request from `origin` (None: not allowed)."""
        if self.any_origin:
            return "*"
        if origin is not None and origin in self.origins:
            return origin
        return None

    def decorate(self, response: "web.StreamResponse | web.HTTPException", origin: str | None) -> None:
        """Add the CORS headers of an actual (non-preflight) response."""
        target = response.headers
        allowed = self.allow_origin(origin)
        if allowed is not None:
            target["Access-Control-Allow-Origin"] = allowed
        if not self.any_origin:
            target.add("Vary", "Origin")

    def preflight(self, request: web.Request) -> web.Response:
        """The answer to ``OPTIONS`` on a public route."""
        origin = request.headers.get("Origin")
        allowed = self.allow_origin(origin)
        vary = {} if self.any_origin else {"Vary": "Origin"}
        if allowed is None:
            message = (f"origin {origin!r} may not call this API from a browser "
                       f"(allowed: {', '.join(sorted(self.origins))})")
            return web.Response(status=403, content_type="application/json", headers=vary,
                                body=orjson.dumps({"code": "CorsOriginNotAllowed", "message": message}))
        return web.Response(status=204, headers={
            **vary,
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": str(self.max_age),
            "Allow": ALLOW_METHODS,
        })


def cors_middleware(origins: Sequence[str], max_age: int) -> Callable[[web.Request, Handler],
                                                                     Awaitable[web.StreamResponse]]:
    """An aiohttp middleware applying `CorsPolicy(origins, max_age)` to `PUBLIC_PATHS` (install it first)."""
    policy = CorsPolicy(origins, max_age)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not policy.enabled or request.path not in PUBLIC_PATHS:
            return await handler(request)
        if request.method == "OPTIONS":
            return policy.preflight(request)
        origin = request.headers.get("Origin")
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own errors (405, 413, ...): readable by the page too
            policy.decorate(exc, origin)
            raise
        if not response.prepared:
            policy.decorate(response, origin)
        return response

    return cors


__all__ = ["ALLOW_HEADERS", "ALLOW_METHODS", "CorsPolicy", "PUBLIC_PATHS", "cors_middleware"]
