"""log.forked: items produced in a forked child process, streamed back."""
from __future__ import annotations

import os
from fractions import Fraction
from typing import Any, Iterator

import pytest

from log import forked
from log.errors import LogCorruptError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _children() -> set[int]:
    """Pids of this process's live (or unreaped) children."""
    me = os.getpid()
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me:
                out.add(int(entry))
    return out


async def test_items_come_back_in_order() -> None:
    big = os.urandom(3 << 20)  # larger than the pipe: the parent reads while the child writes

    def produce() -> Iterator[Any]:
        yield (1, "two", b"three", None, [4.5, -6])
        yield big
        yield {"not": "marshalled", "f": Fraction(1, 3)}  # pickled instead
        for i in range(500):
            yield i

    got = [item async for item in forked.forked_items(produce)]
    assert got[:3] == [(1, "two", b"three", None, [4.5, -6]), big, {"not": "marshalled", "f": Fraction(1, 3)}]
    assert got[3:] == list(range(500))


async def test_nothing_produced() -> None:
    assert [item async for item in forked.forked_items(lambda: iter(()))] == []


async def test_an_error_in_the_child_is_raised_in_the_parent() -> None:
    def produce() -> Iterator[int]:
        yield 1
        raise LogCorruptError("seg.seg: damaged frame at byte 7")

    got = []
    with pytest.raises(LogCorruptError, match="seg.seg: damaged frame at byte 7"):
        async for item in forked.forked_items(produce):
            got.append(item)
    assert got == [1]


async def test_an_unpicklable_error_still_arrives() -> None:
    class Local(Exception):  # a local class cannot be pickled
        pass

    def produce() -> Iterator[int]:
        raise Local("odd")
        yield 0

    with pytest.raises(RuntimeError, match="Local: odd"):
        async for _ in forked.forked_items(produce):
            pass


async def test_closing_early_stops_and_reaps_the_child() -> None:
    def produce() -> Iterator[bytes]:
        while True:
            yield b"x" * 100_000

    before = _children()
    items = forked.forked_items(produce)
    async for _ in items:
        break
    await items.aclose()
    assert _children() == before


def test_worthwhile_can_be_forced_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAPE_FORKED_READS", "1")
    assert forked.worthwhile()
    monkeypatch.setenv("TAPE_FORKED_READS", "0")
    assert not forked.worthwhile()
    monkeypatch.delenv("TAPE_FORKED_READS")
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert forked.worthwhile() == (len(os.sched_getaffinity(0)) > 1)
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 0.0, 0.0))
    assert not forked.worthwhile()
    assert forked.worthwhile(watched=True) == (len(os.sched_getaffinity(0)) > 1)


async def test_cancelling_a_consumer_waiting_for_the_child() -> None:
    import asyncio
    import time

    def produce() -> Iterator[int]:
        yield 1
        time.sleep(30)  # a child that takes its time
        yield 2

    before = _children()

    async def consume() -> None:
        async for _ in forked.forked_items(produce):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _children() == before
