"""Exactly-once done right: a stored answer is bound to its call, and answers expire through the log.

A mutation sent with (session id, request id) stores its answer in a `_requests`
document with a fingerprint of (path, arguments, caller). A repeat of the same
call is answered from it; a repeat of the pair for any other call is refused.
After `Limits.request_retention_seconds` the committer deletes the memo with a
logged `_system:expire_requests` record, and a repeat then runs again.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

from engine.app import App
from engine.committer import EXPIRE_REQUESTS_FUNCTION, REQUESTS_TABLE, request_doc_id, request_fingerprint
from engine.errors import EngineError
from engine.sweeps import expiry_interval
from engine.limits import DEFAULT_LIMITS, Limits
from engine.runtime import Runtime
from log.file_log import FileLog
from log.record import Record, Write
from projections.rebuild import rebuild
from projections.store import Projection
from values import decode_value, encode_value

APPS = Path(__file__).resolve().parents[1] / "apps"
REUSED = r"requestId 7 of this session was already used for a different call \(path or arguments or caller differ\)"
HOUR_NS = 3600 * 10**9

Starter = Callable[..., Awaitable[Runtime]]


@pytest.fixture
async def start_runtime(tmp_path: Path) -> AsyncIterator[Starter]:
    """Start kitchen runtimes with chosen limits on a FileLog + Projection; all are stopped afterwards."""
    made: list[tuple[Runtime, FileLog, Projection]] = []

    async def start(limits: Limits = DEFAULT_LIMITS, data: Path | None = None) -> Runtime:
        app = App.load(APPS / "kitchen")
        data = data or tmp_path / f"data{len(made)}"
        log_ = FileLog(data / "log")
        await log_.open()
        projection = Projection(data / "projection", app.schema.index_catalog())
        runtime = Runtime(app, log_, projection, limits)
        await runtime.start()
        made.append((runtime, log_, projection))
        return runtime

    yield start
    for runtime, log_, projection in made:
        await runtime.stop()
        projection.close()
        await log_.close()


async def _records(rt: Runtime) -> list[Record]:
    out: list[Record] = []
    async for batch in rt.log.read(0):
        out.extend(batch)
    return out


async def _assert_replay_matches(rt: Runtime, where: Path) -> None:
    rebuilt = await rebuild(rt.log, where, rt.app.schema.index_catalog())
    try:
        assert rebuilt.content_digest() == rt.projection.content_digest()
    finally:
        rebuilt.close()


def _memo(rt: Runtime, session: str, request_id: int) -> dict[str, Any] | None:
    raw = rt.projection.get(request_doc_id(session, request_id))
    return None if raw is None else decode_value(raw)


# ---------------------------------------------------------------- fingerprints


def test_fingerprint_is_canonical_and_covers_path_args_and_caller() -> None:
    base = request_fingerprint("lists:create", {"a": 1, "b": [1.0, "x"]}, None)
    assert base == request_fingerprint("lists:create", {"b": [1.0, "x"], "a": 1}, None)  # key order is irrelevant
    assert base != request_fingerprint("lists:create", {"a": 1.0, "b": [1.0, "x"]}, None)  # int64 is not float64
    assert base != request_fingerprint("lists:other", {"a": 1, "b": [1.0, "x"]}, None)
    assert base != request_fingerprint("lists:create", {"a": 1, "b": [1.0, "x"]}, {"admin": True})
    # A refreshed token of the same caller is the same caller.
    user = {"tokenIdentifier": "https://issuer|u1", "subject": "u1", "iat": 1, "exp": 2}
    assert request_fingerprint("f:g", {}, user) == request_fingerprint("f:g", {}, {**user, "iat": 5, "exp": 9})
    assert request_fingerprint("f:g", {}, user) != request_fingerprint(
        "f:g", {}, {**user, "tokenIdentifier": "https://issuer|u2"})


async def test_same_call_repeated_is_answered_once_and_stores_its_fingerprint(start_runtime: Starter) -> None:
    rt = await start_runtime()
    first = await rt.run_mutation("lists:create", {"name": "x"}, session_id="s", request_id=7)
    again = await rt.run_mutation("lists:create", {"name": "x"}, session_id="s", request_id=7)
    assert again.replayed and (again.value, again.ts, again.offset) == (first.value, first.ts, first.offset)
    assert len(rt.run_query("lists:all_lists", {}).value) == 1
    memo = _memo(rt, "s", 7)
    assert memo is not None
    assert memo["fingerprint"] == request_fingerprint("lists:create", {"name": "x"}, None)
    assert memo["ts"] == first.ts and memo["_creationTime"] == first.ts / 1e6


async def test_repeat_for_a_different_call_is_refused(start_runtime: Starter) -> None:
    rt = await start_runtime()
    first = await rt.run_mutation("lists:create", {"name": "mine"}, session_id="s", request_id=7)
    with pytest.raises(EngineError, match=REUSED):  # other arguments
        await rt.run_mutation("lists:create", {"name": "theirs"}, session_id="s", request_id=7)
    with pytest.raises(EngineError, match=REUSED):  # another function
        await rt.run_mutation("lists:add", {"list_id": first.value, "text": "t"}, session_id="s", request_id=7)
    with pytest.raises(EngineError, match=REUSED):  # another caller
        await rt.run_mutation("lists:create", {"name": "mine"}, identity={"admin": True}, session_id="s",
                              request_id=7)
    # Nothing ran, and the rightful caller still gets its answer; other sessions are independent.
    assert [d["name"] for d in rt.run_query("lists:all_lists", {}).value] == ["mine"]
    assert (await rt.run_mutation("lists:create", {"name": "mine"}, session_id="s", request_id=7)).value == first.value
    other = await rt.run_mutation("lists:create", {"name": "theirs"}, session_id="t", request_id=7)
    assert not other.replayed and other.value != first.value


async def test_concurrent_repeat_for_a_different_call_is_refused(start_runtime: Starter) -> None:
    rt = await start_runtime()
    same, different, twin = await asyncio.gather(
        rt.run_mutation("lists:create", {"name": "a"}, session_id="s", request_id=7),
        rt.run_mutation("lists:create", {"name": "b"}, session_id="s", request_id=7),
        rt.run_mutation("lists:create", {"name": "a"}, session_id="s", request_id=7),
        return_exceptions=True)
    assert isinstance(different, EngineError) and "requestId 7 of this session" in str(different)
    assert not isinstance(same, BaseException) and not isinstance(twin, BaseException)
    assert twin.value == same.value and twin.ts == same.ts  # the in-flight twin shares the answer
    assert [d["name"] for d in rt.run_query("lists:all_lists", {}).value] == ["a"]


async def _write_legacy_memos(data: Path, memos: dict[tuple[str, int], tuple[Any, int]]) -> None:
    """A log as an older Tape wrote it: `_requests` memos without fingerprint or `_creationTime`."""
    log_ = FileLog(data / "log")
    await log_.open()
    try:
        base = time.time_ns()
        records = []
        for i, ((session, request_id), (result, memo_ts)) in enumerate(memos.items()):
            memo = {"result": result, "ts": memo_ts, "offset": i}
            records.append(Record(writes=[Write(REQUESTS_TABLE, request_doc_id(session, request_id),
                                                encode_value(memo), None)],
                                  ts=base + i, session_id=session, request_id=request_id, function="lists:create",
                                  result=encode_value(result)))
        await log_.append(records)
    finally:
        await log_.close()


async def test_memos_without_a_fingerprint_answer_as_before_and_expire_by_their_ts(
        start_runtime: Starter, tmp_path: Path) -> None:
    now = time.time_ns()
    data = tmp_path / "legacy"
    await _write_legacy_memos(data, {("old", 1): ("answer-old", now - 48 * HOUR_NS),
                                     ("recent", 1): ("answer-recent", now - HOUR_NS),
                                     ("older", 1): ("answer-older", now - 72 * HOUR_NS)})
    rt = await start_runtime(data=data)
    # Whatever the call, a legacy memo answers it (there is nothing to compare with).
    answer = await rt.run_mutation("lists:create", {"name": "anything"}, session_id="recent", request_id=1)
    assert answer.replayed and answer.value == "answer-recent"
    fresh = await rt.run_mutation("lists:create", {"name": "new"}, session_id="new", request_id=1)
    # The sweep at start-up expires the legacy memos older than 24 h (judged by their `ts`) ...
    deadline = time.monotonic() + 10
    while _memo(rt, "old", 1) is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert _memo(rt, "old", 1) is None and _memo(rt, "older", 1) is None
    assert _memo(rt, "recent", 1) is not None and _memo(rt, "new", 1) is not None
    assert await rt.committer.expire_requests() == 0
    # ... and the recent one when it is 24 h old (legacy memos sort first in the index, by id).
    assert await rt.committer.expire_requests(now_ns=now + 23 * HOUR_NS + HOUR_NS // 2) == 1
    assert _memo(rt, "recent", 1) is None and _memo(rt, "new", 1) is not None
    assert (await rt.run_mutation("lists:create", {"name": "new"}, session_id="new", request_id=1)).value == fresh.value
    await _assert_replay_matches(rt, tmp_path / "replayed")


# ---------------------------------------------------------------- expiry


async def test_expiry_deletes_old_memos_through_bounded_logged_records(
        start_runtime: Starter, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rt = await start_runtime(dataclasses.replace(DEFAULT_LIMITS, request_retention_seconds=60.0,
                                                 request_expiry_batch=2))
    first = [await rt.run_mutation("lists:create", {"name": f"l{i}"}, session_id="s", request_id=i)
             for i in range(5)]
    await rt.run_mutation("lists:create", {"name": "plain"})  # no request id: no memo
    young = await rt.run_mutation("lists:create", {"name": "young"}, session_id="s", request_id=99)
    assert rt.projection.count(REQUESTS_TABLE) == 6
    assert await rt.committer.expire_requests(now_ns=time.time_ns()) == 0  # nothing is 60 s old yet
    before = rt.log.next_offset()
    with caplog.at_level(logging.INFO, logger="tape.committer"):
        # The clock is moved 60 s past the young one's commit: the five before it are expired.
        assert await rt.committer.expire_requests(now_ns=young.ts + 60 * 10**9) == 5
    assert any("expired 5 _requests entries" in r.getMessage() for r in caplog.records)
    assert rt.projection.count(REQUESTS_TABLE) == 1 and _memo(rt, "s", 99) is not None
    # The cleanup is in the log: three system records of at most two deletes, each carrying the deleted memo.
    cleanup = [r for r in await _records(rt) if r.offset >= before]
    assert [r.function for r in cleanup] == [EXPIRE_REQUESTS_FUNCTION] * 3
    assert [len(r.writes) for r in cleanup] == [2, 2, 1]
    assert all(w.table == REQUESTS_TABLE and w.doc is None and w.prev is not None for r in cleanup for w in r.writes)
    assert sorted(w.id for r in cleanup for w in r.writes) == sorted(request_doc_id("s", i) for i in range(5))
    assert all(r.session_id is None and r.request_id is None for r in cleanup)
    assert cleanup[0].ts > first[-1].ts
    # A fresh replay of the log gives the same projection.
    await _assert_replay_matches(rt, tmp_path / "replayed")
    # A repeat after expiry runs the mutation again: that is what the retention means.
    rerun = await rt.run_mutation("lists:create", {"name": "l0"}, session_id="s", request_id=0)
    assert not rerun.replayed and rerun.value != first[0].value
    assert len([d for d in rt.run_query("lists:all_lists", {}).value if d["name"] == "l0"]) == 2
    # ... and is exactly-once again from then on.
    assert (await rt.run_mutation("lists:create", {"name": "l0"}, session_id="s", request_id=0)).replayed


async def test_committer_expires_memos_by_itself_with_a_tiny_retention(
        start_runtime: Starter, tmp_path: Path) -> None:
    retention = 0.3
    assert expiry_interval(retention) == pytest.approx(retention / 24)
    assert expiry_interval(24 * 3600.0) == 3600.0
    rt = await start_runtime(dataclasses.replace(DEFAULT_LIMITS, request_retention_seconds=retention))
    first = await rt.run_mutation("lists:create", {"name": "a"}, session_id="s", request_id=1)
    await rt.run_mutation("lists:create", {"name": "b"}, session_id="s", request_id=2)
    deadline = time.monotonic() + 10
    while rt.projection.count(REQUESTS_TABLE) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert rt.projection.count(REQUESTS_TABLE) == 0
    records = await _records(rt)
    assert [w.id for r in records if r.function == EXPIRE_REQUESTS_FUNCTION for w in r.writes] == [
        request_doc_id("s", 1), request_doc_id("s", 2)]
    await _assert_replay_matches(rt, tmp_path / "replayed")
    again = await rt.run_mutation("lists:create", {"name": "a"}, session_id="s", request_id=1)
    assert not again.replayed and again.value != first.value


async def test_expiry_can_be_switched_off(start_runtime: Starter) -> None:
    rt = await start_runtime(dataclasses.replace(DEFAULT_LIMITS, request_retention_seconds=None))
    await rt.run_mutation("lists:create", {"name": "a"}, session_id="s", request_id=1)
    assert await rt.committer.expire_requests(now_ns=time.time_ns() + 10**6 * HOUR_NS) == 0
    assert rt.projection.count(REQUESTS_TABLE) == 1


async def test_memos_expire_after_a_restart_and_the_restarted_log_replays(
        start_runtime: Starter, tmp_path: Path) -> None:
    data = tmp_path / "restart"
    limits = dataclasses.replace(DEFAULT_LIMITS, request_retention_seconds=3600.0)
    rt = await start_runtime(limits, data=data)
    await rt.run_mutation("lists:create", {"name": "a"}, session_id="s", request_id=1)
    await rt.stop()
    rt.projection.close()
    await rt.log.close()
    # A new process on the same data (the memo's age is only in the projection's index and the memo).
    rt2 = await start_runtime(limits, data=data)
    assert await rt2.committer.expire_requests(now_ns=time.time_ns() + 2 * HOUR_NS) == 1
    assert rt2.projection.count(REQUESTS_TABLE) == 0
    await _assert_replay_matches(rt2, tmp_path / "replayed")
