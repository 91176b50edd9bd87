"""Disk full: the log's writes fail with ENOSPC (FileLog._write / _fsync are the injection hooks).

A mutation must fail with a clear "disk full" error and leave no trace,
queries and subscriptions must keep being served from the projection, and
writing must resume by itself once space returns. Also: a write failure in
the projection (RocksDB out of space after the log append succeeded) must
not leave the log and the projection disagreeing.
"""
from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from engine.app import App
from engine.errors import AppError, EngineError
from engine.runtime import Runtime
from gateway.config import ServerConfig
from gateway.node import Node
from gateway.server import build_app
from log.file_log import FileLog
from projections.store import Projection
from tests.reliability.reliability_wire import APPS, WsClient, http_call, read_log, replay_digest

OWNERS = ["a", "b", "c", "d"]


def enospc(*_args: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


async def open_runtime(data: Path) -> Runtime:
    app = App.load(APPS / "bank")
    log = FileLog(data / "log")
    await log.open()
    runtime = Runtime(app, log, Projection(data / "projection", app.schema.index_catalog()))
    await runtime.start()
    return runtime


async def close_runtime(runtime: Runtime) -> None:
    await runtime.stop()
    runtime.projection.close()
    await runtime.log.close()


def balances(runtime: Runtime) -> dict[str, float]:
    return runtime.run_query("accounts:balances", {"owners": OWNERS}).value


@pytest.mark.parametrize("hook", ["_write", "_fsync"])
async def test_disk_full_fails_mutations_clearly_and_writing_resumes(tmp_path: Path, hook: str) -> None:
    runtime = await open_runtime(tmp_path)
    try:
        await runtime.run_mutation("accounts:seed", {"owners": OWNERS, "balance": 100.0})
        await runtime.run_mutation("accounts:transfer", {"src": "a", "dst": "b", "amount": 10.0})
        before, end = balances(runtime), runtime.log.next_offset()

        setattr(runtime.log, hook, enospc)  # the disk is full
        results = await asyncio.gather(
            *(runtime.run_mutation("accounts:transfer", {"src": "b", "dst": "c", "amount": 1.0},
                                   session_id="s", request_id=i) for i in range(20)),
            return_exceptions=True)
        assert all(isinstance(r, EngineError) for r in results), results
        message = str(results[0])
        assert "disk full" in message and "nothing" in message and str(tmp_path / "log") in message, message
        assert runtime.log.next_offset() == end
        # Reads go on: the projection is untouched.
        for _ in range(50):
            assert balances(runtime) == before
        assert runtime.run_query("accounts:total", {}).value == 400.0
        # App errors are still app errors (the function runs before the write).
        with pytest.raises(AppError):
            await runtime.run_mutation("accounts:transfer", {"src": "a", "dst": "b", "amount": 1e9})

        delattr(runtime.log, hook)  # space is back
        out = await runtime.run_mutation("accounts:transfer", {"src": "b", "dst": "c", "amount": 1.0},
                                         session_id="s", request_id=0)  # the retry of a failed request
        assert out.value == 109.0 and not out.replayed
        assert balances(runtime) == {"a": 90.0, "b": 109.0, "c": 101.0, "d": 100.0}
    finally:
        await close_runtime(runtime)

    records = await read_log(tmp_path / "log")
    assert [r.function for r in records] == ["accounts:seed", "accounts:transfer", "accounts:transfer"]
    again = await open_runtime(tmp_path)
    try:
        assert balances(again) == {"a": 90.0, "b": 109.0, "c": 101.0, "d": 100.0}
    finally:
        await close_runtime(again)


async def test_disk_full_on_a_new_segment_file(tmp_path: Path) -> None:
    """Rolling to a new segment when there is no space: the new file's first write fails."""
    app = App.load(APPS / "bank")
    log = FileLog(tmp_path / "log", segment_bytes=4096)
    await log.open()
    runtime = Runtime(app, log, Projection(tmp_path / "projection", app.schema.index_catalog()))
    await runtime.start()
    try:
        await runtime.run_mutation("accounts:seed", {"owners": OWNERS, "balance": 100.0})
        real_write = log._write

        def full_on_new_segment(fd: int, data: bytes, pos: int) -> None:
            if pos == 0:  # the first bytes of a new segment file
                raise OSError(errno.ENOSPC, "No space left on device")
            real_write(fd, data, pos)
        log._write = full_on_new_segment  # type: ignore[method-assign]
        failure = None
        for _ in range(40):  # enough to cross a segment boundary
            segments = sorted((tmp_path / "log").glob("*.seg"))
            try:
                await runtime.run_mutation("accounts:transfer", {"src": "a", "dst": "b", "amount": 1.0})
            except EngineError as exc:
                failure = str(exc)
                break
        assert failure is not None and "disk full" in failure, failure
        assert sorted((tmp_path / "log").glob("*.seg")) == segments  # the half-made segment is gone
        before = balances(runtime)
        del log._write  # space is back
        await runtime.run_mutation("accounts:transfer", {"src": "a", "dst": "b", "amount": 1.0})
        committed = balances(runtime)
        assert committed["a"] == before["a"] - 1.0
        assert len(list((tmp_path / "log").glob("*.seg"))) == len(segments) + 1
    finally:
        await close_runtime(runtime)
    again = await open_runtime(tmp_path)
    try:
        assert balances(again) == committed
    finally:
        await close_runtime(again)


# ------------------------------------------------------------------ through HTTP and WebSocket


@pytest.fixture
async def node_server(tmp_path: Path) -> AsyncIterator[tuple[Node, str]]:
    config = ServerConfig(app_dir=APPS / "bank", data_dir=tmp_path / "data")
    node = Node(config, App.load(APPS / "bank"))
    server = TestServer(build_app(node))
    await server.start_server()
    try:
        yield node, f"http://{server.host}:{server.port}"
    finally:
        await server.close()


async def test_disk_full_over_http_and_websocket(node_server: tuple[Node, str]) -> None:
    node, url = node_server
    async with aiohttp.ClientSession() as http:
        status, body = await http_call(http, url, "mutation", "accounts:seed", {"owners": OWNERS, "balance": 100.0})
        assert status == 200, body
        watcher = await WsClient(url).connect(http)
        qid = await watcher.subscribe("accounts:balances", {"owners": OWNERS})
        writer = await WsClient(url).connect(http)

        node.log._write = enospc  # the disk is full
        status, body = await http_call(http, url, "mutation", "accounts:transfer",
                                       {"src": "a", "dst": "b", "amount": 5.0}, key="client:1")
        assert status == 560, body
        assert "disk full" in body["errorMessage"], body
        resp = await writer.mutate("accounts:transfer", {"src": "a", "dst": "b", "amount": 5.0})
        assert resp["success"] is False and "disk full" in resp["result"], resp
        for _ in range(20):  # queries keep being served
            status, body = await http_call(http, url, "query", "accounts:total", {})
            assert (status, body["value"]) == (200, 400.0)
        reader = await WsClient(url).connect(http)  # new subscriptions too
        rq = await reader.subscribe("accounts:total")
        assert reader.latest(rq) == 400.0

        del node.log._write  # space is back
        status, body = await http_call(http, url, "mutation", "accounts:transfer",
                                       {"src": "a", "dst": "b", "amount": 5.0}, key="client:1")
        assert (status, body["value"]) == (200, 95.0)
        resp = await writer.mutate("accounts:transfer", {"src": "a", "dst": "b", "amount": 5.0})
        assert resp["success"] is True, resp
        await watcher.wait_value(qid, lambda v: v == {"a": 90.0, "b": 110.0, "c": 100.0, "d": 100.0})
        assert not watcher.violations and not writer.violations and watcher.fatal is None
        for client in (watcher, writer, reader):
            await client.close()


# ------------------------------------------------------------------ the projection runs out of space


async def test_projection_write_failure_does_not_split_the_log_and_the_projection(tmp_path: Path) -> None:
    """RocksDB fails (out of space) while applying a batch that is already durable in the log.

    The mutation is committed (it is in the log and will be replayed), so the client must get an
    answer that does not say it failed, later mutations must get an answer too (refusing writes
    until a restart is fine), shutting down must work, and no later mutation may be applied on a
    projection that is missing it: after a restart the projection must equal a replay of the log.
    """
    runtime = await open_runtime(tmp_path)
    answers: dict[str, str] = {}

    async def attempt(name: str, args: dict[str, Any]) -> None:
        try:
            await asyncio.wait_for(runtime.run_mutation("accounts:transfer", args), 3)
            answers[name] = "committed"
        except EngineError as exc:
            answers[name] = f"failed: {exc}"
        except asyncio.TimeoutError:
            answers[name] = "no answer within 3 s"
    try:
        await runtime.run_mutation("accounts:seed", {"owners": OWNERS, "balance": 100.0})
        real_apply = runtime.projection.apply
        calls = {"n": 0}

        def apply_once_full(records: Any) -> None:  # RocksDB refuses the atomic batch: nothing written
            calls["n"] += 1
            if calls["n"] == 1:
                raise Exception("IO error: No space left on device: While appending to file: 000012.sst")
            real_apply(records)
        runtime.projection.apply = apply_once_full  # type: ignore[method-assign]
        await attempt("first", {"src": "a", "dst": "b", "amount": 10.0})
        await attempt("next", {"src": "a", "dst": "c", "amount": 1.0})
    finally:
        try:
            await asyncio.wait_for(runtime.stop(), 3)
        except asyncio.TimeoutError:
            answers["stop"] = "Runtime.stop() did not return within 3 s"
        except Exception as exc:  # the committer task died of the projection error
            answers["stop"] = f"Runtime.stop() raised {exc!r}"
        task = runtime.committer._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        runtime.projection.close()
        await runtime.log.close()

    records = await read_log(tmp_path / "log")
    in_log = [r.function for r in records].count("accounts:transfer")
    again = await open_runtime(tmp_path)
    try:
        state = balances(again)
    finally:
        await close_runtime(again)
    digest, applied, catalog = _digest(tmp_path / "projection")
    fresh, fresh_applied = await replay_digest(tmp_path / "log", tmp_path / "replay", catalog)
    summary = f"answers {answers}; {in_log} transfer(s) in the log; balances after a restart {state}"
    hung = [k for k, v in answers.items() if k != "first" and ("3 s" in v or "raised" in v)]
    hung += ["first"] if "3 s" in answers["first"] else []
    assert not hung, f"the write path hung after a projection write failure: {summary}"
    assert (fresh, fresh_applied) == (digest, applied), \
        f"after a restart the projection is not the replay of the log: {summary}"
    assert not answers["first"].startswith("failed") or in_log == 0, \
        f"a mutation that is durable in the log was reported as failed: {summary}"


def _digest(path: Path) -> tuple[str, int, dict[str, Any]]:
    from tests.reliability.reliability_wire import projection_digest
    return projection_digest(path)
