"""Smoke test of the auth benchmark: a tiny run against a real server, no speed assertions."""
from __future__ import annotations

from pathlib import Path

from bench import auth_bench, cli, report
from bench.common import Harness


def test_auth_bench_runs_end_to_end(tmp_path: Path) -> None:
    with Harness(True, work_dir=tmp_path / "work") as h:
        r = auth_bench.run(True, h, duration=0.5, warmup=0.1, accounts=200, sockets=20)
    for transport in ("http", "ws"):
        t = r["transfer"][transport]
        assert t["authenticated"]["tps"] > 0 and t["anonymous"]["tps"] > 0
        assert t["authenticated"]["errors"] == 0 and t["anonymous"]["errors"] == 0, t
    for phase in ("first", "refresh", "switch"):
        assert r["reauth"][phase]["n"] == 20
    assert "re-authenticating" in cli.headline("auth", r)
    results = {"mode": "quick", "started": "2026-01-01T00:00:00+00:00", "duration_s": 1.0,
               "command": "tape bench --only auth", "machine": report.machine_info(), "workloads": {"auth": r},
               "errors": {}}
    assert report.write(results, tmp_path / "out")  # results.json carries the workload
