"""Smoke test of bench/log_open.py (FileLog open time against history length)."""
from __future__ import annotations

from pathlib import Path

from bench import log_open


async def test_log_open_bench_measures_both_sizes(tmp_path: Path) -> None:
    result = await log_open.run_async([200, 3_000], tmp_path, 1, True, False, verbose=False)
    small, large = result["sizes"]
    assert small["records"] == 200 and large["records"] == 3_000
    for size in (small, large):
        assert size["open_median_s"] > 0 and size["open_without_seals_s"] > 0 and size["segments"] == 1
    assert isinstance(result["met"], bool) and result["ratio_largest_vs_smallest"] is not None
    assert not any(tmp_path.iterdir())  # logs removed unless kept
