"""Why user code runs on the event loop first: the cost of a thread hop per query, measured.

    python -m bench.thread_hop

Runs a one-document query (the kitchen test app's `stress:read_all` over one
document) 5,000 times in each of three ways, five alternating rounds, and
prints the median cost per query: on the event loop (Tape's fast path),
handed to a worker thread (what running every function on a pool would
cost), and on a worker thread against a read view (Tape's slow path).
"""
from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from engine.app import App
from engine.runtime import Runtime
from log.file_log import FileLog
from projections.store import Projection

APP = Path(__file__).resolve().parents[1] / "tests" / "apps" / "limits"
CALLS = 5000
ROUNDS = 5


async def measure() -> dict[str, float]:
    """Median microseconds per query for each way of running it."""
    with tempfile.TemporaryDirectory() as tmp:
        app = App.load(APP)
        log = FileLog(Path(tmp) / "log")
        await log.open()
        projection = Projection(Path(tmp) / "projection", app.schema.index_catalog())
        runtime = Runtime(app, log, projection)
        await runtime.start()
        try:
            await runtime.run_mutation("stress:insert_many", {"n": 1})
            loop = asyncio.get_running_loop()
            samples: dict[str, list[float]] = {"event loop": [], "worker thread": [], "worker thread + read view": []}
            for _ in range(ROUNDS):
                started = time.perf_counter()
                for _ in range(CALLS):
                    runtime.evaluate_query("stress:read_all", {})
                samples["event loop"].append((time.perf_counter() - started) / CALLS * 1e6)
                started = time.perf_counter()
                for _ in range(CALLS):
                    await loop.run_in_executor(runtime.query_workers, runtime.evaluate_query, "stress:read_all", {})
                samples["worker thread"].append((time.perf_counter() - started) / CALLS * 1e6)
                started = time.perf_counter()
                for _ in range(CALLS):
                    await runtime.query_at(runtime.snapshots.open(runtime.projection), "stress:read_all", {})
                samples["worker thread + read view"].append((time.perf_counter() - started) / CALLS * 1e6)
            return {name: statistics.median(values) for name, values in samples.items()}
        finally:
            await runtime.stop()
            projection.close()
            await log.close()


def main() -> None:
    results = asyncio.run(measure())
    base = results["event loop"]
    for name, micros in results.items():
        print(f"{name:28s} {micros:8.1f} µs per query  ({micros / base:.1f}× the event loop)")


if __name__ == "__main__":
    main()
