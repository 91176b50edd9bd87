"""Tape's Python client SDK: an asyncio client for the Convex sync protocol, on aiohttp.

::

    from client import Client

    async with Client("http://127.0.0.1:3210") as tape:
        list_id = await tape.mutation("lists:create", {"name": "groceries"})
        async for items in tape.subscribe("lists:items", {"list_id": list_id}):
            print(items)        # first the current result, then every change
        total = await tape.query("accounts:total", {})
        await tape.action("mail:send", {...})

It builds on `values` (the Convex value model) and third-party libraries
only, never on the server packages. Modules: `client.session` (`Client`, the
socket loop), `client.subscription` (`Subscription`), `client.state` (the
protocol state machine, no I/O), `client.errors` and `values.sync_wire` (the few
wire-format helpers it needs).

Behaviour:

* **One WebSocket** (``/api/sync``) per client carries every subscription and
  request. Identical subscriptions (same canonical path and same Convex-JSON
  args) share one server-side query (one ``queryId``); its results fan out to
  each local iterator. Query-set changes made in the same event-loop tick go
  out as a single ``ModifyQuerySet``.
* **Subscriptions** (`Client.subscribe` → `Subscription`) yield the current
  result first, then each new one the server pushes. A ``QueryFailed`` makes
  the iterator *raise* `FunctionError` (`ClientAppError`, alias
  `ConvexError`, with ``.data`` when the function raised ``AppError``); the
  subscription itself stays open, so ``await sub.next()`` can continue after
  an error, while an ``async for`` loop ends there. Leaving the loop
  (``break``, an exception, or the task being cancelled), ``sub.close()`` or
  leaving ``async with sub`` detaches the iterator; when the last local
  subscriber of a query leaves, the client sends ``Remove``. ``break``
  relies on the iterator being dropped (immediate in CPython; use
  ``async with`` or ``close()`` when you keep a reference to it).
* **Slow consumers**: each iterator has a one-slot mailbox holding only the
  latest result. A consumer that falls behind skips intermediate results
  (``Subscription.skipped`` counts them) and always sees the newest state;
  it never slows down the socket reader or other subscriptions. Values are
  shared, not copied, between iterators of the same query: treat them as
  read-only.
* **query()** is a one-shot subscription over the same socket (subscribe,
  take the first result, unsubscribe), so it sees the client's own
  completed mutations (read-your-writes), and answers at once from the
  cache when an identical subscription already has a result.
* **mutation()** resolves only once a Transition with ``endVersion.ts`` ≥
  the response's ``ts`` has been applied: every subscription already shows
  the mutation's effects when it returns. Failures raise `FunctionError`.
  Cancelling the ``await`` does not recall a mutation that was already sent:
  it keeps being retried until the server answers.
* **Reconnection**: on any socket loss the client retries with exponential
  backoff and jitter (``backoff_initial`` doubling up to ``backoff_max``;
  reset once a connection has delivered a Transition). Each new socket sends
  ``Connect`` with the same ``sessionId`` and the next ``connectionCount``,
  a ``ModifyQuerySet`` 0 → 1 re-adding every live query under its old id,
  then every unfinished mutation under its original ``requestId`` (the
  server dedupes by ``(sessionId, requestId)``). After a reconnect, results
  equal to what subscribers already have are not delivered again. Actions
  in flight when the socket drops fail with `ConnectionLostError` (they are
  not idempotent); actions issued while disconnected are sent on the next
  socket.
* **Versions**: the client tracks ``{querySet, ts, identity}``; a Transition
  that does not start at the current version is logged and the client
  reconnects to re-sync. A server ``FatalError`` stops the client for good
  (as the official client does): everything pending fails with
  `FatalServerError`.
* **State**: `Client.state` is ``"connecting"``, ``"connected"`` or
  ``"disconnected"``; observe it with `Client.on_state_change` or await
  `Client.wait_connected` / `Client.wait_for_state`.
* Values follow the Convex model (`values`): float64 numbers, int64 as
  Python ``int``, ``bytes``; args go out through ``to_wire`` and results come
  back through ``from_wire``.
"""
from __future__ import annotations

from client.errors import (
    ClientAppError,
    ClientClosedError,
    ClientError,
    ConnectionLostError,
    ConvexError,
    FatalServerError,
    FunctionError,
)
from client.session import Client, ConnectionState, sync_url
from client.state import QueryInfo
from client.subscription import Subscription

__all__ = [
    "Client",
    "Subscription",
    "ConnectionState",
    "ClientError",
    "FunctionError",
    "ClientAppError",
    "ConvexError",
    "ConnectionLostError",
    "ClientClosedError",
    "FatalServerError",
    "QueryInfo",
    "sync_url",
]
