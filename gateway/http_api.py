"""The Convex HTTP function API: `/api/query`, `/api/mutation`, `/api/action`, `/api/function`.

Idempotency. A mutation sent with ``Idempotency-Key: <session>:<n>`` (or
``<session>``, meaning request 0) runs at most once: a retry with the same
key gets the stored answer. ``<session>`` is 1-64 characters of
``[A-Za-z0-9_-]`` and ``<n>`` a decimal integer below 2**53; any other key is
refused with HTTP 400. Keys are scoped to the caller, so two callers' keys
never share a namespace - the mutation runs under the session id

* ``http:<session>`` for an anonymous caller (no ``Authorization`` header),
* ``http:admin:<session>`` for a caller presenting the admin key
  (``Authorization: Convex <admin key>``),
* ``http:admin:<h>:<session>`` for the admin acting as a user
  (``Convex <admin key>:<base64 of the JSON identity>``, as the npm client's
  ``setAdminAuth(key, identity)`` sends it),
* ``http:user:<h>:<session>`` for a user (``Authorization: Bearer <JWT>``),

where ``<h>`` is the first 32 hex digits of the SHA-256 of the user's
``tokenIdentifier``: a retry with a refreshed token of the same user is the
same caller, and no token is ever stored.

Because ``<session>`` holds no ``:``, these ids can neither collide with each
other nor with a WebSocket ``sessionId`` (same alphabet, no ``http:`` prefix).

Auth. A ``Bearer`` token is verified against the app's ``auth.config.py``
(`gateway.auth`); a token that is not accepted, an admin key that is not this
deployment's or any other ``Authorization`` scheme is answered 401
``{"code": "Unauthenticated", "message"}`` and nothing runs - never an
anonymous call. The admin key may call internal functions too.

Bad requests are answered, never crashed on: an ``Authorization`` or
``Idempotency-Key`` header that is not ASCII, a body that cannot be decoded
(a bad ``Content-Encoding: gzip`` stream, say) or that does not arrive within
``ServerConfig.body_timeout`` get a 4xx with a one-line ``{"code",
"message"}`` body.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from engine.context import ADMIN_IDENTITY
from engine.client_values import result_wire
from engine.errors import AppError, EngineError, FunctionNotFound, OutcomeUnknown, WritesUnavailable
from engine.function_logs import lines_of
from engine.storage import UPLOAD_PATH
from gateway.auth import AuthFailure, decode_acting_as, verifier_for
from gateway.config import NODE_KEY
from gateway import http_protocol as hp
from gateway.sync_session import error_fields

if TYPE_CHECKING:
    from gateway.node import Node

log = logging.getLogger("tape.http")

_JSON = "application/json"


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=_JSON)


class BodyTimeout(asyncio.TimeoutError):
    """The request body did not arrive within `ServerConfig.body_timeout` (set on the body stream)."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (aiohttp's read errors span several: "400, message:\n  ...")."""
    text = " ".join(str(exc).split())
    return text.removeprefix("400, message: ") or type(exc).__name__


@web.middleware
async def body_deadline(request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Bound the time a request may take to deliver its body (a slow-body client cannot hold a handler).

    If the body is still incomplete `body_timeout` seconds after the handler
    started, the body stream fails with `BodyTimeout`: whoever is reading it
    gets the error (answered here with 408 and the connection closed). The
    stream itself is not touched, so handlers reading it incrementally work
    unchanged, and a long-running handler whose body has arrived is not affected.
    """
    config = request.app[NODE_KEY].config
    timeout = config.upload_timeout if request.path == UPLOAD_PATH else config.body_timeout  # files are large
    content = request.content
    if timeout <= 0 or not request.body_exists or content.is_eof():
        return await handler(request)

    def expire() -> None:
        if not content.is_eof():
            content.set_exception(BodyTimeout(f"the request body did not arrive within {timeout:g} s"))
    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await handler(request)
    except BodyTimeout as exc:
        response = json_response({"code": "RequestTimeout", "message": str(exc)}, 408)
        response.force_close()
        return response
    finally:
        timer.cancel()


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
    except BodyTimeout as exc:
        raise hp.HttpApiError(str(exc), code="RequestTimeout", status=408) from None
    except (web.RequestPayloadError, HttpProcessingError) as exc:
        raise hp.HttpApiError(f"request body could not be read: {one_line(exc)}", code="BadBody") from None


def _header(request: web.Request, name: str) -> str | None:
    """A header's value; `HttpApiError` (400) naming it when it is not ASCII."""
    value = request.headers.get(name)
    if value is not None and not value.isascii():
        raise hp.HttpApiError(f"{name} header must be ASCII", code="BadHeader")
    return value


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling over HTTP: the identity functions see, the idempotency scope, admin or not."""

    identity: dict[str, Any] | None
    scope: str
    admin: bool = False


_ANONYMOUS = Caller(None, "http:")
_ADMIN = Caller(ADMIN_IDENTITY, "http:admin:", admin=True)


def _unauthenticated(message: str) -> hp.HttpApiError:
    return hp.HttpApiError(message, code="Unauthenticated", status=401)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


async def _caller(request: web.Request, node: "Node") -> Caller:
    """The caller named by the ``Authorization`` header; 401 `HttpApiError` when it is not accepted.

    See the module docstring for the scopes. A verified token costs a dict
    lookup (`gateway.auth.Verifier.verify_now`).
    """
    auth = _header(request, "Authorization")
    if not auth:
        return _ANONYMOUS
    scheme, _, credentials = auth.partition(" ")
    credentials = credentials.strip()
    jwt_shaped = scheme == "Bearer" and credentials.count(".") == 2  # (an admin key has no dots)
    if not jwt_shaped and scheme in ("Convex", "Bearer") and node.admin.check(auth):
        try:
            acting = decode_acting_as(credentials)
        except AuthFailure as exc:
            raise _unauthenticated(f"Authorization: {exc}") from None
        if acting is None:
            return _ADMIN
        return Caller(acting, f"http:admin:{_digest(acting['tokenIdentifier'])}:", admin=True)
    if scheme == "Convex":
        raise _unauthenticated("Authorization: the admin key is not this deployment's")
    if scheme != "Bearer" or not credentials:
        raise _unauthenticated("Authorization: expected 'Bearer <JWT>' or 'Convex <admin key>'")
    verifier = verifier_for(node)
    try:
        verified = verifier.verify_now(credentials) or await verifier.verify(credentials)
    except AuthFailure as exc:
        if jwt_shaped and node.admin.check(auth):  # an operator's admin key that happens to have two dots
            return _ADMIN
        raise _unauthenticated(f"Could not verify the Bearer token: {exc}") from None
    return Caller(verified.identity, f"http:user:{verified.caller_key}:")


async def _call(request: web.Request, endpoint: hp.Endpoint) -> web.Response:
    node: Node = request.app[NODE_KEY]
    try:
        _header(request, "Authorization")  # (a header that is not ASCII is a 400 before anything else)
        key = _header(request, "Idempotency-Key") if endpoint in ("mutation", "function") else None
        body = await _read_body(request, node)
        call = hp.parse_function_call(body, endpoint=endpoint, query_format=request.query.get("format"))
        caller = await _caller(request, node)
        identity, internal = caller.identity, caller.admin
        session, request_id = _idempotency(key, caller.scope)
    except hp.HttpApiError as exc:
        response = json_response(exc.body, exc.status)
        if exc.status == 408:
            response.force_close()  # the rest of the body may still be trickling in
        return response
    fmt = hp.response_format(call.format, request.headers.get("Convex-Client"))
    runtime = node.runtime
    lines: list[str] = []
    try:
        kind = endpoint
        if endpoint == "function":
            kind = runtime.app.function(call.path, allow_internal=internal).kind  # type: ignore[assignment]
        if kind == "query":
            result = await runtime.query(call.path, call.args, allow_internal=internal,
                                         identity=identity)  # off the loop when slow
            if result.error is not None:
                raise result.error
            value, lines = result.value, result.log_lines
        elif kind == "query_at_ts":  # older history than the public window needs the admin key
            admin = node.admin.check(request.headers.get("Authorization"))
            try:
                value = await node.query_at(call.path, call.args, call.ts,  # type: ignore[arg-type]
                                            identity, admin=admin)
            except hp.HttpApiError as exc:
                return json_response(exc.body, exc.status)
        elif kind == "mutation":
            outcome = await runtime.run_mutation(call.path, call.args, allow_internal=internal, identity=identity,
                                                 session_id=session, request_id=request_id)
            value, lines = outcome.value, outcome.log_lines
        else:
            action = await runtime.call_action(call.path, call.args, allow_internal=internal, identity=identity)
            value, lines = action.value, action.log_lines
    except (OutcomeUnknown, WritesUnavailable) as exc:
        return outcome_unknown_response(exc, fmt)
    except FunctionNotFound as exc:
        text, _ = error_fields(exc, call.path)
        return json_response(hp.error_body(text, fmt=fmt), 404 if endpoint == "function" else hp.FUNCTION_ERROR_STATUS)
    except (AppError, EngineError) as exc:
        text, data = error_fields(exc, call.path, runtime.app if fmt == "convex_encoded_json" else None)
        return json_response(hp.error_body(text, error_data=data, fmt=fmt, log_lines=lines_of(exc)),
                             hp.FUNCTION_ERROR_STATUS)
    if fmt == "convex_encoded_json":
        value = hp.Wire(result_wire(runtime.app, call.path, value))
    return json_response(hp.success_body(value, fmt=fmt, log_lines=lines))


def outcome_unknown_response(exc: OutcomeUnknown | WritesUnavailable, fmt: hp.ValueFormat) -> web.Response:
    """HTTP 503 (with ``Retry-After``) for a mutation whose outcome is unknown or that did not run.

    ``errorCode`` tells them apart: ``MutationOutcomeUnknown`` (repeat it with the same
    ``Idempotency-Key`` to learn whether it committed) or ``WritesUnavailable`` (it did not run).
    """
    code = "MutationOutcomeUnknown" if isinstance(exc, OutcomeUnknown) else "WritesUnavailable"
    body = {**hp.error_body(str(exc), fmt=fmt), "errorCode": code}
    response = json_response(body, 503)
    response.headers["Retry-After"] = "1"
    return response


def _idempotency(key: str | None, scope: str) -> tuple[str | None, int | None]:
    """(session id, request id) for an `Idempotency-Key` header, in the caller's `scope` (module docstring)."""
    if not key:
        return None, None
    session, number = hp.parse_idempotency_key(key)
    return scope + session, number


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
