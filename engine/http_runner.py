"""Running one HTTP action on an action worker, streamed response included, with its errors mapped.

The handler runs like any action (`engine.action_workers`): on a worker
thread's own event loop, bounded by the action timeout (which covers
streaming the response body too), so a slow or CPU-bound handler never stalls
the server loop. The request body and the response bytes cross between the
two loops one chunk at a time.

Errors never reach the caller as a traceback: a fault of the request
(`engine.http_router.HttpRequestError`: a body over the limit, JSON that is
not JSON) that the handler lets escape is answered with its status (413,
400, 408); anything else is logged with its traceback and answered 500 with
``{"code", "message", "requestId"}``. Once a streamed body has started, an
error can only cut the connection (`StreamAborted`).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Coroutine, Protocol

from engine.context import ActionCtx, Auth
from engine.errors import EngineError
from engine.http_router import HttpRequestError, Request, Response, Route
from engine.preempt import Preempted

if TYPE_CHECKING:
    from engine.runtime import Runtime

log = logging.getLogger("tape.http_actions")


@dataclass
class HttpAuth(Auth):
    """`ctx.auth` of an HTTP action: the user of the ``Authorization`` header.

    Like Convex: a request without the header is anonymous; one whose header
    is not a token this deployment accepts still runs (a webhook may use the
    header its own way), but ``get_user_identity()`` then raises, naming why.
    """

    error: str | None = None

    async def get_user_identity(self) -> dict[str, Any] | None:
        if self.error is not None:
            raise EngineError(self.error)
        return await super().get_user_identity()


class ResponseSender(Protocol):
    """How a streamed response reaches the client (the gateway's; each call runs on the server loop)."""

    async def start(self, response: Response) -> None:
        """Send the status line and headers."""

    async def write(self, chunk: bytes) -> None:
        """Send one chunk (waits while the client is slow to read)."""

    async def finish(self) -> None:
        """End the body."""


class StreamAborted(Exception):
    """A streamed response failed after it started: the connection must be cut (the cause is logged)."""


async def on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> Any:
    """Await `coro` on `loop` from whichever loop is running now."""
    if asyncio.get_running_loop() is loop:
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


def error_response(status: int, code: str, message: str, request_id: str | None = None) -> Response:
    """The JSON body of an answer the server gives in place of the handler's."""
    body: dict[str, Any] = {"code": code, "message": message}
    if request_id is not None:
        body["requestId"] = request_id
    return Response.json(body, status)


async def run_http_action(runtime: "Runtime", route: Route, request: Request, auth: Auth,
                          sender: ResponseSender, request_id: str) -> Response | None:
    """Run `route`'s handler for `request`; the response to send, or None when it was streamed through `sender`.

    Call on the server loop. Raises `StreamAborted` when a streamed body failed midway.
    """
    server = asyncio.get_running_loop()
    ctx = ActionCtx(runtime, auth, server)
    started = False
    seconds = runtime.limits.max_action_seconds
    name = f"http action {route.describe()} ({route.action.name})"

    async def job() -> Response | None:
        nonlocal started
        response = await route.action.handler(ctx, request)
        if not isinstance(response, Response):
            raise TypeError(f"{route.action.name} returned {type(response).__name__}, not a Response")
        if response.stream is None:
            return response
        try:
            started = True
            await on_loop(server, sender.start(response))
            if request.method != "HEAD" and response.status not in (204, 304):  # (answers that have no body)
                async for chunk in response.chunks():
                    await on_loop(server, sender.write(chunk))
            await on_loop(server, sender.finish())
        finally:
            close = getattr(response.stream, "aclose", None)
            if close is not None:
                await close()
        return None

    try:
        return await runtime.actions.run(job, seconds, name)
    except (Preempted, asyncio.TimeoutError):
        log.warning("%s ran longer than %gs (request %s)", name, seconds, request_id)
        if started:
            raise StreamAborted(name) from None
        return error_response(500, "Timeout", f"[Request ID: {request_id}] {route.describe()} ran longer than "
                                              f"{seconds:g}s", request_id)
    except HttpRequestError as exc:
        if started:
            raise StreamAborted(name) from None
        return error_response(exc.status, exc.code, str(exc) or exc.code)
    except Exception as exc:  # app bug: the traceback goes to the log, the caller gets the request id
        if started and isinstance(exc, ConnectionError):
            log.info("%s: the client went away while the response streamed (request %s)", name, request_id)
            raise StreamAborted(name) from None
        log.error("uncaught exception in %s (request %s)", name, request_id, exc_info=exc)
        if started:
            raise StreamAborted(name) from None
        return error_response(500, "InternalServerError", f"[Request ID: {request_id}] Server Error", request_id)


__all__ = ["HttpAuth", "ResponseSender", "StreamAborted", "error_response", "on_loop", "run_http_action"]
