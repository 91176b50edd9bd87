"""Scheduled functions through the gateway: live subscriptions over `_scheduled_functions` with the
official npm client, and replicas that never run jobs (issue 16)."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from engine.app import App
from gateway.config import ServerConfig
from gateway.node import Node
from gateway.replica import ADMIN_KEY_ENV
from gateway.server import build_app
from tests.conftest import APPS
from tests.gateway.test_official_js_client import run_ok
from tests.reliability.reliability_wire import http_call, query

Serve = Callable[..., Awaitable[tuple[Node, str]]]


def test_npm_client_sees_a_job_go_pending_then_success(server_factory) -> None:
    server = server_factory("jobs")
    events = run_ok("scheduled_job.mjs", {"url": server.url, "query": "jobs:jobs",
                                          "mutation": {"path": "jobs:schedule", "args": {"delay_ms": 300,
                                                                                         "tag": "live"}}})
    updates = [e["states"] for e in events if e["event"] == "update"]
    assert updates[0] == [] and ["pending"] in updates and updates[-1] == ["success"]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """Serve the jobs app in-process; returns (node, base URL)."""
    servers: list[TestServer] = []

    async def start(name: str = "committer", **config: Any) -> tuple[Node, str]:
        cfg = ServerConfig(app_dir=APPS / "jobs", data_dir=tmp_path / name, **config)
        node = Node(cfg, App.load(APPS / "jobs"))
        server = TestServer(build_app(node), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return node, str(server.make_url("/")).rstrip("/")

    yield start
    for server in reversed(servers):
        await server.close()


async def test_replica_never_runs_jobs(serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    committer, committer_url = await serve()
    monkeypatch.setenv(ADMIN_KEY_ENV, committer.admin.value)
    replica, replica_url = await serve(name="replica", role="replica", committer_url=committer_url,
                                       log_url=str(tmp_path / "committer" / "log"))
    async with aiohttp.ClientSession() as http:
        status, body = await http_call(http, replica_url, "mutation", "jobs:schedule_many",
                                       {"count": 20, "delay_ms": 200})
        assert status == 200, body
        deadline = time.monotonic() + 10
        while len(await query(http, replica_url, "jobs:events", {})) < 20:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert sorted(await query(http, committer_url, "jobs:events", {})) == sorted(f"m{i}" for i in range(20))
        jobs = await query(http, replica_url, "jobs:jobs", {})
        assert [j["state"]["kind"] for j in jobs] == ["success"] * 20
    assert replica.runtime.scheduler.completed == 0 and committer.runtime.scheduler.completed == 20


async def test_an_action_on_a_replica_schedules_and_cancels_through_the_committer(
        serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    committer, committer_url = await serve()
    monkeypatch.setenv(ADMIN_KEY_ENV, committer.admin.value)
    replica, replica_url = await serve(name="replica", role="replica", committer_url=committer_url,
                                       log_url=str(tmp_path / "committer" / "log"))
    async with aiohttp.ClientSession() as http:
        status, body = await http_call(http, replica_url, "action", "jobs:schedule_from_action", {"tag": "r"})
        assert status == 200, body
        job_id = body["value"]
        deadline = time.monotonic() + 10
        while await query(http, replica_url, "jobs:events", {}) != ["r"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert (await query(http, replica_url, "jobs:job", {"job_id": job_id}))["state"]["kind"] == "success"
        # A cancel from a replica's action reaches the committer too (a finished job stays as it is).
        status, body = await http_call(http, replica_url, "action", "jobs:cancel_from_action", {"job_id": job_id})
        assert status == 200, body
        # The public API never reaches the forwarding paths.
        status, body = await http_call(http, committer_url, "mutation", "_system:schedule_job",
                                       {"name": "jobs:record", "args": {"tag": "x"}, "scheduledTime": 0})
        assert status != 200
    assert replica.runtime.scheduler.completed == 0 and committer.runtime.scheduler.completed == 1
