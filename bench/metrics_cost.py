"""What counting for `/metrics` costs the hot path (issue 19): per observation, and per transfer.

Two parts:

* **In process**: `engine.execution.run_handler` on a trivial handler, with the
  function-duration observation as shipped and with it replaced by a no-op
  (the only difference), alternated; plus one group-commit observation.
  Minimum over rounds, CPU time per call.
* **Against a server**: WebSocket transfers (`bench.transfer.drive_ws`, 64
  clients) on the bank app at α = 0 and 1.5, with `/metrics` scraped before and
  after each: how many observations each committed transfer caused (function
  calls, group commits, fsyncs) and how much server CPU it took
  (``process_cpu_seconds_total``). The estimated overhead is
  observations × cost ÷ CPU per transfer.

The no-op still reads the clock (one ``time.monotonic()``, ~0.05-0.1 µs), and
the fsync timing runs on the log's writer thread, not the event loop; neither
is in the figure. An end-to-end TPS comparison cannot resolve a sub-percent
difference on a shared 2-core machine (paired runs there vary by 2× and
more); this counts it instead.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.common import Zipf, accounts_for, harness_for
from bench.reactivity import admin_key_of
from bench.transfer import drive_ws
from engine import execution
from engine.metrics import COMMIT_BATCH_RECORDS

CLIENTS = 64


async def _trivial() -> int:
    return 1


def _per_call_us(calls: int) -> float:
    run = execution.run_handler
    started = time.process_time()
    for _ in range(calls):
        run(_trivial(), "bench:trivial")
    return (time.process_time() - started) / calls * 1e6


def observation_cost(quick: bool) -> dict[str, float]:
    """µs of CPU per run_handler call with and without the observation, and per group-commit observation."""
    calls, rounds = (20_000, 5) if quick else (100_000, 9)
    shipped = execution.observe_call
    with_metrics, without = [], []
    try:
        for _ in range(rounds):
            execution.observe_call = shipped
            with_metrics.append(_per_call_us(calls))
            execution.observe_call = lambda _key, _value: None
            without.append(_per_call_us(calls))
    finally:
        execution.observe_call = shipped
    started = time.process_time()
    for _ in range(calls):
        COMMIT_BATCH_RECORDS.observe(37)
    batch_us = (time.process_time() - started) / calls * 1e6
    return {"run_handler_us": min(with_metrics), "run_handler_without_observation_us": min(without),
            "function_observation_us": max(0.0, min(with_metrics) - min(without)), "batch_observation_us": batch_us}


async def _scrape(url: str, key: str | None) -> dict[str, float]:
    headers = {"Authorization": f"Convex {key}"} if key else {}
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics", headers=headers) as r:
        text = await r.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_count", "_total")):
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def run(quick: bool = False, harness: Any = None, *, duration: float | None = None,
        accounts: int | None = None) -> dict[str, Any]:
    """Both parts; returns the figures (see the module docstring)."""
    cost = observation_cost(quick)
    seconds = duration if duration is not None else (3.0 if quick else 10.0)
    out: dict[str, Any] = {"cost": cost, "configs": []}
    with harness_for(quick, harness) as h:
        tape = h.tape(accounts or accounts_for(quick))
        key = admin_key_of(tape.server.argv)
        before = asyncio.run(_scrape(tape.url, key))
        for alpha in (0.0, 1.5):
            pairs = Zipf(tape.accounts, alpha, seed=11).pairs(20_000 if quick else 100_000)
            h.reporter.phase(f"metrics: WebSocket transfers, α={alpha:g}, counting observations", seconds + 0.5)
            res = asyncio.run(drive_ws(tape.port, pairs, CLIENTS, seconds, 0.5))
            after = asyncio.run(_scrape(tape.url, key))
            d = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
            before = after
            commits = max(d.get("tape_commits_total", 0.0), 1.0)
            calls = d.get("tape_function_duration_seconds_count", 0.0) / commits
            batches = d.get("tape_commit_batches_total", 0.0) / commits
            cpu_us = d.get("process_cpu_seconds_total", 0.0) / commits * 1e6
            added_us = calls * cost["function_observation_us"] + batches * cost["batch_observation_us"]
            out["configs"].append({
                "alpha": alpha, "tps": res["tps"], "commits": commits, "observations_per_commit": round(calls, 3),
                "batches_per_commit": round(batches, 4), "server_cpu_us_per_commit": round(cpu_us, 1),
                "added_us_per_commit": round(added_us, 3),
                "overhead_pct": round(added_us / cpu_us * 100, 3) if cpu_us else None})
    return out


def headline(r: dict[str, Any]) -> str:
    """One line for `tape bench`."""
    c = r["cost"]
    parts = [f"α={x['alpha']:g}: {x['added_us_per_commit']:.2f} µs of {x['server_cpu_us_per_commit']:.0f} µs CPU per "
             f"transfer ({x['overhead_pct']:.2f} %)" for x in r["configs"]]
    return f"observation {c['function_observation_us']:.2f} µs per function call; " + "; ".join(parts)


if __name__ == "__main__":  # pragma: no cover
    import sys

    import orjson
    result = run(quick="--quick" in sys.argv)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(headline(result))
