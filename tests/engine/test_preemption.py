"""Time bounds stop user code wherever it is: pure-Python loops in queries, mutations and actions."""
from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from engine.errors import EngineError, LimitExceeded


class LoopTicks:
    """Counts 10 ms ticks of the event loop while it runs: few ticks mean something held the loop."""

    def __init__(self) -> None:
        self.count = 0
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self.count += 1

    def stop(self) -> None:
        self._task.cancel()


async def test_a_query_looping_forever_is_stopped_at_its_bound(make_runtime) -> None:
    rt = await make_runtime("limits")
    started = time.monotonic()
    with pytest.raises(LimitExceeded, match=r"stress:spin_forever ran longer than 1s"):
        rt.run_query("stress:spin_forever", {})
    assert time.monotonic() - started < 5  # stopped, not run to completion (it never completes)


async def test_a_loop_that_swallows_exceptions_is_still_stopped(make_runtime) -> None:
    rt = await make_runtime("limits")
    with pytest.raises(LimitExceeded, match="ran longer than 1s"):
        rt.run_query("stress:spin_swallowing", {})


async def test_a_mutation_stopped_at_its_bound_commits_nothing(make_runtime) -> None:
    rt = await make_runtime("limits")
    before = rt.log.next_offset()
    with pytest.raises(LimitExceeded, match="stress:write_then_spin ran longer than 1s"):
        await rt.run_mutation("stress:write_then_spin", {})
    assert rt.log.next_offset() == before
    assert rt.run_query("stress:read_all", {}).value == 0
    await rt.run_mutation("stress:insert_many", {"n": 2})  # the writer goes on
    assert rt.run_query("stress:read_all", {}).value == 2


async def test_a_looping_action_is_stopped_and_the_loop_stays_free(make_runtime) -> None:
    rt = await make_runtime("limits")
    rt.limits = replace(rt.limits, max_action_seconds=1.0)
    ticks = LoopTicks()
    try:
        with pytest.raises(EngineError, match="stress:spin_action ran longer than 1s"):
            await rt.run_action("stress:spin_action", {})
    finally:
        ticks.stop()
    assert ticks.count > 20  # the server loop kept running while the action burned CPU on its worker
    await rt.run_mutation("stress:insert_many", {"n": 1})


async def test_a_slow_query_moves_off_the_loop_and_reads_one_snapshot(make_runtime) -> None:
    rt = await make_runtime("limits")
    await rt.run_mutation("stress:insert_many", {"n": 3})
    query = asyncio.get_running_loop().create_task(rt.query("stress:count_twice_slowly", {"seconds": 0.5}))
    await asyncio.sleep(0.1)  # the query now runs on a worker thread; the loop is free for writes
    started = time.monotonic()
    await rt.run_mutation("stress:insert_many", {"n": 2})
    assert time.monotonic() - started < 0.4  # the write did not wait for the slow query
    result = await query
    assert result.error is None
    assert result.value == [3, 3]  # the snapshot the query started on, not the live state
    assert rt.is_slow("stress:count_twice_slowly")
    again = await rt.query("stress:count_twice_slowly", {"seconds": 0.0})
    assert again.value == [5, 5]


async def test_a_slow_query_off_the_loop_is_still_stopped_at_its_bound(make_runtime) -> None:
    rt = await make_runtime("limits")
    result = await rt.query("stress:spin_forever", {})
    assert isinstance(result.error, LimitExceeded)
    assert "ran longer than 1s" in str(result.error)
    result = await rt.query("stress:spin_swallowing", {})
    assert isinstance(result.error, LimitExceeded)


async def test_a_slow_mutation_runs_off_the_loop_and_commits(make_runtime) -> None:
    rt = await make_runtime("limits")
    ticks = LoopTicks()
    try:
        slow = [rt.run_mutation("stress:insert_slowly", {"seconds": 0.3}) for _ in range(3)]
        fast = rt.run_mutation("stress:insert_many", {"n": 1})
        outcomes = await asyncio.gather(*slow, fast)
    finally:
        ticks.stop()
    assert all(o.value for o in outcomes[:3])  # the new documents' ids
    assert ticks.count > 40  # ~0.9 s of mutations while the loop kept ticking every 10 ms
    assert set(rt.committer.slow_mutations) == {"stress:insert_slowly"}
    assert rt.run_query("stress:read_all", {}).value == 4
    offsets = sorted(o.offset for o in outcomes)
    assert offsets == list(range(offsets[0], offsets[0] + 4))  # still one serial history


def test_a_slow_mark_lasts_only_its_retry_window(monkeypatch) -> None:
    from engine import execution
    now = [100.0]
    monkeypatch.setattr(execution.time, "monotonic", lambda: now[0])
    slow = execution.SlowPaths(retry_seconds=10.0)
    slow.add("m:f")
    assert "m:f" in slow and list(slow) == ["m:f"]
    now[0] += 10.5  # a transient stall does not demote a function for good: the loop is tried again
    assert "m:f" not in slow and list(slow) == []
