"""Smoke test of the HTTP actions benchmark: a tiny run against a real server, no speed assertions."""
from __future__ import annotations

from bench import http_actions_bench


def test_http_actions_bench_runs_end_to_end() -> None:
    result = http_actions_bench.run(requests=40, concurrency=4, rounds=1)
    assert set(result["per_second"]) == {"webhook", "webhook_peer", "trivial", "trivial_peer", "action_peer"}
    assert all(value > 0 for value in result["per_second"].values())
    assert result["webhook_ratio"] > 0 and result["trivial_ratio"] > 0 and result["action_ratio"] > 0
