"""Function logs: `print` and `logging` output of one function call, captured per call.

Convex apps debug with ``console.log``: the lines a function prints travel
with its result (``logLines`` of QueryUpdated / MutationResponse /
ActionResponse and of HTTP answers), the official clients print them in the
browser console as ``[CONVEX Q(path)] [LOG] text``, and ``convex logs``
streams them. Tape does the same for Python functions:

* Each call runs inside `capture(path, kind)`, which sets a context variable.
  Handlers may run on the event loop, on query worker threads, on the
  writer's thread or on action workers, many at once; a context variable
  belongs to one thread (and one asyncio task), so lines never cross calls.
* ``sys.stdout`` / ``sys.stderr`` are replaced by proxies (`install`) that
  send text written inside a call to that call's log (stdout as ``LOG``,
  stderr as ``ERROR``) and pass everything else through unchanged.
* Records logged inside a call are taken as they are made (a wrapper of the
  log record factory, so handlers and ``basicConfig`` are left alone); levels
  DEBUG/INFO/WARNING/ERROR map to Convex's DEBUG/INFO/WARN/ERROR. Logger
  levels apply as usual; the app's own modules log from DEBUG up.
* Lines look as Convex sends them: ``[LEVEL] text``. A call keeps at most
  `MAX_LINES` lines (the last one then says the rest was dropped, as
  Convex's does), a line at most `MAX_LINE_BYTES` bytes (cut with
  ``" (truncated due to length)"``) and at most `MAX_CALL_BYTES` in all.
* When a call ends its lines go to the server log (logger ``tape.functions``,
  with the request id and function path) and to the `LogStream` that
  ``GET /api/admin/logs`` / ``tape logs`` follow.
"""
from __future__ import annotations

import asyncio
import io
import logging
import sys
import threading
import time
import uuid
from collections import deque
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator, TextIO

MAX_LINES = 256
"""Lines kept per call; the last of them is an ``[ERROR] Log overflow ...`` notice when more were written."""
MAX_LINE_BYTES = 32768
"""UTF-8 bytes kept of one line (longer lines are cut and marked)."""
MAX_CALL_BYTES = 256 * 1024
"""UTF-8 bytes of log kept per call in all."""
TRUNCATED_SUFFIX = " (truncated due to length)"
SERVER_NAMESPACES = frozenset({"tape", "aiohttp", "asyncio", "concurrent"})
"""Top-level logger names whose records are the server's own, never a function's log."""

LEVELS = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARN", logging.ERROR: "ERROR",
          logging.CRITICAL: "ERROR"}

server_log = logging.getLogger("tape.functions")


def level_name(levelno: int) -> str:
    """Convex's level for a `logging` level number."""
    if levelno >= logging.ERROR:
        return "ERROR"
    if levelno >= logging.WARNING:
        return "WARN"
    if levelno >= logging.INFO:
        return "INFO"
    return "DEBUG"


def _cut(text: str, limit: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding fits in `limit` bytes."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")


class FunctionLog:
    """The log of one function call: Convex-formatted lines, bounded (see the module docstring)."""

    __slots__ = ("path", "kind", "_request_id", "lines", "_bytes", "_pending", "_full", "echoed")

    def __init__(self, path: str, kind: str) -> None:
        self.path = path
        self.kind = kind
        self._request_id: str | None = None
        self.lines: list[str] = []
        self._bytes = 0
        self._pending: dict[str, str] = {}  # level -> text written without its newline yet
        self._full = False
        self.echoed: set[int] = set()  # indexes of lines the server log already has (root logger records)

    @property
    def request_id(self) -> str:
        """A random id naming this call in the server log and in error messages (made on first use)."""
        if self._request_id is None:
            self._request_id = uuid.uuid4().hex[:16]
        return self._request_id

    def add(self, level: str, text: str, echoed: bool = False) -> None:
        """Add one line ``[level] text`` (bounded: see `MAX_LINES`, `MAX_LINE_BYTES`, `MAX_CALL_BYTES`).

        `echoed`: the server log shows this line already (it need not be written there again).
        """
        if self._full:
            return
        line = f"[{level}] {text}"
        size = len(line) if line.isascii() else len(line.encode("utf-8", "replace"))
        if size > MAX_LINE_BYTES:
            line = _cut(line, MAX_LINE_BYTES - len(TRUNCATED_SUFFIX)) + TRUNCATED_SUFFIX
            size = MAX_LINE_BYTES
        if len(self.lines) >= MAX_LINES - 1:
            self._overflow(f"Log overflow (maximum {MAX_LINES}). Remaining log lines omitted.")
            return
        if self._bytes + size > MAX_CALL_BYTES:
            self._overflow(f"Log overflow (maximum {MAX_CALL_BYTES // 1024} KiB). Remaining log lines omitted.")
            return
        if echoed:
            self.echoed.add(len(self.lines))
        self.lines.append(line)
        self._bytes += size

    def _overflow(self, notice: str) -> None:
        self.lines.append(f"[ERROR] {notice}")
        self._full = True

    def write(self, level: str, text: str) -> None:
        """Stream text (as `print` writes it): every complete line becomes one log line."""
        pending = self._pending.get(level, "") + text
        if "\n" not in pending:
            if len(pending) > MAX_LINE_BYTES:  # a huge line without a newline: cut it now
                self.add(level, pending)
                pending = ""
            self._pending[level] = pending
            return
        *complete, rest = pending.split("\n")
        for line in complete:
            self.add(level, line)
        self._pending[level] = rest

    def finish(self) -> list[str]:
        """Flush text written without a final newline; returns the lines."""
        if self._pending:
            for level, text in self._pending.items():
                if text:
                    self.add(level, text)
            self._pending.clear()
        return self.lines


_CURRENT: ContextVar[FunctionLog | None] = ContextVar("tape_function_log", default=None)


def current() -> FunctionLog | None:
    """The log of the call running in this context, if any."""
    return _CURRENT.get()


@dataclass
class LogEntry:
    """One finished call in the `LogStream`: who ran, what it printed, how it ended."""

    ts: float
    request_id: str
    path: str
    kind: str
    lines: list[str]
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ts": self.ts, "requestId": self.request_id, "path": self.path, "kind": self.kind,
                               "logLines": self.lines}
        if self.error is not None:
            out["error"] = self.error
        return out


Listener = Callable[[LogEntry], None]


@dataclass
class LogStream:
    """The most recent calls' logs in a bounded ring, and live listeners (thread-safe).

    Calls finish on any thread; a listener registered with its event loop is
    called on that loop (`asyncio.AbstractEventLoop.call_soon_threadsafe`).
    """

    capacity: int = 1000
    _ring: deque[LogEntry] = field(default_factory=deque)
    _listeners: dict[int, tuple[asyncio.AbstractEventLoop, Listener]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next: int = 0

    def publish(self, entry: LogEntry) -> None:
        with self._lock:
            self._ring.append(entry)
            while len(self._ring) > self.capacity:
                self._ring.popleft()
            listeners = list(self._listeners.values())
        for loop, listener in listeners:
            try:
                loop.call_soon_threadsafe(listener, entry)
            except RuntimeError:  # that loop is closed
                pass

    def recent(self, n: int) -> list[LogEntry]:
        """The last `n` entries, oldest first."""
        with self._lock:
            return list(self._ring)[-n:] if n > 0 else []

    def listen(self, listener: Listener, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """Call `listener(entry)` on `loop` for every entry published from now on; returns the unsubscribe."""
        with self._lock:
            self._next += 1
            token = self._next
            self._listeners[token] = (loop, listener)

        def stop() -> None:
            with self._lock:
                self._listeners.pop(token, None)
        return stop

    @property
    def has_listeners(self) -> bool:
        return bool(self._listeners)


@contextmanager
def capture(path: str, kind: str) -> Iterator[FunctionLog | None]:
    """Capture the logs of one call of `path` (a "query", "mutation" or "action").

    Yields the call's `FunctionLog`, or None for a nested call (a mutation's
    ``ctx.run_query``), which writes into its caller's log.
    """
    if _CURRENT.get() is not None:
        yield None
        return
    entry = FunctionLog(path, kind)
    token = _CURRENT.set(entry)
    try:
        yield entry
    finally:
        _CURRENT.reset(token)
        entry.finish()


def publish(entry: FunctionLog, stream: LogStream | None, error: BaseException | None = None) -> None:
    """Report a finished call: its lines to the server log (with request id and path) and to `stream`."""
    lines = entry.lines
    if lines:
        request_id = entry.request_id
        for i, line in enumerate(lines):
            if i not in entry.echoed:
                server_log.info("%s %s [request %s] %s", entry.kind, entry.path, request_id, line)
    if stream is not None and (lines or error is not None):
        stream.publish(LogEntry(time.time(), entry.request_id, entry.path, entry.kind, list(lines),
                                None if error is None else str(error)))


def begin(path: str, kind: str) -> tuple[FunctionLog | None, Token[FunctionLog | None] | None]:
    """`capture` without a with-block: (the call's log or None when nested, a token for `end`)."""
    if _CURRENT.get() is not None:
        return None, None
    entry = FunctionLog(path, kind)
    return entry, _CURRENT.set(entry)


def end(entry: FunctionLog | None, token: Token[FunctionLog | None] | None) -> list[str]:
    """Finish a call `begin` started; returns its lines ([] for a nested call)."""
    if entry is None or token is None:
        return []
    _CURRENT.reset(token)
    return entry.finish()


async def isolated(coro: Awaitable[Any]) -> Any:
    """Await `coro` outside any call's log (an action's ``ctx.run_query`` is a call of its own)."""
    token = _CURRENT.set(None)
    try:
        return await coro
    finally:
        _CURRENT.reset(token)


def attach(error: BaseException, lines: list[str]) -> None:
    """Remember a failed call's log lines on its error (the gateway sends them with the failure)."""
    try:
        error.log_lines = list(lines)  # type: ignore[attr-defined]
    except AttributeError:  # an exception type with __slots__
        pass


def lines_of(error: BaseException) -> list[str]:
    """The log lines a failed call attached to its error ([] when none)."""
    return getattr(error, "log_lines", None) or []


# --- process-wide hooks ---------------------------------------------------------------------------

_STREAM_HANDLER_EMIT = logging.StreamHandler.emit.__code__


class _StreamProxy(io.TextIOBase):
    """Stands in for sys.stdout / sys.stderr: text written inside a call goes to its log."""

    def __init__(self, target: TextIO, level: str) -> None:
        self._target = target
        self._level = level

    def write(self, text: str) -> int:  # type: ignore[override]
        entry = _CURRENT.get()
        if entry is None or sys._getframe(1).f_code is _STREAM_HANDLER_EMIT:  # (a log handler: not the call's print)
            return self._target.write(text)
        entry.write(self._level, str(text))
        return len(text)

    def flush(self) -> None:
        if _CURRENT.get() is None:
            self._target.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._target.isatty()

    def fileno(self) -> int:
        return self._target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def _message(record: logging.LogRecord) -> str:
    try:
        message = record.getMessage()
    except Exception:  # a bad format string in user code: show it rather than fail
        message = f"{record.msg!r} {record.args!r}"
    if record.exc_info and record.exc_info[0] is not None:
        message += "\n" + logging.Formatter().formatException(record.exc_info)
    return message


APP_PACKAGE_PREFIX = "tape_app_"
"""Loggers of app modules (`engine.app`): their records are taken by `_AppHandler`."""


def _capture_record(record: logging.LogRecord) -> None:
    """A record logged inside a call (not by the server, not by the app's own modules) joins the call's log.

    The logger's handlers print it to the server log as usual, so it is marked echoed.
    """
    entry = _CURRENT.get()
    if entry is None:
        return
    top = record.name.partition(".")[0]
    if top in SERVER_NAMESPACES or top.startswith(APP_PACKAGE_PREFIX):
        return
    entry.add(level_name(record.levelno), _message(record), echoed=True)


class _AppHandler(logging.Handler):
    """Handler of an app's package logger (which does not propagate): its records inside a call join the
    call's log (and reach the server log with it); outside a call they go to the ``tape.app`` logger."""

    def emit(self, record: logging.LogRecord) -> None:
        entry = _CURRENT.get()
        if entry is not None:
            entry.add(level_name(record.levelno), _message(record))
            return
        outside = logging.getLogger("tape.app")
        if outside.isEnabledFor(record.levelno):
            outside.handle(record)


_installed_lock = threading.Lock()
_APP_HANDLER = _AppHandler(logging.NOTSET)
_factory_installed = False


def _install_record_factory() -> None:
    """Wrap the log record factory: every record created (its logger's level allowed it) passes by
    `_capture_record`. Unlike a root handler this leaves the handlers alone (`basicConfig` still works)."""
    global _factory_installed
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _CURRENT.get() is not None:
            _capture_record(record)
        return record
    logging.setLogRecordFactory(factory)
    _factory_installed = True


def install() -> None:
    """Install the stdout/stderr proxies and the logging handler (idempotent; process-wide)."""
    with _installed_lock:
        if not isinstance(sys.stdout, _StreamProxy):
            sys.stdout = _StreamProxy(sys.stdout, "LOG")  # type: ignore[assignment]
        if not isinstance(sys.stderr, _StreamProxy):
            sys.stderr = _StreamProxy(sys.stderr, "ERROR")  # type: ignore[assignment]
        if not _factory_installed:
            _install_record_factory()
        if server_log.level == logging.NOTSET:
            server_log.setLevel(logging.INFO)  # function output reaches the server log at its default level


def enable_app_logging(package: str) -> None:
    """Let the app's own modules (``logging.getLogger(__name__)``) log from DEBUG up into their calls' logs."""
    logger = logging.getLogger(package)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    if _APP_HANDLER not in logger.handlers:
        logger.addHandler(_APP_HANDLER)
