"""The Convex HTTP function API: `/api/query`, `/api/mutation`, `/api/action`, `/api/function`."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson
from aiohttp import web

from engine.errors import AppError, EngineError, FunctionNotFound
from gateway.config import NODE_KEY
from gateway import http_protocol as hp
from gateway.sync_session import error_fields

if TYPE_CHECKING:
    from gateway.node import Node

log = logging.getLogger("tape.http")

_JSON = "application/json"


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=_JSON)


async def _read_body(request: web.Request, node: "Node") -> bytes:
    """The whole request body, refusing one over the message size limit before reading it all."""
    limit = node.config.max_message_bytes
    if request.content_length is not None and request.content_length > limit:
        raise hp.HttpApiError(f"request body is {request.content_length} bytes, over the {limit} byte limit",
                              code="PayloadTooLarge", status=413)
    try:
        return await request.read()  # bounded by the application's client_max_size (= the same limit)
    except web.HTTPRequestEntityTooLarge:
        raise hp.HttpApiError(f"request body is over the {limit} byte limit", code="PayloadTooLarge",
                              status=413) from None


def _identity(request: web.Request, node: "Node") -> dict[str, Any] | None:
    auth = request.headers.get("Authorization")
    if auth and auth.startswith("Convex ") and node.admin.check(auth):
        return {"admin": True}
    return None


async def _call(request: web.Request, endpoint: hp.Endpoint) -> web.Response:
    node: Node = request.app[NODE_KEY]
    try:
        body = await _read_body(request, node)
        call = hp.parse_function_call(body, endpoint=endpoint, query_format=request.query.get("format"))
    except hp.HttpApiError as exc:
        return json_response(exc.body, exc.status)
    fmt = hp.response_format(call.format, request.headers.get("Convex-Client"))
    identity = _identity(request, node)
    runtime = node.runtime
    try:
        kind = endpoint
        if endpoint == "function":
            kind = runtime.app.function(call.path).kind  # type: ignore[assignment]
        if kind == "query":
            value = runtime.run_query(call.path, call.args, identity=identity).value
        elif kind == "query_at_ts":
            value = await node.query_at(call.path, call.args, call.ts, identity)  # type: ignore[arg-type]
        elif kind == "mutation":
            key = request.headers.get("Idempotency-Key")
            session, request_id = _idempotency(key)
            outcome = await runtime.run_mutation(call.path, call.args, identity=identity,
                                                 session_id=session, request_id=request_id)
            value = outcome.value
        else:
            value = await runtime.run_action(call.path, call.args, identity=identity)
    except FunctionNotFound as exc:
        return json_response(hp.error_body(str(exc), fmt=fmt), 404 if endpoint == "function" else hp.FUNCTION_ERROR_STATUS)
    except (AppError, EngineError) as exc:
        text, data = error_fields(exc)
        return json_response(hp.error_body(text, error_data=data, fmt=fmt), hp.FUNCTION_ERROR_STATUS)
    return json_response(hp.success_body(value, fmt=fmt))


def _idempotency(key: str | None) -> tuple[str | None, int | None]:
    """An `Idempotency-Key: <session>:<n>` header makes an HTTP mutation exactly-once."""
    if not key:
        return None, None
    session, _, number = key.rpartition(":")
    if session and number.isdigit():
        return "http:" + session, int(number)
    return "http:" + key, 0


def _endpoint(endpoint: hp.Endpoint) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return await _call(request, endpoint)
    handler.__name__ = f"api_{endpoint}"
    return handler


async def query_ts(request: web.Request) -> web.Response:
    node: Node = request.app[NODE_KEY]
    return json_response(hp.query_ts_body(node.runtime.projection.applied_ts))


async def version(request: web.Request) -> web.Response:
    """Health check: 200 with the server version."""
    node: Node = request.app[NODE_KEY]
    return web.Response(text=f"tape {node.version} {node.config.role} offset={node.runtime.projection.applied_offset}")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/query", _endpoint("query"))
    app.router.add_post("/api/mutation", _endpoint("mutation"))
    app.router.add_post("/api/action", _endpoint("action"))
    app.router.add_post("/api/function", _endpoint("function"))
    app.router.add_post("/api/query_at_ts", _endpoint("query_at_ts"))
    app.router.add_post("/api/query_ts", query_ts)
    app.router.add_get("/version", version)
