"""Actions run on worker threads, each with its own event loop, never on the server's loop.

An action is ordinary async code: it may do network I/O, sleep, or burn CPU.
Running it on the server's event loop would let one action stall every
client, so each call borrows a worker (a thread running its own asyncio
loop) from a bounded pool. The caller awaits the result on the server loop.

At the action's time bound the call is cancelled on its worker's loop; if the
worker is busy in pure-Python code (it never reaches an ``await``), an
asynchronous `Preempted` exception is raised inside that thread, repeated
until it stops. A worker that still does not stop (stuck in a C call) is
abandoned (it is a daemon thread) and replaced, so the pool never shrinks; a
worker that had to be interrupted is retired too, since an interrupt may
still be on its way to it.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future
from typing import Any, Awaitable, Callable

from engine.preempt import Preempted, raise_in_thread

log = logging.getLogger("tape.actions")

DEFAULT_WORKERS = 16
_STOP_GRACE_SECONDS = 2.0


class _Worker:
    """One thread running an asyncio loop forever."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        while True:
            try:
                self.loop.run_forever()
                break
            except Preempted:  # arrived after the action ended, between tasks: keep serving
                continue
        self.loop.close()

    def submit(self, coro: Awaitable[Any]) -> tuple["Future[Any]", threading.Event]:
        """Start `coro` on this worker's loop; the event is set once it has really ended there."""
        ended = threading.Event()

        async def tracked() -> Any:
            try:
                return await coro
            finally:
                ended.set()
        return asyncio.run_coroutine_threadsafe(tracked(), self.loop), ended

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)


class ActionWorkers:
    """A bounded pool of action workers; `run` executes one action call on one of them."""

    def __init__(self, max_workers: int = DEFAULT_WORKERS) -> None:
        self.max_workers = max_workers
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._slots: asyncio.Semaphore | None = None
        self._made = 0
        self._running: dict[int, tuple["Future[Any]", int | None]] = {}
        self.abandoned = 0

    def _take(self) -> _Worker:
        if self._idle:
            return self._idle.pop()
        self._made += 1
        worker = _Worker(f"tape-action-{self._made}")
        self._all.add(worker)
        return worker

    async def run(self, make: Callable[[], Awaitable[Any]], seconds: float, path: str) -> Any:
        """Run the coroutine `make()` on a worker; raises TimeoutError after `seconds`."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_workers)
        async with self._slots:
            worker = self._take()
            future, ended = worker.submit(make())
            self._running[id(future)] = (future, worker.thread.ident)
            healthy = True
            try:
                return await asyncio.wait_for(asyncio.wrap_future(future), seconds)
            except asyncio.TimeoutError:
                healthy = await self._stop(worker, future, ended, path)
                raise
            except asyncio.CancelledError:
                healthy = await self._stop(worker, future, ended, path)
                raise
            finally:
                self._running.pop(id(future), None)
                if healthy:
                    self._idle.append(worker)
                else:
                    self._all.discard(worker)
                    self.abandoned += 1

    async def _stop(self, worker: _Worker, future: "Future[Any]", ended: threading.Event, path: str) -> bool:
        """Stop the call running on `worker`: cancel it, then interrupt its thread until it has ended."""
        future.cancel()
        ident = worker.thread.ident
        for _ in range(3):  # a cancellation at an await point is usually enough
            if ended.is_set():
                return True
            await asyncio.sleep(0.005)
        waited = 0.0
        while not ended.is_set() and waited < _STOP_GRACE_SECONDS:
            if ident is not None:
                raise_in_thread(ident, Preempted)
            await asyncio.sleep(0.01)
            waited += 0.01
        if ended.is_set():
            worker.stop()  # an interrupt may still be in flight to that thread: do not reuse it
            return False
        log.warning("action %s did not stop within %.0fs of its bound (stuck outside Python code?); "
                    "its worker thread is abandoned", path, _STOP_GRACE_SECONDS)
        worker.stop()
        return False

    def close(self) -> None:
        """Stop every worker: running actions are cancelled and interrupted, their callers answered at once.

        Worker threads are daemons, so one stuck outside Python code does not hold the process.
        """
        for future, ident in list(self._running.values()):
            if not future.done():
                future.cancel()
            if ident is not None:
                raise_in_thread(ident, Preempted)
        for worker in list(self._all):
            worker.stop()
        self._all.clear()
        self._idle.clear()
