"""Smoke test of bench/lifecycle_bench.py: a replica joins from a checkpoint; --retain bounds the log."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench import lifecycle_bench
from bench.cli import _selected


@pytest.mark.slow
def test_lifecycle_bench_runs_end_to_end(tmp_path: Path) -> None:
    result = asyncio.run(lifecycle_bench.run_async(2_000, tmp_path, True, window=1.0))
    join, kept = result["replica_join"], result["retention"]
    assert join["records"] == 2_000 and join["checkpoint_offset"] >= 1_999
    assert join["first_query_s"] > 0 and join["checkpoint_bytes"] > 0 and join["plain_copy_bytes"] > 0
    assert join["copy_vs_plain"] is not None and isinstance(join["met"], bool)
    assert kept["writes"] > 0 and kept["archived_bytes"] > 0  # retention moved segments to the archive
    assert kept["log_bytes_end"] < kept["appended_bytes"] and kept["checkpoints"] >= 1
    assert "first query" in lifecycle_bench.headline(result)


def test_a_full_run_leaves_the_ten_million_record_join_to_only() -> None:
    assert "lifecycle" in _selected(None, quick=True)
    assert "lifecycle" not in _selected(None, quick=False)
    assert _selected("lifecycle", quick=False) == ["lifecycle"]
