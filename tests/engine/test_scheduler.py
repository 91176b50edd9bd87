"""`ctx.scheduler`, `_scheduled_functions` and the scheduler task (issue 16)."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import pytest

from engine.committer import JOBS_BESIDE_CLIENTS
from engine.errors import AppError, EngineError
from engine.scheduler import SERVER_STOPPED
from history.points import Point
from history.restore import restore_to_dir
from values import decode_doc


async def until(check: Callable[[], Any], seconds: float = 5.0) -> Any:
    """Poll `check()` until it returns something truthy."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def job(rt, job_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return rt.run_query("jobs:job", {"job_id": job_id}).value


def events(rt) -> list[str]:  # type: ignore[no-untyped-def]
    return rt.run_query("jobs:events", {}).value


async def test_scheduled_mutation_runs_once_with_its_state_in_the_same_record(make_runtime) -> None:
    rt = await make_runtime("jobs")
    job_id = (await rt.run_mutation("jobs:schedule", {"delay_ms": 50, "tag": "x"})).value
    doc = job(rt, job_id)
    assert doc["name"] == "jobs:record" and doc["args"] == [{"tag": "x"}] and doc["state"] == {"kind": "pending"}
    assert "completedTime" not in doc
    await until(lambda: job(rt, job_id)["state"]["kind"] == "success")
    assert events(rt) == ["x"]
    done = job(rt, job_id)
    assert done["completedTime"] >= done["scheduledTime"]
    # The job's success and the mutation's insert are one log record.
    records = [r async for batch in rt.log.read(0) for r in batch]
    run = [r for r in records if r.function == "jobs:record"]
    assert len(run) == 1 and {w.table for w in run[0].writes} == {"events", "_scheduled_functions"}


async def test_schedule_then_throw_schedules_nothing(make_runtime) -> None:
    rt = await make_runtime("jobs")
    with pytest.raises(AppError):
        await rt.run_mutation("jobs:schedule_then_throw", {"tag": "ghost"})
    await asyncio.sleep(0.1)
    assert rt.run_query("jobs:jobs", {}).value == [] and events(rt) == []


async def test_cancel_before_run(make_runtime) -> None:
    rt = await make_runtime("jobs")
    job_id = (await rt.run_mutation("jobs:schedule", {"delay_ms": 200, "tag": "x"})).value
    await rt.run_mutation("jobs:cancel", {"job_id": job_id})
    assert job(rt, job_id)["state"] == {"kind": "canceled"}
    await asyncio.sleep(0.35)
    assert events(rt) == [] and job(rt, job_id)["state"] == {"kind": "canceled"}


async def test_cancel_from_an_action_and_during_an_action_run(make_runtime) -> None:
    rt = await make_runtime("jobs")
    job_id = (await rt.run_mutation("jobs:schedule", {"delay_ms": 200, "tag": "x"})).value
    await rt.run_action("jobs:cancel_from_action", {"job_id": job_id})
    assert job(rt, job_id)["state"] == {"kind": "canceled"}
    running = (await rt.run_mutation("jobs:schedule_action", {"delay_ms": 0, "tag": "a", "sleep": 0.3})).value
    await until(lambda: "a:started" in events(rt))
    assert job(rt, running)["state"] == {"kind": "inProgress"}
    await rt.run_mutation("jobs:cancel", {"job_id": running})
    await until(lambda: "a" in events(rt))  # a running action is not stopped (as in Convex)...
    await asyncio.sleep(0.05)
    assert job(rt, running)["state"] == {"kind": "canceled"}  # ...and stays recorded as canceled


async def test_scheduled_action_success_and_failure(make_runtime) -> None:
    rt = await make_runtime("jobs")
    ok = (await rt.run_mutation("jobs:schedule_action", {"delay_ms": 0, "tag": "a", "sleep": 0.0})).value
    bad = (await rt.run_mutation("jobs:schedule_broken_action", {})).value
    await until(lambda: job(rt, ok)["state"]["kind"] == "success")
    await until(lambda: job(rt, bad)["state"]["kind"] == "failed")
    assert "action failed" in job(rt, bad)["state"]["error"]
    assert events(rt) == ["a:started", "a"]


async def test_failed_scheduled_mutation_records_the_error_and_none_of_its_writes(make_runtime) -> None:
    rt = await make_runtime("jobs")
    job_id = (await rt.run_mutation("jobs:schedule_failing", {})).value
    await until(lambda: job(rt, job_id)["state"]["kind"] == "failed")
    assert "job failed on purpose" in job(rt, job_id)["state"]["error"]
    assert events(rt) == []


async def test_chain_and_schedule_from_action(make_runtime) -> None:
    rt = await make_runtime("jobs")
    await rt.run_mutation("jobs:start_chain", {"n": 5})
    await until(lambda: len(events(rt)) == 6)
    assert events(rt) == [f"chain{i}" for i in range(5, -1, -1)]
    job_id = await rt.run_action("jobs:schedule_from_action", {"tag": "from-action"})
    await until(lambda: job(rt, job_id)["state"]["kind"] == "success")
    assert "from-action" in events(rt)


async def test_due_jobs_run_in_time_order(make_runtime) -> None:
    rt = await make_runtime("jobs")
    now = time.time() * 1000
    for tag, offset in [("c", 300), ("a", 100), ("b", 200)]:
        await rt.run_mutation("jobs:schedule", {"delay_ms": offset - (time.time() * 1000 - now), "tag": tag})
    await until(lambda: len(events(rt)) == 3)
    assert events(rt) == ["a", "b", "c"]


async def test_due_jobs_lead_the_next_batch_ahead_of_waiting_clients(make_runtime) -> None:
    """A due scheduled mutation waits for the batch executing, not behind the client queue (up to a share)."""
    rt = await make_runtime("jobs")
    await rt.run_mutation("jobs:schedule_many", {"count": 100, "delay_ms": 300})
    busy = asyncio.ensure_future(rt.run_mutation("jobs:busy", {"ms": 700}))
    await asyncio.sleep(0.1)  # the writer is inside `busy` (off the loop after its first slice)
    clients = [asyncio.ensure_future(rt.run_mutation("jobs:record", {"tag": f"c{i}"}, allow_internal=True))
               for i in range(100)]
    await busy  # the jobs fell due meanwhile, after the clients were queued
    client_offsets = [o.offset for o in await asyncio.gather(*clients)]
    await until(lambda: len(events(rt)) == 200)
    records = [r async for batch in rt.log.read(0) for r in batch]
    job_runs = [r for r in records if r.function == "jobs:record" and any(w.table == "_scheduled_functions"
                                                                          for w in r.writes)]
    assert len(job_runs) == 100
    first_client = min(client_offsets)
    # The first batch after `busy` starts with JOBS_BESIDE_CLIENTS jobs, then every waiting client; the
    # other jobs follow in the next batch, still in the order they fell due.
    assert sum(r.offset < first_client for r in job_runs) == JOBS_BESIDE_CLIENTS
    assert all(r.offset > max(client_offsets) for r in job_runs[JOBS_BESIDE_CLIENTS:])
    due = [decode_doc(next(w.doc for w in r.writes if w.table == "_scheduled_functions"))["scheduledTime"]
           for r in job_runs]
    assert due == sorted(due)


async def test_system_tables_only_through_ctx_db_system(make_runtime) -> None:
    rt = await make_runtime("jobs")
    job_id = (await rt.run_mutation("jobs:schedule", {"delay_ms": 10_000, "tag": "x"}, session_id="s",
                                    request_id=1)).value
    with pytest.raises(EngineError, match="system"):
        rt.run_query("jobs:peek_requests", {})
    with pytest.raises(EngineError, match="ctx.db.system cannot reach table '_requests'"):
        rt.run_query("jobs:peek_requests_system", {})
    with pytest.raises(EngineError, match="ctx.db cannot reach"):
        rt.run_query("jobs:peek_job_directly", {"job_id": job_id})
    assert job(rt, job_id)["state"] == {"kind": "pending"}


async def test_sub_transactions_in_mutations(make_runtime) -> None:
    rt = await make_runtime("jobs")
    # The inner mutation sees the outer insert; the sub-query sees both writes.
    assert (await rt.run_mutation("jobs:sub_calls", {"fail_inner": False})).value == 2
    assert events(rt) == ["outer", "inner-saw-1"]
    # A failing inner mutation's writes are undone; the caller caught the error and commits its own.
    assert (await rt.run_mutation("jobs:sub_calls", {"fail_inner": True})).value == 3
    assert events(rt) == ["outer", "inner-saw-1", "outer"]


async def test_restart_runs_pending_jobs_and_fails_interrupted_actions(make_runtime, tmp_path) -> None:
    data = tmp_path / "restart"
    rt = await make_runtime("jobs", data)
    later = (await rt.run_mutation("jobs:schedule", {"delay_ms": 400, "tag": "later"})).value
    running = (await rt.run_mutation("jobs:schedule_action", {"delay_ms": 0, "tag": "a", "sleep": 30})).value
    await until(lambda: "a:started" in events(rt))
    await rt.stop()  # the action is cut off while running
    rt.projection.close()
    await rt.log.close()
    rt2 = await make_runtime("jobs", data)
    await until(lambda: job(rt2, running)["state"]["kind"] == "failed")
    assert job(rt2, running)["state"]["error"] == SERVER_STOPPED
    await until(lambda: job(rt2, later)["state"]["kind"] == "success")
    assert events(rt2).count("later") == 1 and "a" not in events(rt2)


async def test_many_jobs_from_one_mutation(make_runtime) -> None:
    rt = await make_runtime("jobs")
    await rt.run_mutation("jobs:schedule_many", {"count": 500, "delay_ms": 0})
    await until(lambda: len(events(rt)) == 500, 20)
    assert sorted(events(rt)) == sorted(f"m{i}" for i in range(500))
    assert all(j["state"]["kind"] == "success" for j in rt.run_query("jobs:jobs", {}).value)


async def test_restore_to_a_midpoint_restores_the_pending_set(make_runtime, tmp_path) -> None:
    data = tmp_path / "src"
    rt = await make_runtime("jobs", data)
    first = (await rt.run_mutation("jobs:schedule", {"delay_ms": 1500, "tag": "first"})).value
    done = (await rt.run_mutation("jobs:schedule", {"delay_ms": 0, "tag": "done"})).value
    await until(lambda: job(rt, done)["state"]["kind"] == "success")
    midpoint = rt.projection.applied_offset
    second = (await rt.run_mutation("jobs:schedule", {"delay_ms": 1500, "tag": "second"})).value
    await rt.run_mutation("jobs:cancel", {"job_id": first})
    assert job(rt, first)["state"]["kind"] == "canceled"
    await restore_to_dir(str(data), Point("offset", midpoint), tmp_path / "restored")
    rt2 = await make_runtime("jobs", tmp_path / "restored")
    pending = {j["_id"] for j in rt2.run_query("jobs:jobs", {}).value if j["state"]["kind"] == "pending"}
    assert pending == {first}  # pending then; the later job and the later cancel are not in the restored past
    assert rt2.run_query("jobs:job", {"job_id": second}).value is None
    await until(lambda: job(rt2, first)["state"]["kind"] == "success", 5)
    assert events(rt2) == ["done", "first"]


async def test_finished_jobs_expire_after_the_retention_in_logged_records(make_runtime) -> None:
    rt = await make_runtime("jobs")
    done_id = (await rt.run_mutation("jobs:schedule", {"delay_ms": 0, "tag": "old"})).value
    canceled_id = (await rt.run_mutation("jobs:schedule", {"delay_ms": 60_000, "tag": "never"})).value
    await rt.run_mutation("jobs:cancel", {"job_id": canceled_id})
    pending_id = (await rt.run_mutation("jobs:schedule", {"delay_ms": 60_000, "tag": "later"})).value
    await until(lambda: job(rt, done_id)["state"]["kind"] == "success")
    retention_ms = rt.limits.job_retention_seconds * 1000.0
    # Inside the retention nothing goes; past it the finished jobs go and the pending one stays.
    assert await rt.scheduler.expire_finished() == 0
    assert await rt.scheduler.expire_finished(now=time.time() * 1000.0 + retention_ms + 1000.0) == 2
    assert job(rt, done_id) is None and job(rt, canceled_id) is None
    assert job(rt, pending_id)["state"] == {"kind": "pending"}
    records = [r async for batch in rt.log.read(0) for r in batch]
    expiry = [r for r in records if r.function == "_system:expire_jobs"]
    assert len(expiry) == 1 and {(w.id, w.doc) for w in expiry[0].writes} == {(done_id, None), (canceled_id, None)}
    assert events(rt) == ["old"]  # the job's own writes stay
