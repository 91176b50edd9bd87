"""SIGKILL rounds with hundreds of pending and running scheduled jobs (issue 16).

Each round schedules 150 mutations and 150 actions (each action records
"<tag>:started", sleeps, then records "<tag>") due over the next 0.6 s, and
SIGKILLs the server 0.1-0.7 s later, while jobs are being dispatched, run
and committed. After the last restart every job must reach a final state,
and then: every scheduled mutation's event exists exactly once (succeeded
jobs) — never twice, never lost; no action started twice; every action is
either success (both events once) or failed with "the server stopped while
it ran" (each event at most once: it may have ended just before the kill,
before its success was recorded), never retried.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import aiohttp

from engine.scheduler import SERVER_STOPPED
from tests.reliability.reliability_wire import http_call, query

ROUNDS = 4
PER_ROUND = 150


async def _wait_final(http: aiohttp.ClientSession, url: str, seconds: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + seconds
    while True:
        jobs = await query(http, url, "jobs:jobs", {})
        if all(j["state"]["kind"] not in ("pending", "inProgress") for j in jobs):
            return jobs
        assert time.monotonic() < deadline, Counter(j["state"]["kind"] for j in jobs)
        await asyncio.sleep(0.1)


def test_sigkill_rounds_apply_mutations_once_and_never_rerun_actions(server_factory, tmp_path) -> None:
    rng = random.Random(16)
    data = tmp_path / "data"
    server = server_factory("jobs", data)

    async def scenario() -> None:
        nonlocal server
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for round_no in range(ROUNDS):
                status, body = await http_call(http, server.url, "mutation", "jobs:schedule_spread",
                                               {"prefix": f"r{round_no}", "count": PER_ROUND, "span_ms": 600,
                                                "sleep": 0.05})
                assert status == 200, body
                await asyncio.sleep(rng.uniform(0.1, 0.7))
                server.kill()
                server = server_factory("jobs", data, port=server.port)
            jobs = await _wait_final(http, server.url)
            tags = Counter(await query(http, server.url, "jobs:events", {}))
        states = Counter(j["state"]["kind"] for j in jobs)
        assert len(jobs) == 2 * ROUNDS * PER_ROUND, states
        for j in jobs:
            tag = j["args"][0]["tag"]
            kind = j["state"]["kind"]
            if j["name"] == "jobs:record":
                assert kind == "success", j  # a scheduled mutation always runs (exactly once)
                assert tags[tag] == 1, (tag, tags[tag])
            else:
                assert tags[tag + ":started"] <= 1, tag  # never run twice
                if kind == "success":
                    assert tags[tag] == 1 and tags[tag + ":started"] == 1, tag
                else:
                    assert kind == "failed" and j["state"]["error"] == SERVER_STOPPED, j
                    assert tags[tag] <= 1, tag  # it may have finished just before the kill: still once
        print(f"\n{ROUNDS} SIGKILL rounds: {dict(states)}; "
              f"actions failed by a kill: {sum(1 for j in jobs if j['state']['kind'] == 'failed')}")

    asyncio.run(scenario())
