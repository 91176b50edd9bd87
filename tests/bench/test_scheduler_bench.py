"""Smoke test of the scheduler benchmark: both parts run end to end on tiny sizes (no timing asserted)."""
from __future__ import annotations

import asyncio

from bench import report, scheduler_bench


def test_burst_runs_every_job_and_reports_a_ratio() -> None:
    result = asyncio.run(scheduler_bench.burst(200, 1))
    assert result["jobs"] == 200
    assert result["jobs_per_s"] > 0 and result["direct_per_s"] > 0
    assert result["ratio"] == result["direct_ms"] / result["due_to_last_ms"]


def test_lateness_measures_jobs_due_in_the_window_beside_transfers() -> None:
    result = asyncio.run(scheduler_bench.lateness(accounts=500, seconds=1.0, rate=200.0))
    assert result["jobs"] > 50  # ~200 due in the measured second; the machine may be slow, never none
    assert 0 <= result["lateness_p50_ms"] <= result["lateness_p99_ms"] <= result["lateness_max_ms"]
    assert result["transfers_per_s"] > 0 and result["transfers_alone_per_s"] > 0
    rows = report.comparisons({"scheduler": {"burst": asyncio.run(scheduler_bench.burst(50, 1)),
                                             "lateness": result}})
    assert [r["section"] for r in rows] == ["scheduler", "scheduler"]
    assert rows[1]["tape"] == result["lateness_p99_ms"]
