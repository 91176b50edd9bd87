"""Errors raised by the function runtime."""
from __future__ import annotations

import uuid
from typing import Any


class AppError(Exception):
    """An error a function raises on purpose; the client receives `data` as errorData.

    >>> raise AppError({"code": "NOT_FOUND"})
    """

    def __init__(self, data: Any = None, message: str | None = None) -> None:
        self.data = data
        super().__init__(message or (data if isinstance(data, str) else f"AppError: {data!r}"))


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

    def __init__(self, path: str) -> None:
        self.request_id = uuid.uuid4().hex[:16]
        super().__init__(f"[Request ID: {self.request_id}] Server Error: uncaught exception in {path}")


class OutcomeUnknown(EngineError):
    """The log did not acknowledge a mutation in time: it may or may not be committed.

    The committer settles the doubt by itself once the log answers; a retry
    with the same (session id, request id) then gets the true answer.
    """


class WritesUnavailable(EngineError):
    """The committer cannot write right now (it is recovering from a log failure): the mutation did not run."""
