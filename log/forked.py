"""Running a producer of items in a forked child process, the items streamed back.

For CPU-bound reading work (decoding log frames, rendering change events) that
would otherwise share the GIL with whoever consumes the result: the child — a
fork, so the producer needs no pickling and starts at once with every module
loaded — runs `produce()` and sends each item through a pipe (marshalled:
several times cheaper than pickle for the tuples, bytes and numbers this is
for; pickled if it holds anything else); the parent loads them while the
child works ahead on the next ones (a thread of the parent drains the pipe
into a short queue, so the child does not wait for the consumer).

The child only computes and writes to its pipe: it never returns into the
parent's code (it leaves with ``os._exit``), runs no event loop, takes no lock
another thread could have held at the fork and ignores the parent's signal
handlers. An exception in the child is re-raised in the parent (pickled, so
without its traceback). Closing the iterator early kills the child.

`worthwhile()` says whether to use it: it needs POSIX ``fork`` and a core to
spare (the one-minute load average at least half a core below the CPUs this
process may use: on a busy machine the child's extra work — serialising the
items — costs more than running beside the consumer saves). The environment
variable ``TAPE_FORKED_READS`` overrides the guess: ``1`` always, ``0`` never.
Callers keep an in-process path for small jobs and for when it is not worth it.
"""
from __future__ import annotations

import asyncio
import gc
import marshal
import os
import pickle
import queue
import signal
import struct
import sys
import threading
import time
import warnings
from typing import Any, AsyncIterator, Callable, Iterable

_HEAD = struct.Struct("<BQ")  # kind, payload length
_ITEM, _PICKLED, _ERROR, _END = 0, 1, 2, 3
_PIPE_BYTES = 1 << 20  # ask for a pipe this large (fewer, larger reads and writes)
_AHEAD = 4  # items read from the pipe ahead of the consumer (beyond those in the pipe)
_PUMP_STOP_SECONDS = 5.0  # (only another fork holding the pipe open could keep the pump from its EOF)


def worthwhile(watched: bool = False) -> bool:
    """Whether `forked_items` can run here and is likely to pay off (see the module docstring).

    `watched`: the caller notices a child that falls behind and carries on
    without it, so a second CPU is enough (the load is not consulted).
    """
    if not hasattr(os, "fork"):
        return False
    setting = os.environ.get("TAPE_FORKED_READS", "").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return False
    if setting in ("1", "true", "yes", "on"):
        return True
    try:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if watched:
            return cpus >= 2
        return os.getloadavg()[0] <= cpus - 0.5  # (the caller's own busy thread counts about 1)
    except OSError:
        return False


async def forked_items(produce: Callable[[], Iterable[Any]]) -> AsyncIterator[Any]:
    """Yield the items of ``produce()``, computed in a forked child process (see the module docstring)."""
    r, w = os.pipe()
    try:
        _grow_pipe(w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "fork() in a multi-threaded process"
            pid = os.fork()
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    if pid == 0:  # the child: never returns
        os.close(r)
        _child(w, produce)
    os.close(w)
    reader = os.fdopen(r, "rb", buffering=_PIPE_BYTES)
    messages: queue.Queue[tuple[int, Any]] = queue.Queue(_AHEAD)
    pump = threading.Thread(target=_pump, args=(reader, messages), name=f"tape-forked-{pid}", daemon=True)
    pump.start()
    try:
        while True:
            try:
                kind, data = messages.get_nowait()
            except queue.Empty:
                kind, data = await asyncio.to_thread(messages.get)
            if kind == _ITEM:
                yield marshal.loads(data)
            elif kind == _PICKLED:
                yield pickle.loads(data)
            elif kind == _END:
                return
            else:
                raise data if isinstance(data, BaseException) else pickle.loads(data)
    finally:
        _kill(pid)  # (a child that is done is a zombie by now: the kill is harmless)
        give_up = time.monotonic() + _PUMP_STOP_SECONDS
        while pump.is_alive() and time.monotonic() < give_up:  # the pipe's far end is closed: EOF stops it
            try:
                messages.get_nowait()
            except queue.Empty:
                pump.join(0.01)
        try:  # wakes a `messages.get` still waiting in a worker thread (when this generator was cancelled)
            messages.put_nowait((_END, None))
        except queue.Full:
            pass
        if not pump.is_alive():
            reader.close()
        _reap(pid)


def _pump(reader: Any, messages: queue.Queue[tuple[int, Any]]) -> None:
    """Read the child's messages into `messages` (raw) as they come, so that it never waits on the consumer."""
    while True:
        head = reader.read(_HEAD.size)
        kind, length = _HEAD.unpack(head) if len(head) == _HEAD.size else (_ERROR, -1)
        data = reader.read(length) if length > 0 else b""
        if length < 0 or len(data) < length:
            messages.put((_ERROR, RuntimeError("the reading child process ended unexpectedly")))
            return
        messages.put((kind, data))
        if kind >= _ERROR:
            return


def _grow_pipe(fd: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    import fcntl
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)  # (1031: F_SETPIPE_SZ on Linux)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size: the default pipe works too, with less slack


def _child(w: int, produce: Callable[[], Iterable[Any]]) -> None:
    code = 1
    try:
        signal.set_wakeup_fd(-1)  # the parent's event loop wake-up pipe is not ours to write
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        gc.freeze()  # the inherited heap is never collected here: no copy-on-write for nothing
        for item in produce():
            try:
                _send(w, _ITEM, marshal.dumps(item))
            except ValueError:  # not marshallable
                _send(w, _PICKLED, pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
        _send(w, _END, b"")
        code = 0
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        try:
            try:
                data = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                data = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
            _send(w, _ERROR, data)
        except BaseException:
            pass  # the parent is gone
    finally:
        os._exit(code)


def _send(w: int, kind: int, data: bytes) -> None:
    view = memoryview(_HEAD.pack(kind, len(data)) + data) if len(data) < 4096 else None
    if view is None:
        _write_all(w, memoryview(_HEAD.pack(kind, len(data))))
        view = memoryview(data)
    _write_all(w, view)


def _write_all(w: int, view: memoryview) -> None:
    while view:
        n = os.write(w, view)
        view = view[n:]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    """Collect the exit status of the (finished or killed) child."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
