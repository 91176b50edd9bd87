"""GET /metrics: admin key required on the server's port, parsed with prometheus_client's own parser."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from client import Client
from tests.gateway.served_node import served_node


def families(text: str) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """{family name: {(sample name, sorted labels): value}}, parsed the way Prometheus does."""
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
    return out


async def test_metrics_need_the_admin_key_and_count_what_happened(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data") as (node, url), aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics") as r:
            assert r.status == 401 and "admin key" in (await r.json())["message"]
        async with http.get(f"{url}/metrics", headers={"Authorization": "Convex wrong"}) as r:
            assert r.status == 401

        async def call(kind: str, path: str, args: dict) -> dict:  # type: ignore[type-arg]
            async with http.post(f"{url}/api/{kind}", json={"path": path, "args": args}) as r:
                return await r.json()  # type: ignore[no-any-return]
        list_id = (await call("mutation", "lists:create", {"name": "m"}))["value"]
        await call("mutation", "lists:add", {"list_id": list_id, "text": ""})          # AppError
        await call("mutation", "lists:crash", {})                                       # uncaught exception
        async with Client(url) as client:
            sub = client.subscribe("lists:items", {"list_id": list_id})
            assert await sub.next(5) == []
            await client.mutation("lists:add", {"list_id": list_id, "text": "milk"})
            assert len(await sub.next(5)) == 1
            for key in (f"Convex {node.admin.value}", f"Bearer {node.admin.value}"):
                async with http.get(f"{url}/metrics", headers={"Authorization": key}) as r:
                    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
                    text = await r.text()
        m = families(text)
    assert m["tape_commits"][("tape_commits_total", ())] == 2  # create + add (failed calls commit nothing)
    assert m["tape_commit_batches"][("tape_commit_batches_total", ())] >= 1
    assert m["tape_commit_batch_records"][("tape_commit_batch_records_count", ())] >= 1
    assert m["tape_fsync_seconds"][("tape_fsync_seconds_count", ())] >= 1
    assert m["tape_sessions"][("tape_sessions", ())] == 1
    assert m["tape_subscriptions"][("tape_subscriptions", ())] == 1
    assert m["tape_pushed_bytes"][("tape_pushed_bytes_total", ())] > 0
    assert m["tape_log_offset"][("tape_log_offset", ())] == m["tape_applied_offset"][("tape_applied_offset", ())] == 1
    durations = m["tape_function_duration_seconds"]
    count = "tape_function_duration_seconds_count"
    assert durations[(count, (("outcome", "success"), ("path", "lists:create")))] >= 1
    assert durations[(count, (("outcome", "app_error"), ("path", "lists:add")))] >= 1
    assert durations[(count, (("outcome", "error"), ("path", "lists:crash")))] >= 1
    assert durations[(count, (("outcome", "success"), ("path", "lists:items")))] >= 2  # first run + re-run
    assert ("tape_scheduler_lateness_seconds_count", ()) in m["tape_scheduler_lateness_seconds"]
    assert "process_resident_memory_bytes" in m


async def test_scheduler_lateness_and_actions_are_measured(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", app="jobs") as (node, url), aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Convex {node.admin.value}"}

        async def scrape() -> dict:  # type: ignore[type-arg]
            async with http.get(f"{url}/metrics", headers=headers) as r:
                return families(await r.text())
        before = (await scrape())["tape_scheduler_lateness_seconds"][("tape_scheduler_lateness_seconds_count", ())]
        async with http.post(f"{url}/api/mutation", json={"path": "jobs:schedule_action",
                                                          "args": {"delay_ms": 0, "tag": "t", "sleep": 0}}) as r:
            assert r.status == 200
        for _ in range(100):
            m = await scrape()
            if m["tape_scheduled_jobs_completed"][("tape_scheduled_jobs_completed_total", ())] >= 1:
                break
            await asyncio.sleep(0.05)
    assert m["tape_scheduler_lateness_seconds"][("tape_scheduler_lateness_seconds_count", ())] >= before + 1
    durations = m["tape_function_duration_seconds"]
    assert durations[("tape_function_duration_seconds_count", (("outcome", "success"), ("path", "jobs:work")))] >= 1


async def test_a_replica_reports_its_lag(tmp_path: Path) -> None:
    async with served_node(tmp_path / "committer") as (committer, url), aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/mutation", json={"path": "lists:create", "args": {"name": "r"}}) as r:
            assert r.status == 200
        async with served_node(tmp_path / "replica", role="replica", log_url=str(tmp_path / "committer" / "log"),
                               committer_url=url, admin_key=committer.admin.value) as (replica, replica_url):
            async with http.post(f"{replica_url}/api/mutation",
                                 json={"path": "lists:create", "args": {"name": "via replica"}}) as r:
                assert r.status == 200  # forwarded, answered once applied here
            async with http.get(f"{replica_url}/metrics",
                                headers={"Authorization": f"Convex {replica.admin.value}"}) as r:
                m = families(await r.text())
    assert m["tape_info"][("tape_info", (("role", "replica"), ("version", replica.version)))] == 1
    assert m["tape_replica_lag_records"][("tape_replica_lag_records", ())] == 0
    assert m["tape_replica_lag_seconds"][("tape_replica_lag_seconds", ())] == 0
    assert m["tape_replica_apply_delay_seconds"][("tape_replica_apply_delay_seconds_count", ())] >= 1
    assert m["tape_applied_offset"][("tape_applied_offset", ())] == 1
