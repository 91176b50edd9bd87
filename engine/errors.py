"""Errors raised by the function runtime."""
from __future__ import annotations

import json
import math
import uuid
from typing import Any


JS_SAFE_INT = 1 << 53
"""Integers up to this magnitude are exact as JavaScript numbers."""


def _js_value(value: Any) -> Any:
    """`value` as the JS client holds it, for JSON.stringify (ints within ±2**53 as numbers, others as "Nn")."""
    t = type(value)
    if t is int:
        return value if -JS_SAFE_INT <= value <= JS_SAFE_INT else f"{value}n"
    if t is float:
        if not math.isfinite(value):
            return None  # JSON.stringify(NaN) is null
        return int(value) if value == int(value) and abs(value) < 1e21 else value
    if t is dict:
        return {str(k): _js_value(v) for k, v in value.items()}
    if t is list or t is tuple:
        return [_js_value(v) for v in value]
    if t is bytes or isinstance(value, (bytearray, memoryview)):
        return {}  # JSON.stringify(ArrayBuffer)
    return value


def js_stringify(value: Any) -> str:
    """JSON text of a value as the JS client's `ConvexError` message shows it (compact, like JSON.stringify)."""
    return json.dumps(_js_value(value), separators=(",", ":"), ensure_ascii=False)


class AppError(Exception):
    """An error a function raises on purpose, Convex's ``ConvexError``: the client receives `data` as errorData.

    The message is Convex's: ``Uncaught ConvexError: {"code":"NOT_FOUND"}`` (a string `data` as is), so
    the official clients raise a ``ConvexError`` whose ``.data`` is `data`.

    >>> raise AppError({"code": "NOT_FOUND"})
    """

    def __init__(self, data: Any = None, message: str | None = None) -> None:
        self.data = data
        if message is None:  # (an explicit message is used as it is: e.g. one forwarded from the committer)
            message = f"Uncaught ConvexError: {data if isinstance(data, str) else js_stringify(data)}"
        super().__init__(message)


class EngineError(Exception):
    """A failure the engine reports to the caller with a clear message (not the app's fault)."""


class FunctionNotFound(EngineError):
    """No public function is registered at that path."""


class ArgumentError(EngineError):
    """Arguments (or a document) failed validation; the message names the field and expected type."""


class LimitExceeded(EngineError):
    """A transaction exceeded one of the engine's limits."""


class ReadOnlyError(EngineError):
    """A query tried to write."""


class SuspendedError(EngineError):
    """A query or mutation awaited real I/O, which would break serial execution."""


class AppLoadError(EngineError):
    """An app module or schema failed to load; the message names the file and line."""


class SchemaViolation(EngineError):
    """Existing data violates a new schema; `ids` lists offending documents."""

    def __init__(self, message: str, ids: list[str]) -> None:
        super().__init__(message)
        self.ids = ids


class InternalFunctionError(EngineError):
    """An unexpected exception inside app code: the client sees only a request id."""

    def __init__(self, path: str, request_id: str | None = None) -> None:
        self.request_id = request_id or uuid.uuid4().hex[:16]
        super().__init__(f"[Request ID: {self.request_id}] Server Error: uncaught exception in {path}")


class OutcomeUnknown(EngineError):
    """The log did not acknowledge a mutation in time: it may or may not be committed.

    The committer settles the doubt by itself once the log answers; a retry
    with the same (session id, request id) then gets the true answer.
    """


class WritesUnavailable(EngineError):
    """The committer cannot write right now (it is recovering from a log failure): the mutation did not run."""
