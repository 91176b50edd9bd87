"""Driving query and mutation handlers to completion without the event loop."""
from __future__ import annotations

import logging
import time
from threading import get_ident
from typing import Any, Coroutine, Iterator

from engine import function_logs, preempt
from engine.errors import AppError, EngineError, InternalFunctionError, LimitExceeded, SuspendedError
from engine.metrics import APP_ERROR, ERROR, FUNCTION_SECONDS, SUCCESS, TIMEOUT, observe_function
from values import ConvexValueError, check_value

log = logging.getLogger("tape.engine")
observe_call = FUNCTION_SECONDS.observe


def drive(coro: Coroutine[Any, Any, Any], path: str) -> Any:
    """Run `coro` to completion synchronously.

    Queries and mutations must not suspend on real I/O: the database calls
    complete without yielding, so a handler that does yield is awaiting
    something else (a sleep, a network call) and is failed with a clear error.
    """
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise SuspendedError(f"{path} awaited real I/O (e.g. asyncio.sleep or a network call); "
                         "queries and mutations must be deterministic — move I/O into an action")


preempt.register_driver(drive.__code__)


class SlowPaths:
    """Function paths that outran their slice on the event loop, so they run off it.

    A mark lasts `retry_seconds`; after that the next call tries the loop
    again (and is marked again if it still outruns its slice). A transient
    stall (a GC pause, a busy machine) so demotes a function for a few
    seconds, not for the life of the process.
    """

    def __init__(self, retry_seconds: float = 10.0) -> None:
        self.retry_seconds = retry_seconds
        self._marked: dict[str, float] = {}

    def add(self, path: str) -> None:
        self._marked[path] = time.monotonic()

    def __contains__(self, path: object) -> bool:
        marked = self._marked.get(path)  # type: ignore[arg-type]
        if marked is None:
            return False
        if time.monotonic() - marked > self.retry_seconds:
            del self._marked[path]  # type: ignore[arg-type]
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter([path for path in list(self._marked) if path in self])


class SliceExpired(Exception):
    """A handler outran its slice on the event loop; it has no effect and must run again off the loop."""


def run_handler(coro: Coroutine[Any, Any, Any], path: str, max_seconds: float | None = None,
                slice_seconds: float | None = None) -> Any:
    """`drive` plus error mapping: AppError and EngineError pass through, other exceptions are hidden.

    With `slice_seconds`, a handler still running after that long is stopped
    with `SliceExpired` (the caller runs it again off the event loop).
    The time bound stops the handler wherever it is: on the main thread the
    watchdog preempts even a pure-Python loop (`engine.preempt`); the bound is
    also checked at every database call (`Transaction.tick`) and once more
    here, so a handler that computes for too long never commits.
    """
    started = time.monotonic()
    bound = max_seconds if slice_seconds is None or max_seconds is None else min(max_seconds, slice_seconds)
    state = preempt.STATE
    armed = bound is not None and get_ident() == preempt.MAIN_IDENT and preempt.install()
    outer = state.deadline
    try:
        if armed:  # (inline `preempt.deadline`: this runs for every function call)
            mine = started + bound  # type: ignore[operator]
            state.deadline = mine if not outer or mine < outer else outer
            try:
                result = drive(coro, path)
            finally:
                state.deadline = outer
        else:
            result = drive(coro, path)
    except preempt.Preempted:
        coro.close()
        if bound != max_seconds:
            raise SliceExpired(path) from None  # not counted: it runs again off the loop
        observe_function(path, TIMEOUT, started)
        raise LimitExceeded(f"{path} ran longer than {max_seconds:g}s") from None
    except AppError:
        observe_function(path, APP_ERROR, started)
        raise
    except EngineError as exc:
        observe_function(path, TIMEOUT if isinstance(exc, LimitExceeded) else ERROR, started)
        raise
    except Exception as exc:  # app bug: log the traceback, give the client a request id only
        observe_function(path, ERROR, started)
        flog = function_logs.current()
        error = InternalFunctionError(path, flog.request_id if flog is not None else None)
        log.error("uncaught exception in %s (request %s)", path, error.request_id, exc_info=exc,
                  extra={"request_id": error.request_id, "path": path})
        raise error from None
    if max_seconds is not None and time.monotonic() - started > max_seconds:
        observe_function(path, TIMEOUT, started)
        raise LimitExceeded(f"{path} ran longer than {max_seconds:g}s")
    try:
        check_result(result, path)
    except EngineError:
        observe_function(path, ERROR, started)
        raise
    observe_call((path, SUCCESS), time.monotonic() - started)  # (observe_function, inlined)
    return result


def check_result(result: Any, path: str) -> None:
    """Function results must be Convex values."""
    try:
        check_value(result, f"return value of {path}")
    except ConvexValueError as exc:
        raise EngineError(str(exc)) from None
