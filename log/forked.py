"""Running a producer of items in a forked child process, the items streamed back.

For CPU-bound reading work (decoding log frames, rendering change events) that
would otherwise share the GIL with whoever consumes the result: the child — a
fork, so the producer needs no pickling and starts at once with every module
loaded — runs `produce()` and sends each item through a pipe (marshalled:
several times cheaper than pickle for the tuples, bytes and numbers this is
for; pickled if it holds anything else); the parent loads them while the
child works ahead on the next ones.

The child only computes and writes to its pipe: it never returns into the
parent's code (it leaves with ``os._exit``), runs no event loop, takes no lock
another thread could have held at the fork and ignores the parent's signal
handlers. An exception in the child is re-raised in the parent (pickled, so
without its traceback). Closing the iterator early kills the child.

`available()` says whether this works here (POSIX ``fork``; switched off with
the environment variable ``TAPE_FORKED_READS=0``). Callers keep an in-process
path for small jobs and for when it does not.
"""
from __future__ import annotations

import asyncio
import gc
import marshal
import os
import pickle
import signal
import struct
import sys
import warnings
from typing import Any, AsyncIterator, Callable, Iterable

_HEAD = struct.Struct("<BQ")  # kind, payload length
_ITEM, _PICKLED, _ERROR, _END = 0, 1, 2, 3
_PIPE_BYTES = 1 << 20  # ask for a pipe this large, so the child can work ahead by about a batch


def available() -> bool:
    """Whether `forked_items` can run here (and is not switched off)."""
    return hasattr(os, "fork") and os.environ.get("TAPE_FORKED_READS", "1") not in ("0", "false", "no", "off")


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
    try:
        while True:
            kind, item = await asyncio.to_thread(_receive, reader)
            if kind <= _PICKLED:
                yield item
            elif kind == _END:
                return
            else:
                raise item
    finally:
        reader.close()
        _reap(pid)


def _grow_pipe(fd: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    import fcntl
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)  # (1031: F_SETPIPE_SZ on Linux)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size: the default pipe works too, with less slack


def _receive(reader: Any) -> tuple[int, Any]:
    """The next message from the child: (kind, unpickled payload)."""
    head = reader.read(_HEAD.size)
    if len(head) < _HEAD.size:
        return _ERROR, RuntimeError("the reading child process ended unexpectedly")
    kind, length = _HEAD.unpack(head)
    data = reader.read(length)
    if len(data) < length:
        return _ERROR, RuntimeError("the reading child process ended unexpectedly")
    if kind == _ITEM:
        return kind, marshal.loads(data)
    return kind, (pickle.loads(data) if length else None)


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


def _reap(pid: int) -> None:
    """Stop the child (if it is still working) and collect its exit status."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
