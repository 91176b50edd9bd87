"""A hostile caller cannot take a real server away from everyone else (issue: isolation).

Each test starts `tape dev` on the limits test app, attacks it the way the
issue describes (a mutation, a query and an action looping forever; many
slow mutations at once) and checks that a bystander is still served, that the
attacker gets a clear error, and that SIGTERM stops the server promptly.
Latency figures belong to `tape bench --only isolation`; the bounds here are
generous and only tell "served" from "stalled behind the attacker".
"""
from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.server_process import ServerProcess

APPS = Path(__file__).resolve().parents[1] / "apps"
STALLED = 0.5  # a bystander call slower than this was held up behind the attacker


async def _call(http: aiohttp.ClientSession, url: str, kind: str, path: str, args: dict[str, Any],
                timeout: float = 30) -> tuple[int, Any]:
    async with http.post(f"{url}/api/{kind}", json={"path": path, "args": args, "format": "json"},
                         timeout=aiohttp.ClientTimeout(total=timeout)) as r:
        return r.status, await r.json()


async def _bystander(http: aiohttp.ClientSession, url: str, seconds: float) -> list[float]:
    """One-document queries in a loop; returns each call's latency."""
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        status, body = await _call(http, url, "query", "stress:read_all", {})
        assert status == 200, body
        latencies.append(time.monotonic() - started)
        await asyncio.sleep(0.01)
    return latencies


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    proc = ServerProcess(APPS / "limits", tmp_path / "data").start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("kind,path", [("mutation", "stress:write_then_spin"), ("query", "stress:spin_forever"),
                                       ("action", "stress:spin_action")])
async def test_a_function_looping_forever_stalls_nobody(server: ServerProcess, kind: str, path: str) -> None:
    async with aiohttp.ClientSession() as http:
        attack = asyncio.ensure_future(_call(http, server.url, kind, path, {}, timeout=700))
        await asyncio.sleep(0.2)
        latencies = await _bystander(http, server.url, 1.5)
        if kind != "action":  # (an action's bound is 10 minutes: it is still spinning, off the loop)
            status, body = await attack
            assert status == 560 and "ran longer than 1s" in body["errorMessage"], body
        else:
            attack.cancel()
    assert len(latencies) > 20 and max(latencies) < STALLED, latencies


async def test_many_slow_mutations_wait_for_each_other_not_the_readers(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        slow = [asyncio.ensure_future(_call(http, server.url, "mutation", "stress:insert_slowly", {"seconds": 0.4}))
                for _ in range(10)]
        await asyncio.sleep(0.2)
        latencies = await _bystander(http, server.url, 2.0)
        results = await asyncio.gather(*slow)
    assert all(status == 200 for status, _ in results), results
    assert max(latencies) < STALLED, latencies


def test_sigterm_stops_the_server_within_2s_whatever_user_code_runs(tmp_path: Path) -> None:
    proc = ServerProcess(APPS / "limits", tmp_path / "data").start()

    async def attack() -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(5):  # queued behind each other on the writer
                asyncio.ensure_future(_call(http, proc.url, "mutation", "stress:write_then_spin", {}))
            asyncio.ensure_future(_call(http, proc.url, "action", "stress:spin_action", {}, timeout=700))
            asyncio.ensure_future(_call(http, proc.url, "query", "stress:spin_forever", {}))
            await asyncio.sleep(0.3)
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            while proc.proc.poll() is None and time.monotonic() - started < 10:
                await asyncio.sleep(0.02)
            elapsed = time.monotonic() - started
            assert proc.proc.poll() is not None, "SIGTERM did not stop the server"
            assert elapsed < 2.0, f"SIGTERM took {elapsed:.2f}s"

    try:
        asyncio.run(attack())
    finally:
        proc.kill()
