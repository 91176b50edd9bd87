"""HTTP actions: the `http.py` router, the `@http_action` decorator, and the request and response types.

An app's ``http.py`` defines ``http = HttpRouter()`` and adds routes::

    http.route(path="/stripe/webhook", method="POST", handler=stripe_webhook)
    http.route(path_prefix="/files/", method="GET", handler=serve_file)
    http.cors(path_prefix="/api/", origins=["https://app.example.com"])

A request is matched by its exact path first, then by the longest matching
prefix; a path with routes for other methods only is answered 405. Routes are
checked when the module loads: a bad path, a duplicate route or a handler not
declared with ``@http_action`` is an `AppLoadError` naming ``file:line``.

This module knows nothing of the network: the gateway (`gateway.site`) turns
an aiohttp request into a `Request` and sends the `Response` back;
`engine.http_runner` runs the handler on an action worker.
"""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Protocol

import orjson

from engine.errors import AppLoadError

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
HttpHandler = Callable[[Any, "Request"], Awaitable["Response"]]


# ------------------------------------------------------------------ the decorator


class HttpAction:
    """A handler declared with `@http_action`: ``async def fn(ctx, request) -> Response``."""

    def __init__(self, handler: HttpHandler) -> None:
        self.handler = handler
        self.name = getattr(handler, "__qualname__", repr(handler))

    def __call__(self, ctx: Any, request: "Request") -> Awaitable["Response"]:
        """Calling the decorated object calls the handler directly (handy in tests)."""
        return self.handler(ctx, request)


def http_action(fn: HttpHandler) -> HttpAction:
    """Declare an HTTP action: ``@http_action`` over ``async def fn(ctx, request)`` returning a `Response`.

    `ctx` is an action context (`engine.context.ActionCtx`): ``run_query``,
    ``run_mutation``, ``run_action``, ``scheduler`` and ``auth`` (the user of
    an ``Authorization: Bearer <JWT>`` header).
    """
    if isinstance(fn, HttpAction):
        return fn
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"http action {getattr(fn, '__qualname__', fn)!r} must be declared with `async def`")
    return HttpAction(fn)


# ------------------------------------------------------------------ request faults


class HttpRequestError(Exception):
    """A fault of the request itself; if the handler lets it escape, the caller gets `status` and `code`."""

    status = 400
    code = "BadRequest"


class PayloadTooLarge(HttpRequestError):
    """The request body is larger than the site's limit (``--max-http-body-bytes``)."""

    status = 413
    code = "PayloadTooLarge"


class BadRequestBody(HttpRequestError):
    """The body could not be read or decoded (not UTF-8, not JSON, broken transfer encoding)."""


class RequestBodyTimeout(HttpRequestError):
    """The body did not arrive within the server's body timeout."""

    status = 408
    code = "RequestTimeout"


# ------------------------------------------------------------------ request


class BodySource(Protocol):
    """Where a `Request` reads its body from (the gateway's implementation hops to the server loop)."""

    async def read_chunk(self) -> bytes:
        """The next chunk; ``b""`` at the end."""

    async def read_all(self) -> bytes:
        """Everything not read yet."""


class BytesBody:
    """A body already in memory (tests, internal callers)."""

    def __init__(self, data: bytes = b"", chunk_size: int = 1 << 16) -> None:
        self._data, self._at, self._chunk = data, 0, chunk_size

    async def read_chunk(self) -> bytes:
        chunk = self._data[self._at:self._at + self._chunk]
        self._at += len(chunk)
        return chunk

    async def read_all(self) -> bytes:
        rest, self._at = self._data[self._at:], len(self._data)
        return rest


class Request:
    """An HTTP request as a handler sees it.

    `method`, `url` (the full URL), `path`, `headers` (case-insensitive when
    served), `query` (the query parameters). The body is read once, as
    ``await request.bytes()``, ``.text()``, ``.json()``, or chunk by chunk with
    ``async for chunk in request.stream()``; reading it a second way after
    streaming it raises RuntimeError. A body over the size limit raises
    `PayloadTooLarge` while it is read (413 if the handler lets it escape).
    """

    def __init__(self, method: str, url: str, path: str, headers: Mapping[str, str], query: Mapping[str, str],
                 body: BodySource | None = None) -> None:
        self.method, self.url, self.path = method, url, path
        self.headers, self.query = headers, query
        self._body = body if body is not None else BytesBody()
        self._read: bytes | None = None
        self._streamed = False

    async def bytes(self) -> bytes:
        """The whole body."""
        if self._read is None:
            if self._streamed:
                raise RuntimeError("the request body was already consumed by request.stream()")
            self._read = await self._body.read_all()
        return self._read

    async def text(self) -> str:
        """The body decoded as UTF-8; `BadRequestBody` when it is not."""
        data = await self.bytes()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequestBody(f"request body is not UTF-8 text (byte {exc.start})") from None

    async def json(self) -> Any:
        """The body parsed as JSON; `BadRequestBody` (400 if not caught) when it is not JSON."""
        data = await self.bytes()
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BadRequestBody(f"request body is not valid JSON: {exc}") from None

    async def stream(self) -> AsyncIterator[bytes]:
        """The body chunk by chunk, as it arrives (at most 64 KiB each)."""
        if self._read is not None or self._streamed:
            raise RuntimeError("the request body was already consumed")
        self._streamed = True
        while True:
            chunk = await self._body.read_chunk()
            if not chunk:
                return
            yield chunk


# ------------------------------------------------------------------ response


class Response:
    """What a handler returns: `status`, `headers`, and a body.

    The body is ``bytes`` (sent as is), ``str`` (UTF-8, ``text/plain``), any
    other JSON value but None (``application/json``), None (empty), or an
    async iterable of ``bytes``/``str`` chunks (streamed as they come).
    `headers` is a mapping or a list of (name, value) pairs (for repeated
    headers such as ``Set-Cookie``); a ``Content-Type`` given there wins.
    """

    def __init__(self, body: Any = None, status: int = 200,
                 headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> None:
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"Response status must be an integer in 200..599, got {status!r}")
        self.status = status
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
        for pair in pairs:
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                raise ValueError(f"Response headers must be str: str pairs, got {pair!r}")
            if any(c in part for part in pair for c in "\r\n\0") or not pair[0] or ":" in pair[0]:
                raise ValueError(f"Response header {pair[0]!r} has a name or value HTTP cannot carry")
        self.headers: list[tuple[str, str]] = pairs
        self.stream: AsyncIterable[bytes | str] | None = None
        self.body = b""
        content_type = None
        if hasattr(body, "__aiter__"):
            self.stream = body
        elif isinstance(body, (bytes, bytearray, memoryview)):
            self.body = bytes(body)
        elif isinstance(body, str):
            self.body, content_type = body.encode(), "text/plain; charset=utf-8"
        elif body is not None:
            try:
                self.body = orjson.dumps(body)
            except TypeError as exc:
                raise ValueError(f"Response body must be bytes, str, a JSON value or an async iterable: {exc}") \
                    from None
            content_type = "application/json"
        if content_type and self.header("Content-Type") is None:
            self.headers.append(("Content-Type", content_type))

    @classmethod
    def json(cls, value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> "Response":
        """A JSON response (``null`` too, which ``Response(None)`` would send as an empty body)."""
        response = cls(orjson.dumps(value), status, headers)
        if response.header("Content-Type") is None:
            response.headers.append(("Content-Type", "application/json"))
        return response

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The streamed body's chunks as bytes."""
        assert self.stream is not None
        async for chunk in self.stream:
            if isinstance(chunk, str):
                chunk = chunk.encode()
            elif not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise TypeError(f"a streamed response body yielded {type(chunk).__name__}, not bytes or str")
            if chunk:
                yield bytes(chunk)


# ------------------------------------------------------------------ CORS


@dataclass(frozen=True)
class CorsRule:
    """Which browser origins may call some routes: preflight answers and the headers of actual responses."""

    origins: tuple[str, ...]
    methods: tuple[str, ...]
    headers: tuple[str, ...]
    max_age: int
    credentials: bool

    def allow_origin(self, origin: str | None) -> str | None:
        if "*" in self.origins and not self.credentials:
            return "*"
        if origin is not None and (origin in self.origins or "*" in self.origins):
            return origin
        return None

    def response_headers(self, origin: str | None) -> list[tuple[str, str]]:
        """Headers added to an actual (non-preflight) response for a request from `origin`."""
        allowed = self.allow_origin(origin)
        out = [] if allowed == "*" else [("Vary", "Origin")]
        if allowed is not None:
            out.append(("Access-Control-Allow-Origin", allowed))
            if self.credentials:
                out.append(("Access-Control-Allow-Credentials", "true"))
        return out

    def preflight(self, request: Request) -> Response:
        """The answer to a preflight ``OPTIONS``: 204 with the allowances, 403 for an origin not allowed."""
        origin = request.headers.get("Origin")
        allowed = self.allow_origin(origin)
        if allowed is None:
            return Response({"code": "CorsOriginNotAllowed", "message": f"origin {origin!r} is not allowed"},
                            403, [("Vary", "Origin")])
        headers = self.response_headers(origin) + [
            ("Access-Control-Allow-Methods", ", ".join(self.methods)),
            ("Access-Control-Allow-Headers", ", ".join(self.headers)),
            ("Access-Control-Max-Age", str(self.max_age)),
        ]
        return Response(None, 204, headers)


# ------------------------------------------------------------------ the router


@dataclass(frozen=True)
class Route:
    """One route: `method` on an exact `path` or on every path under `prefix`."""

    method: str
    path: str | None
    prefix: str | None
    action: HttpAction
    where: str  # "file:line" of the `route` call

    def describe(self) -> str:
        return f"{self.method} {self.path if self.path is not None else self.prefix + '*'}"  # type: ignore[operator]


@dataclass
class Match:
    """What a request matched: the route (None: no route), and the methods its path has (for 405)."""

    route: Route | None
    allowed: tuple[str, ...] = ()
    cors: CorsRule | None = None


def _caller_location() -> str:
    """"file:line" of the app code that called an `HttpRouter` method."""
    frame = sys._getframe(2)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _check_path(path: Any, prefix: bool, where: str) -> str:
    name = "path_prefix" if prefix else "path"
    if not isinstance(path, str) or not path.startswith("/"):
        raise AppLoadError(f"{where}: {name} must be a string starting with '/', got {path!r}")
    if any(c in path for c in "?#") or any(c.isspace() for c in path):
        raise AppLoadError(f"{where}: {name} {path!r} may not hold '?', '#' or whitespace")
    if prefix and not path.endswith("/"):
        raise AppLoadError(f"{where}: path_prefix {path!r} must end with '/'")
    return path


class HttpRouter:
    """The routes of an app's ``http.py`` (``http = HttpRouter()``)."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], Route] = {}
        self._prefixes: dict[tuple[str, str], Route] = {}
        self._cors_exact: dict[str, CorsRule] = {}
        self._cors_prefix: dict[str, CorsRule] = {}

    def route(self, *, method: str, handler: HttpAction, path: str | None = None,
              path_prefix: str | None = None) -> None:
        """Serve `handler` for `method` on the exact `path`, or on every path starting with `path_prefix`."""
        self._add(method, handler, path, path_prefix, _caller_location())

    def _add(self, method: Any, handler: Any, path: Any, path_prefix: Any, where: str) -> None:
        if (path is None) == (path_prefix is None):
            raise AppLoadError(f"{where}: a route needs exactly one of path= or path_prefix=")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise AppLoadError(f"{where}: method must be one of {', '.join(METHODS)}, got {method!r}")
        method = method.upper()
        if not isinstance(handler, HttpAction):
            inner = getattr(handler, "handler", None)  # (an @action or @mutation passed by mistake)
            name = getattr(handler, "__qualname__", None) or getattr(inner, "__qualname__", None) or repr(handler)
            hint = "declare it with @http_action" if callable(handler) else "expected an @http_action function"
            raise AppLoadError(f"{where}: route handler {name} is not an HTTP action: {hint}")
        is_prefix = path_prefix is not None
        checked = _check_path(path_prefix if is_prefix else path, is_prefix, where)
        table = self._prefixes if is_prefix else self._exact
        earlier = table.get((method, checked))
        route = Route(method, None if is_prefix else checked, checked if is_prefix else None, handler, where)
        if earlier is not None:
            raise AppLoadError(f"{where}: duplicate route {route.describe()} (already defined at {earlier.where})")
        table[(method, checked)] = route

    def cors(self, *, path: str | None = None, path_prefix: str | None = None, origins: Iterable[str] = ("*",),
             methods: Iterable[str] | None = None, headers: Iterable[str] = ("Content-Type", "Authorization"),
             max_age: int = 86400, credentials: bool = False) -> None:
        """Let browser pages from `origins` call the routes at `path` (or under `path_prefix`).

        Adds an ``OPTIONS`` route there answering preflights (204 with
        ``Access-Control-Allow-Origin/-Methods/-Headers/-Max-Age``, 403 for an
        origin not allowed), and adds ``Access-Control-Allow-Origin`` (plus
        ``Vary: Origin`` unless any origin is allowed) to every response of
        the routes there. `methods` defaults to the methods routed there when
        the request comes; add the routes before or after, either works.
        """
        where = _caller_location()
        origin_list = (origins,) if isinstance(origins, str) else tuple(origins)
        if not origin_list or not all(isinstance(o, str) and o for o in origin_list):
            raise AppLoadError(f"{where}: cors origins must be non-empty strings ('*' for any), got {origins!r}")
        method_list = tuple(m.upper() for m in methods) if methods is not None else ()
        bad = [m for m in method_list if m not in METHODS]
        if bad:
            raise AppLoadError(f"{where}: cors methods must be among {', '.join(METHODS)}, got {bad!r}")
        if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0:
            raise AppLoadError(f"{where}: cors max_age must be a non-negative integer, got {max_age!r}")
        rule = CorsRule(tuple(o.rstrip("/") for o in origin_list), method_list, tuple(headers), max_age,
                        bool(credentials))

        async def preflight(ctx: Any, request: Request) -> Response:
            if rule.methods:
                return rule.preflight(request)
            found = self.match("OPTIONS", request.path).allowed
            return CorsRule(rule.origins, found, rule.headers, rule.max_age, rule.credentials).preflight(request)
        preflight.__qualname__ = f"cors preflight ({where})"
        self._add("OPTIONS", HttpAction(preflight), path, path_prefix, where)
        if path is not None:
            self._cors_exact[path] = rule
        else:
            self._cors_prefix[path_prefix] = rule  # type: ignore[index]

    def match(self, method: str, path: str) -> Match:
        """The route for `method` on `path` (HEAD falls back to GET), with the methods `path` has."""
        exact = sorted(m for (m, p) in self._exact if p == path)
        cors = self._cors_exact.get(path) or self._cors_for_prefix(path)
        wanted = [method] + (["GET"] if method == "HEAD" else [])
        for m in wanted:
            if (m, path) in self._exact:
                return Match(self._exact[(m, path)], tuple(exact), cors)
        if exact:
            return Match(None, tuple(exact), cors)
        best: str | None = None
        for (_, prefix) in self._prefixes:
            if path.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        if best is None:
            return Match(None, (), cors)
        methods = tuple(sorted(m for (m, p) in self._prefixes if p == best))
        for m in wanted:
            if (m, best) in self._prefixes:
                return Match(self._prefixes[(m, best)], methods, cors)
        return Match(None, methods, cors)

    def _cors_for_prefix(self, path: str) -> CorsRule | None:
        best = max((p for p in self._cors_prefix if path.startswith(p)), key=len, default=None)
        return None if best is None else self._cors_prefix[best]

    @property
    def routes(self) -> list[Route]:
        """Every route, exact paths first, in the order they were added."""
        return [*self._exact.values(), *self._prefixes.values()]


def load_http(module: Any, path: Path) -> HttpRouter:
    """The `http` router of the loaded ``http.py``; AppLoadError naming the file when there is none."""
    found = getattr(module, "http", None)
    if not isinstance(found, HttpRouter):
        raise AppLoadError(f"{path}: http.py must define `http = HttpRouter()` and add routes to it")
    return found


__all__ = ["BadRequestBody", "BodySource", "BytesBody", "CorsRule", "HttpAction", "HttpRequestError", "HttpRouter",
           "METHODS", "Match", "PayloadTooLarge", "Request", "RequestBodyTimeout", "Response", "Route",
           "http_action", "load_http"]
