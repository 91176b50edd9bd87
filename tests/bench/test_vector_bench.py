"""Smoke test of bench/vector_bench.py (build rate, latency and recall against exact search)."""
from __future__ import annotations

from pathlib import Path

from bench import report, vector_bench
from projections import vector_index


def test_vector_bench_quick_run_and_report_rows(tmp_path: Path) -> None:
    before = vector_index.EXACT_BELOW
    r = vector_bench.run(True, n=1_000, dims=16, queries=8, work_dir=tmp_path)
    assert vector_index.EXACT_BELOW == before  # the bench restores the threshold it lowers
    assert r["n"] == 1_000 and r["build_docs_per_s"] > 0 and r["ann_p50_ms"] > 0 and r["exact_p50_ms"] > 0
    assert 0.9 <= r["recall_at_10"] <= 1.0 and 0.9 <= r["filtered_recall_at_10"] <= 1.0
    assert isinstance(r["goal"]["met"], bool) and "recall@10" in vector_bench.headline(r)
    rows = [row for row in report.comparisons({"vector": r}) if row["section"] == "vector"]
    assert len(rows) == 2 and rows[0]["peer_name"] == "exact numpy search" and rows[0]["met"] is None
    assert not any(tmp_path.iterdir())  # the scratch projection is removed
