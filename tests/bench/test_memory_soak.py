"""Smoke test of the memory soak: RSS is sampled through a short run (no memory figure asserted)."""
from __future__ import annotations

from pathlib import Path

from bench import memory_soak, report
from bench.common import Harness


def test_soak_samples_rss_and_reports_the_ratio(tmp_path: Path) -> None:
    with Harness(quick=True, work_dir=tmp_path / "work") as h:
        r = memory_soak.run(True, h, seconds=3.0, warmup=0.5, accounts=500)
    assert r["mutations"] > 0 and r["errors"] == 0
    assert len(r["samples"]) >= 3 and all(mb > 10 for _, mb in r["samples"])
    assert r["end_over_middle"] == r["rss_end_mb"] / r["rss_middle_mb"]
    rows = report.comparisons({"memory": r})
    assert rows[0]["section"] == "memory" and rows[0]["ratio"] == r["end_over_middle"]
