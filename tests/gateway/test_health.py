"""`GET /health`: 200 with role, offset and lag on a healthy node; 503 with the state and reason otherwise."""
from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.gateway.served_node import served_node


async def get(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            return resp.status, await resp.json()


async def test_health_of_a_committer_follows_its_writer_state(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data") as (node, url):
        await node.runtime.run_mutation("lists:create", {"name": "l"})
        status, report = await get(f"{url}/health")
        assert status == 200, report
        assert report["role"] == "committer" and report["state"] == "ok" and report["healthy"] is True
        assert report["offset"] == 0 and report["log_end"] == 1 and report["lag"] == 0 and report["ts"] > 0

        committer = node.runtime.committer
        committer._recovering = "an append's outcome is unknown: simulated"  # what a broker stall sets
        status, report = await get(f"{url}/health")
        assert status == 503 and report["state"] == "recovering" and "simulated" in report["reason"], report
        committer._recovering = None

        node.log.fenced = "the topic no longer exists (simulated)"  # a KafkaLog fenced for good
        status, report = await get(f"{url}/health")
        assert status == 503 and report["state"] == "fenced" and report["healthy"] is False, report
        del node.log.fenced

        committer._broken = "writes are refused until the server restarts (simulated)"
        status, report = await get(f"{url}/health")
        assert status == 503 and report["state"] == "broken", report
        committer._broken = None
        assert (await get(f"{url}/health"))[0] == 200

        status, body = await get(f"{url}/health?max_lag=lots")
        assert status == 400 and "max_lag" in body["error"]
