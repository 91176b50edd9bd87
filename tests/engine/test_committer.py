"""The pipelined committer: a failed append undoes everything executed on top of it."""
from __future__ import annotations

import asyncio

import pytest

from engine.errors import EngineError
from log.errors import LogWriteError


async def test_failed_append_fails_its_batch_and_reruns_the_next(make_runtime) -> None:
    rt = await make_runtime("bank")
    await rt.run_mutation("accounts:seed", {"owners": ["a", "b"], "balance": 100.0})
    real_append = rt.log.append
    calls = 0

    async def flaky_append(records):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.05)  # let the next batch execute on top of this one
            raise LogWriteError("disk full (simulated)")
        return await real_append(records)

    rt.log.append = flaky_append  # type: ignore[method-assign]
    first = asyncio.ensure_future(rt.run_mutation("accounts:transfer", {"src": "a", "dst": "b", "amount": 10.0}))
    await asyncio.sleep(0.01)
    # Executed while the first batch is still being appended, reading its (doomed) write.
    second = asyncio.ensure_future(rt.run_mutation("accounts:transfer", {"src": "a", "dst": "b", "amount": 5.0}))
    with pytest.raises(EngineError, match="disk full"):
        await first
    assert (await second).value == 95.0  # re-executed against the durable state, not the failed write
    assert rt.run_query("accounts:balances", {"owners": ["a", "b"]}).value == {"a": 95.0, "b": 105.0}
    rt.log.append = real_append  # type: ignore[method-assign]
    assert (await rt.run_mutation("accounts:transfer", {"src": "b", "dst": "a", "amount": 1.0})).value == 104.0


async def test_duplicate_request_while_first_is_in_flight_shares_the_answer(make_runtime) -> None:
    rt = await make_runtime("kitchen")
    a, b = await asyncio.gather(
        rt.run_mutation("lists:create", {"name": "x"}, session_id="s", request_id=1),
        rt.run_mutation("lists:create", {"name": "x"}, session_id="s", request_id=1))
    assert a.value == b.value and a.ts == b.ts
    assert len(rt.run_query("lists:all_lists", {}).value) == 1
