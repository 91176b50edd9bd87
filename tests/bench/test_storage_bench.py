"""Smoke test of the storage benchmark: a tiny run against real servers, no speed assertions."""
from __future__ import annotations

from pathlib import Path

from bench import cli, report, storage_bench
from bench.common import Harness


def test_storage_bench_runs_end_to_end(tmp_path: Path) -> None:
    with Harness(True, work_dir=tmp_path / "work") as h:
        r = storage_bench.run(True, h, large_mib=2, large_files=1, small_files=40, rounds=1, concurrency=4)
    for side in ("tape", "peer"):
        assert all(value > 0 for value in r[side].values()), r[side]
    assert set(r["ratios"]) == set(r["tape"]) and set(r["met"]) == {"large", "small"}
    assert r["peak_rss_mib"]["tape"] and r["peak_rss_mib"]["peer"]
    assert "KiB files up" in cli.headline("storage", r)
    rows = [row for row in report.comparisons({"storage": r}) if row["section"] == "storage"]
    assert len(rows) == 4 and rows[1]["metric"] == "download of 2 MiB files" and rows[0]["ratio"] > 0
