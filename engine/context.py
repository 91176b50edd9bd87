"""The `ctx` objects handed to queries, mutations and actions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.db import DatabaseReader, DatabaseWriter

if TYPE_CHECKING:
    from engine.runtime import Runtime


@dataclass
class Auth:
    """`ctx.auth`: the caller's identity (None when unauthenticated)."""

    identity: dict[str, Any] | None = None

    async def get_user_identity(self) -> dict[str, Any] | None:
        return self.identity


@dataclass
class QueryCtx:
    db: DatabaseReader
    auth: Auth


@dataclass
class MutationCtx:
    db: DatabaseWriter
    auth: Auth


class ActionCtx:
    """Actions may do I/O and call other functions through the runtime."""

    def __init__(self, runtime: "Runtime", auth: Auth) -> None:
        self._runtime = runtime
        self.auth = auth

    async def run_query(self, path: str, args: dict[str, Any] | None = None) -> Any:
        return (self._runtime.run_query(path, args or {}, allow_internal=True, identity=self.auth.identity)).value

    async def run_mutation(self, path: str, args: dict[str, Any] | None = None) -> Any:
        outcome = await self._runtime.run_mutation(path, args or {}, allow_internal=True, identity=self.auth.identity)
        return outcome.value

    async def run_action(self, path: str, args: dict[str, Any] | None = None) -> Any:
        return await self._runtime.run_action(path, args or {}, allow_internal=True, identity=self.auth.identity)
