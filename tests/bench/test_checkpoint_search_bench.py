"""Smoke test of bench/checkpoint_search_bench.py: both ways of opening a checkpoint run and answer."""
from __future__ import annotations

from pathlib import Path

from bench import checkpoint_search_bench, cli


def test_checkpoint_search_bench_runs(tmp_path: Path) -> None:
    r = checkpoint_search_bench.run(2_000, work=tmp_path)
    assert r["docs"] == 2_000 and r["checkpoint_search_bytes"] > 0
    assert len(r["open_carried_runs_s"]) == len(r["open_rebuilt_runs_s"]) == checkpoint_search_bench.REPEAT
    assert 0 < r["open_carried_s"] and 0 < r["open_rebuilt_s"]
    assert "checkpoint" in cli.WORKLOADS and cli.headline("checkpoint", r) == checkpoint_search_bench.headline(r)
