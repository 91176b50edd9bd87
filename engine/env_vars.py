"""Environment variables of a deployment: stored in the log, read by functions as `ctx.env`.

A variable is a document ``{"name", "value"}`` of the system table
`_environment_variables`, written by system records of the committer (function
``_system/env:set``), so a restore, a time-travel query and every replica see
the values the log says, and a change needs no restart: the next function call
reads the new value.

Functions read them through ``ctx.env`` (a read-only mapping: ``ctx.env["KEY"]``,
``ctx.env.get("KEY", default)``), not ``os.environ``: the process environment is
shared by every function running concurrently on the server's threads and
would make a value depend on the process rather than the log. A query that
reads ``ctx.env`` records the table in its read set, so a subscription re-runs
when a variable changes.

Names follow Convex: a letter, then letters, digits or underscores, at most 40
characters. Values are strings of at most 8 KiB (UTF-8).
"""
from __future__ import annotations

import asyncio
import re
import weakref
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from engine.db import QueryBuilder, Transaction
from engine.errors import ArgumentError
from engine.scheduler import REMOVE
from projections.types import DocumentReader
from values import decode_doc

if TYPE_CHECKING:
    from engine.committer import MutationOutcome
    from engine.runtime import Runtime

ENV_TABLE = "_environment_variables"
SET_ENV_FUNCTION = "_system/env:set"
MAX_NAME_LENGTH = 40
MAX_VALUE_BYTES = 8 * 1024
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

_LOCKS: "weakref.WeakKeyDictionary[Any, asyncio.Lock]" = weakref.WeakKeyDictionary()
_READ: "weakref.WeakKeyDictionary[Transaction, EnvVars]" = weakref.WeakKeyDictionary()  # one read per transaction


class EnvVarError(ArgumentError):
    """A bad variable name or value, or removing a variable that is not set."""


def check_name(name: Any) -> str:
    """`name` if it is a valid variable name, else EnvVarError saying what is wrong."""
    if type(name) is not str or not name:
        raise EnvVarError(f"environment variable name: expected a non-empty string, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise EnvVarError(f"environment variable name {name[:50]!r}: longer than {MAX_NAME_LENGTH} characters")
    if not _NAME.fullmatch(name):
        raise EnvVarError(f"environment variable name {name!r}: must start with a letter and hold only "
                          "letters, digits and underscores")
    return name


def check_value(name: str, value: Any) -> str:
    """`value` if it is a valid value for variable `name` (a string of at most 8 KiB)."""
    if type(value) is not str:
        raise EnvVarError(f"environment variable {name}: value must be a string, got {type(value).__name__}")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_VALUE_BYTES:
        raise EnvVarError(f"environment variable {name}: value is {size} bytes, over the {MAX_VALUE_BYTES} byte limit")
    return value


class EnvVars(Mapping[str, str]):
    """`ctx.env`: the deployment's environment variables, read-only (`env["K"]`, `env.get("K")`, `in`, iteration)."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def __getitem__(self, name: str) -> str:
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f"environment variable {name!r} is not set (tape env set URL {name} VALUE)") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"EnvVars({sorted(self._values)})"


def env_of_transaction(tx: Transaction) -> EnvVars:
    """The variables as transaction `tx` sees them (its reads join the read set: subscriptions re-run on a change)."""
    env = _READ.get(tx)
    if env is None:  # (no function can write the table, so one read serves the whole transaction)
        docs = QueryBuilder(tx, ENV_TABLE).collect_now()
        env = _READ[tx] = EnvVars({d["name"]: d["value"] for d in docs})
    return env


def env_documents(reader: DocumentReader) -> dict[str, dict[str, Any]]:
    """The variable documents of a projection (or a restored store), by name."""
    out: dict[str, dict[str, Any]] = {}
    for raw in reader.iter_documents(ENV_TABLE):
        doc = decode_doc(raw)
        out[doc["name"]] = doc
    return out


def env_of_reader(reader: DocumentReader) -> EnvVars:
    """The variables of a projection, without a transaction (actions, the admin API)."""
    return EnvVars({name: doc["value"] for name, doc in env_documents(reader).items()})


_LATEST: "weakref.WeakKeyDictionary[Any, tuple[int, EnvVars]]" = weakref.WeakKeyDictionary()


def env_now(projection: Any) -> EnvVars:
    """The variables of a live projection now, read again only after it applied something new (actions)."""
    offset = projection.applied_offset
    cached = _LATEST.get(projection)
    if cached is not None and cached[0] == offset:
        return cached[1]
    env = env_of_reader(projection)
    _LATEST[projection] = (offset, env)
    return env


async def change_env(runtime: "Runtime", set_values: Mapping[str, Any] | None = None,
                     remove: list[str] | None = None) -> "MutationOutcome":
    """Set and remove variables in one logged system record (on the committer node).

    Raises EnvVarError for a bad name or value or when a name to remove is not set.
    The outcome's value is the list of document ids written; it is answered once the record is
    durable and applied, so the next function call sees the change.
    """
    set_values = {check_name(k): check_value(k, v) for k, v in (set_values or {}).items()}
    names = [check_name(n) for n in (remove or [])]
    both = set(set_values) & set(names)
    if both:
        raise EnvVarError(f"environment variable {sorted(both)[0]}: both set and removed in one change")
    lock = _LOCKS.setdefault(runtime, asyncio.Lock())
    async with lock:  # one writer at a time, so two sets of a new name never make two documents
        current = env_documents(runtime.projection)
        missing = [n for n in names if n not in current]
        if missing:
            raise EnvVarError(f"environment variable {missing[0]} is not set")
        updates: list[tuple[str, str | None, Any]] = []
        for name, value in set_values.items():
            doc = current.get(name)
            if doc is None:
                updates.append((ENV_TABLE, None, lambda _d, n=name, v=value: {"name": n, "value": v}))
            elif doc["value"] != value:
                updates.append((ENV_TABLE, doc["_id"], lambda d, v=value: None if d is None else {**d, "value": v}))
        for name in names:
            updates.append((ENV_TABLE, current[name]["_id"], lambda _d: REMOVE))
        return await runtime.committer.system_commit(SET_ENV_FUNCTION, updates)  # ([]: answered, nothing written)
