"""Smoke test of the isolation benchmark: a tiny run against a real server, no latency assertions."""
from __future__ import annotations

from pathlib import Path

from bench import cli, isolation, report
from bench.common import Harness

FIGURE_KEYS = {"n", "ok", "errors", "timeouts", "p50_ms", "p90_ms", "p99_ms", "max_ms", "error_kinds"}


def test_isolation_runs_end_to_end(tmp_path: Path) -> None:
    with Harness(quick=True, work_dir=tmp_path / "work") as h:
        r = isolation.run(True, h, seconds=1.0, overrides={"timeout_s": 1.0, "burners": 2, "recovery_limit_s": 15.0})

    assert {"settings", "idle", "attack", "recovery_s", "memory", "goal"} <= set(r)
    for phase in ("idle", "attack"):
        for key in ("http", "subscribe"):
            fig = r[phase][key]
            assert FIGURE_KEYS <= set(fig), (phase, key)
            assert fig["n"] > 0 and fig["p50_ms"] > 0 and fig["max_ms"] >= fig["p99_ms"] >= fig["p50_ms"]
            assert fig["n"] == fig["ok"] + fig["errors"] + fig["timeouts"]
        assert r[phase]["memory_before"]["rss_kb"] > 0
    assert r["idle"]["http"]["ok"] > 0 and r["idle"]["subscribe"]["ok"] > 0
    attackers = r["attack"]["attackers"]
    assert set(attackers) == {"spin_mutation", "spin_query", "spin_for", "burners"}
    assert all(a["sent"] > 0 for a in attackers.values())
    assert r["memory"]["start"]["rss_kb"] > 0 and r["memory"]["end"]["rss_kb"] > 0
    assert isinstance(r["goal"]["met"], bool)

    results = {"mode": "quick", "started": "2026-01-01T00:00:00+00:00", "duration_s": 1.0, "command": "tape bench",
               "machine": report.machine_info(), "workloads": {"isolation": r}, "errors": {}}
    results["comparisons"] = report.comparisons(results["workloads"])
    assert [row["section"] for row in results["comparisons"]] == ["isolation", "isolation"]
    assert "## Isolation" in report.markdown(results)
    assert "bystander p99" in cli.headline("isolation", r)
