"""Stopping user code at its time bound, even inside a pure-Python loop that never calls the database.

Queries and mutations run synchronously on the event-loop thread (the main
thread). A `Watchdog` thread looks at the running function's deadline every
few milliseconds; once it has passed, it sends SIGUSR2 to the main thread.
The Python-level handler runs in the main thread between two bytecodes and
raises `Preempted` there, unless the main thread is inside an engine
critical section (`critical()`: e.g. updating the transaction's overlay), in
which case the engine raises at its next check (`check_deadline`). The
watchdog repeats the signal while the deadline stays passed, so user code
that swallows the exception is stopped again.

`Preempted` derives from BaseException so a user's ``except Exception`` does
not swallow it. Code on worker threads (`worker_deadline`: actions, and queries or mutations
moved off the loop) is interrupted by an asynchronous exception instead
(CPython's ``PyThreadState_SetAsyncExc``), also repeated while it runs on.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import threading
import time
from typing import Any, Iterator

POLL_SECONDS = 0.005
"""How often the watchdog looks at the deadline (also how late past the bound a stop may come)."""

SIGNAL = getattr(signal, "SIGUSR2", None)


class Preempted(BaseException):
    """Raised inside user code whose deadline passed (BaseException: ``except Exception`` cannot swallow it)."""


class _State:
    """The main thread's running function: its deadline (0: none) and critical-section depth."""

    __slots__ = ("deadline", "critical", "pending")

    def __init__(self) -> None:
        self.deadline = 0.0
        self.critical = 0
        self.pending = False


STATE = _State()
_main_ident = threading.main_thread().ident
MAIN_IDENT = _main_ident
"""The thread preemption can interrupt by signal (the main thread, where the event loop runs)."""
_watchdog: "Watchdog | None" = None
_install_lock = threading.Lock()
_handler_installed = False


_UNWATCHED = _State()  # what worker threads count their critical sections in (nobody reads it)


def guard_state() -> _State:
    """The state whose ``critical`` counter the calling thread's critical sections must raise.

    Only the main thread is interrupted by signal; other threads get a
    counter nobody reads, so they never disturb the main thread's.
    """
    return STATE if threading.get_ident() == _main_ident else _UNWATCHED


_drivers: set[Any] = set()  # code objects of the functions that run user code (see `register_driver`)


def register_driver(code: Any) -> None:
    """Declare `code` (a function's ``__code__``) as where user code runs: only below it is it interrupted."""
    _drivers.add(code)


def _on_signal(signum: int, frame: Any) -> None:
    state = STATE
    if not (state.deadline and time.monotonic() >= state.deadline):
        return
    if frame is not None and _swallows_exceptions(frame.f_code):
        return  # raised here it would be lost ("Exception ignored in ..."): the watchdog's next signal lands
    # Raise only inside user code, i.e. strictly below a driver's frame. Once the handler's
    # exception has left the driver (or while the driver itself unwinds), a late signal must not
    # land in the engine's cleanup or the event loop: then nothing is raised.
    depth = 0
    while frame is not None:
        if frame.f_code in _drivers:
            if depth == 0:
                return
            if state.critical:
                state.pending = True  # raised by the engine once it leaves the critical section
                return
            raise Preempted()
        frame = frame.f_back
        depth += 1
    # No user code is running: a deadline still set here is stale (its function already returned).
    state.deadline = 0.0


class Watchdog(threading.Thread):
    """Stops functions past their deadline: the main thread by signal, worker threads by async exception."""

    def __init__(self) -> None:
        super().__init__(name="tape-watchdog", daemon=True)
        self._stop_event = threading.Event()

    def run(self) -> None:
        state = STATE
        wait = self._stop_event.wait
        while not wait(POLL_SECONDS):
            now = time.monotonic()
            deadline = state.deadline
            if deadline and now >= deadline and _main_ident is not None:
                try:
                    signal.pthread_kill(_main_ident, SIGNAL)  # type: ignore[arg-type]
                except (ProcessLookupError, OSError):  # the main thread is gone: the process is ending
                    return
            for ident, worker in list(_workers.items()):
                if worker.deadline and now >= worker.deadline:
                    with _worker_lock:  # not after the block has ended (see `worker_deadline`)
                        if worker.deadline and now >= worker.deadline:
                            _raise_in_thread(ident, Preempted)

    def stop(self) -> None:
        self._stop_event.set()


_workers: dict[int, _State] = {}
_worker_lock = threading.Lock()


def _raise_in_thread(ident: int, exc_type: type[BaseException]) -> bool:
    """Ask CPython to raise `exc_type` in thread `ident` at its next bytecode; True if the thread exists."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))
    if done > 1:  # more than one thread state matched: undo, as the C API documents
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)
        return False
    return done == 1


raise_in_thread = _raise_in_thread


@contextlib.contextmanager
def worker_deadline(seconds: float) -> Iterator[None]:
    """Bound user code run in the block on a worker thread; the watchdog interrupts it past `seconds`.

    The interrupt is an asynchronous `Preempted` that may land anywhere in the
    block, so the caller must treat every object the block touched as
    undefined afterwards (discard it).
    """
    install_watchdog()
    ident = threading.get_ident()
    state = _workers.get(ident)
    if state is None:
        state = _workers[ident] = _State()
    state.deadline = time.monotonic() + seconds
    try:
        yield
    finally:
        with _worker_lock:
            state.deadline = 0.0
            # An interrupt sent but not yet raised must not escape the block: withdraw it.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)


def expire_workers() -> None:
    """Stop the user code running on every worker thread now (the server is shutting down)."""
    now = time.monotonic()
    for state in list(_workers.values()):
        if state.deadline:
            state.deadline = now


def install_watchdog() -> None:
    """Start the watchdog thread once (idempotent)."""
    global _watchdog
    with _install_lock:
        if _watchdog is None:
            _watchdog = Watchdog()
            _watchdog.start()


def available() -> bool:
    """True when preemption works here: on the main thread of a platform with SIGUSR2."""
    return SIGNAL is not None and threading.get_ident() == _main_ident


_gc_started = 0.0


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    """A collector pause on the main thread does not count against the running function's time.

    A full collection of a large heap can take tens of milliseconds; counted, it would push an innocent
    mutation past its 20 ms slice and move its path off the loop (`SlowPaths`) for nothing.
    """
    global _gc_started
    if threading.get_ident() != _main_ident:
        return
    if phase == "start":
        _gc_started = time.monotonic()
    elif _gc_started:
        if STATE.deadline:
            STATE.deadline += time.monotonic() - _gc_started
        _gc_started = 0.0


_ON_GC_CODE = _on_gc.__code__
_CALLBACK_FILES = ("_weakrefset.py", "weakref.py")


def _swallows_exceptions(code: Any) -> bool:
    """Whether `code` runs where the interpreter discards exceptions: collector and weakref callbacks,
    finalizers."""
    return (code is _ON_GC_CODE or code.co_name == "__del__"
            or code.co_filename.endswith(_CALLBACK_FILES))


def install() -> bool:
    """Install the signal handler and start the watchdog (idempotent); False if preemption is unavailable."""
    global _handler_installed
    if _handler_installed:
        return True
    if not available():
        return False
    signal.signal(SIGNAL, _on_signal)  # type: ignore[arg-type]
    gc.callbacks.append(_on_gc)
    _handler_installed = True
    install_watchdog()
    return True


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[bool]:
    """Bound the user code run inside the block to `seconds`; yields whether preemption is active.

    Nested blocks keep the earlier (outer) deadline when it is sooner.
    """
    if not (threading.get_ident() == _main_ident and install()):
        yield False
        return
    state = STATE
    outer = state.deadline
    mine = time.monotonic() + seconds
    state.deadline = min(outer, mine) if outer else mine
    try:
        yield True
    finally:
        state.deadline = outer
        if not outer:
            state.pending = False


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """Engine code that must not be interrupted halfway (a preemption waits until it ends)."""
    state = STATE
    state.critical += 1
    try:
        yield
    finally:
        state.critical -= 1


def check_deadline() -> None:
    """Raise `Preempted` if a preemption arrived during a critical section (call outside of one)."""
    state = STATE
    if state.pending and not state.critical:
        state.pending = False
        raise Preempted()


def main_thread_running() -> bool:
    """Whether the calling thread is the one preemption can interrupt."""
    return threading.get_ident() == _main_ident and os.name == "posix"
