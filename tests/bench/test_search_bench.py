"""Smoke test of bench/search_bench.py: every part runs on a small corpus and reports against its peers."""
from __future__ import annotations

from pathlib import Path

from bench import report, search_bench


def test_search_bench_runs_every_part(tmp_path: Path) -> None:
    r = search_bench.run(True, n=1_000, work_dir=tmp_path, transfer_seconds=0.3, samples=10, subscriptions=100)
    assert r["build"]["docs_per_s"] > 0 and r["build"]["sqlite_fts5_docs_per_s"] > 0
    assert r["query"]["tape_results"] > 0 and r["query"]["sqlite_results"] > 0
    assert r["query"]["tape"]["p50_ms"] <= r["query"]["tape"]["p99_ms"]
    assert r["beside"]["tps_alone"] > 0 and r["beside"]["runs"]["with_search"]["search_queries"] > 0
    assert r["subscribers"]["subscriptions"] == 100 and r["subscribers"]["n"] == 10
    rows = [row for row in report.comparisons({"search": r}) if row["section"] == "search"]
    assert len(rows) == 5 and all(row["ratio"] is not None for row in rows)
    assert "docs/s" in search_bench.headline(r)
