"""`Subscription`: the async iterator a caller holds for one subscribed query."""
from __future__ import annotations

import asyncio
import weakref
from typing import Any, Awaitable

from client.state import Sink

__all__ = ["Subscription"]


def _release_sink(sink: Sink, loop: asyncio.AbstractEventLoop) -> None:
    """Finalizer of a `Subscription`: detach its sink on the client's loop."""
    if sink.closed:
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        sink.release()
    elif not loop.is_closed():
        loop.call_soon_threadsafe(sink.release)


class Subscription:
    """An async iterator over one query's results (see the `client` package docstring).

    Use it with ``async for``, or call ``await sub.next(timeout)``; close it
    with ``close()``/``aclose()`` or ``async with``. Dropping the last
    reference closes it too.
    """

    def __init__(self, sink: Sink, loop: asyncio.AbstractEventLoop) -> None:
        self._sink = sink
        self._finalizer = weakref.finalize(self, _release_sink, sink, loop)
        self._finalizer.atexit = False

    def __aiter__(self) -> "Subscription":
        return self

    def __anext__(self) -> Awaitable[Any]:
        # Not a coroutine itself: exceptions raised while waiting must not
        # keep this object (and so the subscription) alive via their traceback.
        return self._sink.get()

    def next(self, timeout: float | None = None) -> Awaitable[Any]:
        """Wait for the next result; ``TimeoutError`` after ``timeout`` seconds leaves the subscription open.

        Raises `FunctionError` when the query failed, StopAsyncIteration when
        the subscription was closed, `ClientClosedError` when the client was.
        """
        return self._sink.get(timeout)

    def close(self) -> None:
        """Detach now (the server-side query is removed with its last local subscriber)."""
        self._finalizer()

    async def aclose(self) -> None:
        """Async spelling of `close`."""
        self.close()

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once closed (by the caller or because the client closed)."""
        return self._sink.closed

    @property
    def query_id(self) -> int:
        """The server-side ``queryId`` (shared by identical subscriptions of this client)."""
        return self._sink.entry.query_id

    @property
    def path(self) -> str:
        """The canonical function path."""
        return self._sink.entry.path

    @property
    def args(self) -> dict[str, Any]:
        """The query arguments."""
        return self._sink.entry.args

    @property
    def received(self) -> int:
        """How many results reached this subscriber's mailbox."""
        return self._sink.received

    @property
    def skipped(self) -> int:
        """How many results were replaced by a newer one before the consumer read them."""
        return self._sink.skipped

    def __repr__(self) -> str:
        return f"<Subscription {self.path} queryId={self.query_id}{' closed' if self.closed else ''}>"
