"""The exceptions the Tape client raises to its callers."""
from __future__ import annotations

from typing import Any

from values.sync_wire import MISSING
from values import from_wire

__all__ = [
    "ClientError",
    "FunctionError",
    "ClientAppError",
    "ConvexError",
    "ConnectionLostError",
    "ClientClosedError",
    "FatalServerError",
    "function_error",
]


class ClientError(Exception):
    """Base class of every error raised by the Tape client."""


class FunctionError(ClientError):
    """A server function failed (``QueryFailed`` or a failed Mutation/ActionResponse).

    ``message`` is the server's error message, ``data`` the ``errorData``
    payload (None when the server sent none), ``path`` and ``kind``
    (``"query"``, ``"mutation"`` or ``"action"``) name the function.
    """

    def __init__(self, message: str, data: Any = None, *, path: str = "", kind: str = "") -> None:
        self.message = message
        self.data = data
        self.path = path
        self.kind = kind
        super().__init__(f"{kind} {path}: {message}" if path else message)


class ClientAppError(FunctionError):
    """A function raised ``AppError``: the server sent ``errorData``, available as ``.data``.

    The Python counterpart of the JS client's ``ConvexError``.
    """


ConvexError = ClientAppError
"""Alias matching the official clients' name for errors that carry data."""


class ConnectionLostError(ClientError, ConnectionError):
    """The socket dropped while an action was in flight; actions are not retried (not idempotent)."""


class ClientClosedError(ClientError, ConnectionError):
    """The client was closed (or stopped by a server ``FatalError``) while this was pending."""


class FatalServerError(ClientError):
    """The server sent ``FatalError``: like the official client, this client stops for good."""


def function_error(kind: str, path: str, message: Any, error_data: Any) -> FunctionError:
    """The exception for a failed function; ``error_data`` is wire JSON, or `MISSING` when absent."""
    text = str(message)
    if error_data is MISSING:
        return FunctionError(text, None, path=path, kind=kind)
    return ClientAppError(text, from_wire(error_data, "errorData"), path=path, kind=kind)
