"""The `ctx` objects handed to queries, mutations and actions."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Coroutine

from engine import function_logs
from engine.db import DatabaseReader, DatabaseWriter
from engine.env_vars import EnvVars, env_now, env_of_transaction
from engine.errors import EngineError
from engine.functions import FunctionDef
from engine.preempt import guard_state as preempt_guard
from engine.scheduler import ActionScheduler, MutationScheduler, function_path
from engine.vector_search import vector_search
from engine.storage import ActionStorage, MutationStorage, QueryStorage

if TYPE_CHECKING:
    from engine.app import App
    from engine.runtime import Runtime


ADMIN_IDENTITY: dict[str, Any] = {"admin": True}
"""The identity of a plain admin-key call: privileged, but no user (`get_user_identity()` is None)."""


def is_admin(identity: dict[str, Any] | None) -> bool:
    """Whether `identity` is the admin marker (a user's claims never are: a user has a tokenIdentifier)."""
    return identity is not None and "tokenIdentifier" not in identity and identity.get("admin") is True


def _copy(value: Any) -> Any:
    """A copy of a JSON-like value, so user code cannot change the caller's shared identity."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


@dataclass
class Auth:
    """`ctx.auth`: the caller's identity (None when unauthenticated).

    `identity` is what the gateway verified: a user's Convex ``UserIdentity``
    (``tokenIdentifier``, ``subject``, ``issuer``, OIDC claims in camelCase,
    custom claims), the admin marker `ADMIN_IDENTITY`, or None.
    """

    identity: dict[str, Any] | None = None

    async def get_user_identity(self) -> dict[str, Any] | None:
        """The calling user's identity (a copy), or None when anonymous or a plain admin call."""
        identity = self.identity
        if identity is None or "tokenIdentifier" not in identity:
            return None
        return _copy(identity)

    @property
    def is_admin(self) -> bool:
        """Whether the caller presented the admin key (and acts as no user)."""
        return is_admin(self.identity)


def _actions_only(table: Any, index: Any, request: Any = None) -> Any:
    raise EngineError("ctx.vector_search is only available in actions (as in Convex): call it from an "
                      "@action, then load documents with ctx.run_query")


@dataclass
class QueryCtx:
    db: DatabaseReader
    auth: Auth
    storage: QueryStorage | None = None  # `ctx.storage.get_url`

    @property
    def env(self) -> EnvVars:
        """The deployment's environment variables (read-only; see `engine.env_vars`)."""
        return env_of_transaction(self.db._tx)

    async def vector_search(self, table: str, index: str, request: Any = None) -> Any:
        """Not in queries: vector search runs in actions only."""
        _actions_only(table, index, request)


@dataclass
class MutationCtx:
    """`ctx` of a mutation: `db`, `auth`, `scheduler` (jobs written in this transaction), and sub-calls."""

    db: DatabaseWriter
    auth: Auth
    scheduler: MutationScheduler | None = None
    app: "App | None" = None
    storage: MutationStorage | None = None  # `ctx.storage`: upload URLs, get_url, delete (engine.storage)

    @property
    def env(self) -> EnvVars:
        """The deployment's environment variables (read-only; see `engine.env_vars`)."""
        return env_of_transaction(self.db._tx)

    async def vector_search(self, table: str, index: str, request: Any = None) -> Any:
        """Not in mutations: vector search runs in actions only."""
        _actions_only(table, index, request)

    def _callee(self, fn: FunctionDef | str, kind: str) -> FunctionDef:
        if self.app is None:
            raise EngineError(f"ctx.run_{kind} is not available here")
        target = self.app.function(function_path(fn), allow_internal=True)
        if target.kind != kind:
            raise EngineError(f"{target.path} is a {target.kind}, not a {kind}")
        return target

    async def run_query(self, fn: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        """Run a query inside this transaction: it sees this mutation's writes so far."""
        target = self._callee(fn, "query")
        checked = target.validate_args({} if args is None else args)
        reader = DatabaseReader(self.db._tx)
        storage = QueryStorage(self.storage._service, reader) if self.storage is not None else None
        return target.check_returns(await target.handler(QueryCtx(reader, self.auth, storage), **checked))

    async def run_mutation(self, fn: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        """Run a mutation as a sub-transaction of this one (Convex semantics).

        It sees this mutation's writes so far and its writes join this mutation's record; if it
        raises, its writes are undone and the error reaches the caller (which may catch it).
        """
        target = self._callee(fn, "mutation")
        checked = target.validate_args({} if args is None else args)
        tx = self.db._tx
        mark = tx.overlay.mark()
        touched = dict(tx.touched)
        try:
            return target.check_returns(await target.handler(
                MutationCtx(self.db, self.auth, self.scheduler, self.app, self.storage), **checked))
        except BaseException:
            guard = preempt_guard()
            guard.critical += 1  # a preemption must not land halfway through the undo
            try:
                tx.overlay.rollback(mark)
                tx.touched.clear()
                tx.touched.update(touched)
            finally:
                guard.critical -= 1
            raise


class ActionCtx:
    """Actions may do I/O and call other functions through the runtime.

    An action runs on a worker thread's loop (`engine.action_workers`); every
    call into the runtime hops back to the server's loop, which owns the
    projection and the committer.
    """

    def __init__(self, runtime: "Runtime", auth: Auth, server_loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._runtime = runtime
        self.auth = auth
        self._server_loop = server_loop
        self.env: EnvVars = env_now(runtime.projection)  # (read on the server loop, as of the call's start)

    async def _on_server(self, coro: Coroutine[Any, Any, Any]) -> Any:
        server = self._server_loop
        coro = function_logs.isolated(coro)  # a function called by an action logs as a call of its own
        if server is None or asyncio.get_running_loop() is server:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, server))

    async def _query(self, path: str, args: dict[str, Any]) -> Any:
        result = await self._runtime.query(path, args, allow_internal=True, identity=self.auth.identity)
        if result.error is not None:
            raise result.error
        return result.value

    async def _mutation(self, path: str, args: dict[str, Any]) -> Any:
        outcome = await self._runtime.run_mutation(path, args, allow_internal=True, identity=self.auth.identity)
        return outcome.value

    @property
    def storage(self) -> ActionStorage:
        """`ctx.storage`: upload URLs, `get_url`, `store`, `get`, `delete` (each write commits on its own)."""
        return ActionStorage(self._runtime.storage, self._runtime.projection, self._on_server)

    @property
    def scheduler(self) -> ActionScheduler:
        """`ctx.scheduler`: each `run_after` / `run_at` / `cancel` commits on its own."""
        return ActionScheduler(self._runtime, self._on_server)

    async def run_query(self, path: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        return await self._on_server(self._query(function_path(path), args or {}))

    async def vector_search(self, table: str, index: str, request: dict[str, Any]) -> list[dict[str, Any]]:
        """The documents of `table` nearest `request["vector"]` by cosine similarity, via vector index `index`.

        `request`: ``{"vector": [...], "limit": 1..256 (default 10), "filter": lambda q: q.eq(field, value)}``
        (`q.or_(...)` of `q.eq` on the index's filter fields). Returns ``[{"_id", "_score"}]``, best first,
        from the latest committed state (deleted documents never appear). Runs on this action's thread.
        """
        runtime = self._runtime
        return vector_search(runtime.vectors, runtime.app.schema.check_table_allowed, table, index, request)

    async def run_mutation(self, path: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        return await self._on_server(self._mutation(function_path(path), args or {}))

    async def run_action(self, path: FunctionDef | str, args: dict[str, Any] | None = None) -> Any:
        return await self._on_server(self._runtime.run_action(function_path(path), args or {}, allow_internal=True,
                                                              identity=self.auth.identity))
