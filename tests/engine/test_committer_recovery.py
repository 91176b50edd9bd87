"""The committer after an append whose outcome is unknown: truthful answers, then recovery with no restart.

The log here is a FileLog whose `append` is made to fail with `LogOutcomeUnknown`
(the records either reached it or not) and which gets a `settle` that fails
until the "broker" returns, as `log.kafka_log.KafkaLog.settle` does.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from engine.errors import EngineError, OutcomeUnknown, WritesUnavailable
from log.errors import LogOutcomeUnknown, LogWriteError
from log.record import Record


class Outage:
    """Makes `rt.log` lose the acknowledgement of the next append until `back()` is called."""

    def __init__(self, rt: Any, landed: bool) -> None:
        self.log = rt.log
        self.real_append = rt.log.append
        self.landed = landed
        self.stash: list[Record] = []
        self.returned = asyncio.Event()
        self.settle_calls = 0
        rt.log.append = self.append
        rt.log.settle = self.settle

    async def append(self, records: list[Record]) -> None:
        self.log.append = self.real_append  # only this append is lost
        if self.landed:
            await self.real_append(records)
        else:
            self.stash = records
        raise LogOutcomeUnknown("append failed (no acknowledgement within 1s; simulated); the outcome is unknown")

    async def settle(self) -> bool:
        self.settle_calls += 1
        if not self.returned.is_set():
            raise LogWriteError("the broker still does not answer (simulated)")
        if self.stash:  # the re-send of what never arrived
            records, self.stash = self.stash, []
            await self.real_append(records)
        return True

    def back(self) -> None:
        self.returned.set()


def texts(rt: Any, list_id: str) -> list[str]:
    return [d["text"] for d in rt.run_query("lists:items", {"list_id": list_id}).value]


@pytest.mark.parametrize("landed", [True, False])
async def test_unknown_outcome_is_told_then_resolved_by_a_repeat(make_runtime, landed: bool) -> None:
    rt = await make_runtime("kitchen")
    list_id = (await rt.run_mutation("lists:create", {"name": "l"})).value
    outage = Outage(rt, landed)
    with pytest.raises(OutcomeUnknown, match="outcome of this mutation is unknown.*same request id"):
        await rt.run_mutation("lists:add", {"list_id": list_id, "text": "doubtful"}, session_id="s", request_id=1)
    assert rt.committer.health()["state"] == "recovering"
    t0 = time.monotonic()
    with pytest.raises(WritesUnavailable, match="did not run"):  # a new write is refused at once
        await rt.run_mutation("lists:add", {"list_id": list_id, "text": "refused"}, session_id="s", request_id=2)
    assert time.monotonic() - t0 < 0.5
    repeat = asyncio.ensure_future(rt.run_mutation("lists:add", {"list_id": list_id, "text": "doubtful"},
                                                   session_id="s", request_id=1))
    await asyncio.sleep(0.3)
    assert not repeat.done() and outage.settle_calls >= 2  # it waits while the committer keeps trying
    outage.back()
    answer = await asyncio.wait_for(repeat, 10)
    assert answer.replayed  # answered from the log: it was committed once, not run again
    assert texts(rt, list_id) == ["doubtful"]
    assert rt.committer.health() == {"state": "ok"} and rt.committer.recoveries == 1
    after = await rt.run_mutation("lists:add", {"list_id": list_id, "text": "after"})  # writes resume
    assert after.offset > answer.offset and texts(rt, list_id) == ["doubtful", "after"]
    replay = [r.function async for batch in rt.log.read(0) for r in batch]
    assert replay.count("lists:add") == 2


async def test_a_log_fenced_while_recovering_breaks_the_writer_with_its_reason(make_runtime) -> None:
    rt = await make_runtime("kitchen")
    list_id = (await rt.run_mutation("lists:create", {"name": "l"})).value
    outage = Outage(rt, landed=False)
    with pytest.raises(OutcomeUnknown):
        await rt.run_mutation("lists:add", {"list_id": list_id, "text": "x"}, session_id="s", request_id=1)
    rt.log.fenced = "the topic no longer exists (simulated)"
    repeat = asyncio.ensure_future(rt.run_mutation("lists:add", {"list_id": list_id, "text": "x"},
                                                   session_id="s", request_id=1))
    with pytest.raises(EngineError, match="no longer exists"):
        await asyncio.wait_for(repeat, 10)
    assert rt.committer.health()["state"] == "broken"
    assert outage.settle_calls >= 1


async def test_scheduled_work_waits_for_the_recovery_instead_of_failing(make_runtime) -> None:
    rt = await make_runtime("kitchen")
    list_id = (await rt.run_mutation("lists:create", {"name": "l"}, session_id="s", request_id=1)).value
    outage = Outage(rt, landed=True)
    with pytest.raises(OutcomeUnknown):
        await rt.run_mutation("lists:add", {"list_id": list_id, "text": "x"})
    expiry = asyncio.ensure_future(rt.committer.expire_requests(now_ns=time.time_ns() + 10**15))
    await asyncio.sleep(0.2)
    assert not expiry.done()  # held, not failed
    outage.back()
    assert await asyncio.wait_for(expiry, 10) == 1  # the memo of request 1, expired after the recovery
    assert texts(rt, list_id) == ["x"]
