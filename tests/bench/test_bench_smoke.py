"""Smoke tests of `tape bench`: a tiny transfer run against real servers and the result writers.

Nothing here asserts timing: only that the workloads run end to end, keep
the total balance, and produce well-formed results.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from bench import report, sqlite_baseline, transfer
from bench.common import BenchError, ChildServer, Harness, Zipf, latency_summary, percentile

CONFIG_KEYS = {"transport", "alpha", "clients", "duration_s", "transfers", "tps", "p50_ms", "p99_ms", "failed",
               "errors", "latency_ms_sorted"}


def test_transfer_and_baseline_end_to_end(tmp_path: Path) -> None:
    with Harness(quick=True, work_dir=tmp_path / "work") as h:
        tape = transfer.run(True, h, accounts=1000, duration=1.0, warmup=0.2, clients=8)
        peer = sqlite_baseline.run(True, h, accounts=1000, duration=0.5, warmup=0.1, clients=8)

    for result, transports in ((tape, {"http", "ws"}), (peer, {"http"})):
        assert result["accounts"] == 1000
        assert result["total_expected"] == 1000 * 1_000_000_000
        assert result["total_after"] == result["total_expected"]
        assert result["total_unchanged"] is True
        configs = result["configs"]
        assert {(c["transport"], c["alpha"]) for c in configs} == {(t, a) for t in transports for a in (0.0, 1.5)}
        for c in configs:
            assert CONFIG_KEYS <= set(c)
            assert c["errors"] == 0, c.get("first_error")
            assert c["failed"] == 0
            assert c["transfers"] > 0
            assert c["p50_ms"] <= c["p99_ms"]

    results = {"mode": "quick", "started": "2026-01-01T00:00:00+00:00", "duration_s": 1.0, "command": "tape bench",
               "machine": report.machine_info(), "machine_end": report.machine_info(),
               "workloads": {"transfer": tape, "baseline": peer}, "errors": {}, "profiles": {}}
    out = tmp_path / "out"
    written = report.write(results, out)
    assert {p.name for p in written} >= {"results.json", "results.md", "transfer_tps.png", "transfer_latency.png"}
    for p in written:
        assert p.exists() and p.stat().st_size > 0
    data = json.loads((out / "results.json").read_text())
    assert data["machine"]["cores"] >= 1
    assert data["workloads"]["transfer"]["total_unchanged"] is True
    ratios = [r for r in data["comparisons"] if r["metric"].startswith("TPS, Tape over")]
    assert len(ratios) == 4 and all(r["ratio"] > 0 and r["peer_name"].startswith("SQLite") for r in ratios)
    md = (out / "results.md").read_text()
    assert "| Workload | Metric |" in md and "cores" in md and "Ratio (Tape ÷ peer)" in md


def test_report_without_results_and_nan() -> None:
    results = {"mode": "quick", "started": "x", "duration_s": 0.0, "command": "tape bench",
               "machine": report.machine_info(), "workloads": {}, "errors": {"transfer": "port 1 is taken"}}
    results["comparisons"] = report.comparisons(results["workloads"])
    md = report.markdown(results)
    assert "port 1 is taken" in md
    assert report.fmt(float("nan")) == "–"


def test_zipf_and_statistics() -> None:
    uniform = Zipf(100, 0.0, seed=3).pairs(20_000)
    skewed = Zipf(100, 1.5, seed=3).pairs(20_000)
    assert len(uniform) == len(skewed) == 20_000
    assert all(a != b and 0 <= a < 100 and 0 <= b < 100 for a, b in uniform + skewed)
    top_uniform = sum(1 for a, _ in uniform if a == 0) / len(uniform)
    top_skewed = sum(1 for a, _ in skewed if a == 0) / len(skewed)
    assert top_uniform < 0.03 and top_skewed > 0.25
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0 and percentile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0
    s = latency_summary([0.001, 0.002, 0.003])
    assert s["n"] == 3 and s["p50_ms"] == pytest.approx(2.0) and s["max_ms"] == pytest.approx(3.0)


def test_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        child = ChildServer("SQLite peer", ["true"], port, tmp_path / "peer.log")
        with pytest.raises(BenchError, match=f"port {port} .* is taken"):
            child.start()


def test_peer_that_cannot_start_is_a_clear_error(tmp_path: Path) -> None:
    import sys
    from bench.common import free_port
    child = ChildServer("broken peer", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"], free_port(),
                        tmp_path / "peer.log")
    with pytest.raises(BenchError, match=r"broken peer could not start \(exit status 3\)[\s\S]*boom"):
        child.start(timeout=10)


def test_cli_registers_bench() -> None:
    from ops.cli import build_parser
    args = build_parser().parse_args(["bench", "--quick", "--only", "transfer,log", "--out", "x"])
    assert args.quick and args.only == "transfer,log" and args.out == "x"
    from bench.cli import _selected
    assert _selected("polling,transfer") == ["transfer", "polling"]
    from ops.cli import CliError
    with pytest.raises(CliError, match="unknown workload"):
        _selected("nope")
