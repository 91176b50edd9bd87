"""Smoke test of the metrics-cost benchmark: a tiny run against a real server, no speed assertions."""
from __future__ import annotations

from pathlib import Path

from bench import cli, metrics_cost
from bench.common import Harness
from engine import execution


def test_metrics_cost_runs_end_to_end(tmp_path: Path) -> None:
    shipped = execution.observe_call
    with Harness(True, work_dir=tmp_path / "work") as h:
        r = metrics_cost.run(True, h, duration=0.5, accounts=200)
    assert execution.observe_call is shipped  # the no-op is put back
    assert r["cost"]["run_handler_us"] > 0 and r["cost"]["batch_observation_us"] > 0
    for config in r["configs"]:
        assert config["commits"] > 1 and config["observations_per_commit"] >= 1  # every transfer is one call
        assert 0 < config["batches_per_commit"] <= 1 and config["server_cpu_us_per_commit"] > 0
    assert "per function call" in cli.headline("metrics", r)
    assert "metrics" in cli.WORKLOADS
