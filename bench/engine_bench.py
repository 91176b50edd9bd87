"""In-process engine benchmark: the bank transfer mutation through runtime + FileLog + Projection.

Measures mutations/s including log append (fsync'd group commit) and
projection apply, at Zipf α = 0 and α = 1.5, with many concurrent callers.
"""
from __future__ import annotations

import asyncio
import bisect
import gc
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.app import App
from engine.runtime import Runtime
from gateway.node import GC_GEN0_THRESHOLD
from log.file_log import FileLog
from bench.common import transfer_loop
from projections.store import Projection

BANK = Path(__file__).resolve().parents[1] / "examples" / "bank"
TARGET_TPS = 20_000  # the engine issue's goal, in-process, at any contention level


def zipf_sampler(n: int, alpha: float, rng: random.Random):  # type: ignore[no-untyped-def]
    """Return a function drawing ranks in [0, n) with P(k) ∝ 1/(k+1)^alpha."""
    if alpha == 0:
        return lambda: rng.randrange(n)
    weights = [1.0 / (k + 1) ** alpha for k in range(n)]
    total = sum(weights)
    cdf, acc = [], 0.0
    for w in weights:
        acc += w / total
        cdf.append(acc)
    return lambda: min(bisect.bisect_left(cdf, rng.random()), n - 1)


async def _run(accounts: int, alpha: float, seconds: float, concurrency: int, data: Path) -> dict[str, Any]:
    thresholds = gc.get_threshold()
    app = App.load(BANK)
    log = FileLog(data / "log")
    await log.open()
    projection = Projection(data / "projection", app.schema.index_catalog())
    runtime = Runtime(app, log, projection)
    await runtime.start()
    owners = [f"acct{i}" for i in range(accounts)]
    for i in range(0, accounts, 2000):
        await runtime.run_mutation("accounts:seed", {"owners": owners[i:i + 2000], "balance": 1_000_000_000.0})
    # The collector settings a served node applies once its long-lived state is built (gateway.node).
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
    rng = random.Random(42)
    draw = zipf_sampler(accounts, alpha, rng)
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    started = time.perf_counter()
    cpu0, main0 = time.process_time(), time.thread_time()
    batches0 = runtime.committer.batches
    await asyncio.gather(*(transfer_loop(runtime, owners, draw, stop_at, latencies) for _ in range(concurrency)))
    done = len(latencies)
    elapsed = time.perf_counter() - started
    cpu, main_cpu = time.process_time() - cpu0, time.thread_time() - main0
    # Summed in chunks: a query may read at most 16,384 documents and return an object of at most 1,024 fields.
    total = 0.0
    for i in range(0, accounts, 1000):
        total += sum(runtime.run_query("accounts:balances", {"owners": owners[i:i + 1000]}).value.values())
    batches = runtime.committer.batches - batches0
    await runtime.stop()
    projection.close()
    await log.close()
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    latencies.sort()
    return {
        "alpha": alpha, "accounts": accounts, "concurrency": concurrency, "mutations": done,
        "tps": done / elapsed, "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000, "mean_batch": done / max(batches, 1),
        "total_ok": total == accounts * 1_000_000_000.0,
        # CPU per mutation: the whole process (all threads) and the event-loop thread alone; the
        # loop thread near elapsed/mutation means the run is bound by one core (the GIL), not by fsync
        "cpu_us_per_mutation": cpu / max(done, 1) * 1e6, "loop_cpu_us_per_mutation": main_cpu / max(done, 1) * 1e6,
        "loop_busy": main_cpu / elapsed,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Run both contention levels; returns a dict of results."""
    accounts = 10_000 if quick else 100_000
    seconds = 3.0 if quick else 10.0
    out: dict[str, Any] = {"runs": [], "target_tps": TARGET_TPS}
    for alpha in (0.0, 1.5):
        with tempfile.TemporaryDirectory(dir=".") as tmp:
            out["runs"].append(asyncio.run(_run(accounts, alpha, seconds, 256, Path(tmp))))
    tps = [r["tps"] for r in out["runs"]]
    out["contention_ratio"] = tps[1] / tps[0]
    out["median_tps"] = statistics.median(tps)
    return out


if __name__ == "__main__":
    import sys
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    result = run(quick="--quick" in sys.argv)
    for r in result["runs"]:
        print(f"alpha={r['alpha']}: {r['tps']:,.0f} mutations/s  p50={r['p50_ms']:.2f} ms  p99={r['p99_ms']:.2f} ms  "
              f"batch={r['mean_batch']:.0f}  loop CPU {r['loop_cpu_us_per_mutation']:.0f} µs/mutation "
              f"(busy {r['loop_busy']:.0%})  total ok={r['total_ok']}")
    print(f"alpha 1.5 / alpha 0 = {result['contention_ratio']:.2f}")
