"""The scheduler: a burst of due jobs against direct mutations, and lateness beside transfers.

    python -m bench.scheduler_bench [--jobs 10000] [--rounds 3] [--rate 1000] [--seconds 10] [--quick]

(`tape bench --only scheduler` runs both parts.)

**Burst.** 
Each round, on a fresh FileLog + RocksDB projection (in-process, no network):

* **scheduled**: one mutation (`jobs:schedule_at`, the tests/apps/jobs app) schedules N `jobs:record`
  mutations all due at the same instant, 5 s ahead; reported: the time from that instant to the last
  job's completion (its success committed and applied), and N / that time as the job throughput.
* **direct**: the same N `jobs:record` mutations submitted at once straight to the runtime; reported: their
  throughput (N / time to the last answer).

The ratio scheduled / direct is the issue's "goal >= 0.8x". One mutation may write at most
`Limits.max_writes` documents (8,192 by default), so the benchmark raises that bound to schedule 10,000 jobs
in one transaction.

**Lateness.** In-process, on the bank example app: 64 closed-loop callers run
`accounts:transfer` (uniform accounts) while a feeder schedules `statements:record` jobs at a steady
`--rate` per second (every 100 ms, one `statements:schedule` mutation schedules the next 100 ms of jobs,
spaced evenly, 300 ms ahead), with the collector settings a served node uses. A job's lateness is the time from its `scheduledTime` to the moment its
record (the job's writes and its state "success") is durable and applied, seen by a projection listener.
Reported: lateness p50/p99/max over the jobs due in the measured window (goal p99 <= 50 ms), and the
transfer throughput with and without the jobs beside it.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import random
import statistics
import tempfile
import time
from pathlib import Path

from typing import Any

from bench.common import latency_summary, transfer_loop
from engine.app import App
from engine.db import SCHEDULED_FUNCTIONS
from engine.limits import DEFAULT_LIMITS
from engine.runtime import Runtime
from gateway.node import GC_GEN0_THRESHOLD
from log.file_log import FileLog
from projections.store import Projection
from values import decode_doc

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "apps" / "jobs"
BANK = ROOT / "examples" / "bank"
LEAD_SECONDS = 5.0
FEED_EVERY = 0.1  # seconds between the feeder's scheduling mutations
FEED_AHEAD_MS = 300.0  # how far ahead of its due time each job is scheduled
CALLERS = 64


async def _runtime(directory: Path, jobs: int, app_dir: Path = APP) -> Runtime:
    app = App.load(app_dir)
    log = FileLog(directory / "log")
    await log.open()
    projection = Projection(directory / "projection", app.schema.index_catalog())
    limits = dataclasses.replace(DEFAULT_LIMITS, max_writes=max(DEFAULT_LIMITS.max_writes, jobs + 16),
                                 max_seconds=30.0)
    runtime = Runtime(app, log, projection, limits)
    await runtime.start()
    return runtime


async def _close(runtime: Runtime) -> None:
    await runtime.stop()
    runtime.projection.close()  # type: ignore[attr-defined]
    await runtime.log.close()  # type: ignore[attr-defined]


async def scheduled_round(jobs: int) -> tuple[float, float]:
    """(seconds from the due instant to the last completion, seconds the scheduling mutation took)."""
    with tempfile.TemporaryDirectory() as tmp:
        runtime = await _runtime(Path(tmp), jobs)
        try:
            due = time.time() + LEAD_SECONDS
            started = time.perf_counter()
            await runtime.run_mutation("jobs:schedule_at", {"count": jobs, "at_ms": due * 1000.0})
            scheduling = time.perf_counter() - started
            assert time.time() < due, "scheduling took longer than the lead time: raise LEAD_SECONDS"
            while runtime.scheduler.completed < jobs:
                await asyncio.sleep(0.002)
            return time.time() - due, scheduling
        finally:
            await _close(runtime)


async def direct_round(jobs: int) -> float:
    """Seconds for `jobs` direct `jobs:record` mutations submitted at once."""
    with tempfile.TemporaryDirectory() as tmp:
        runtime = await _runtime(Path(tmp), jobs)
        try:
            started = time.perf_counter()
            await asyncio.gather(*(runtime.run_mutation("jobs:record", {"tag": f"b{i}"}, allow_internal=True)
                                   for i in range(jobs)))
            return time.perf_counter() - started
        finally:
            await _close(runtime)


async def burst(jobs: int, rounds: int) -> dict[str, Any]:
    """Alternating scheduled and direct rounds (so both see the same machine load); medians."""
    scheduled, direct, scheduling = [], [], []
    for _ in range(rounds):
        elapsed, took = await scheduled_round(jobs)
        scheduled.append(elapsed)
        scheduling.append(took)
        direct.append(await direct_round(jobs))
    s, d = statistics.median(scheduled), statistics.median(direct)
    return {"jobs": jobs, "rounds": rounds, "scheduling_mutation_ms": statistics.median(scheduling) * 1000,
            "due_to_last_ms": s * 1000, "jobs_per_s": jobs / s, "direct_ms": d * 1000, "direct_per_s": jobs / d,
            "ratio": d / s, "goal_ratio": 0.8}


async def _feed(runtime: Runtime, owners: list[str], rate: float, stop_at: float) -> None:
    """Schedule `rate` jobs per second, evenly spaced, FEED_AHEAD_MS ahead, until `stop_at` (perf_counter)."""
    per_tick = max(1, round(rate * FEED_EVERY))
    every_ms = FEED_EVERY * 1000.0 / per_tick
    first_due = time.time() * 1000.0 + FEED_AHEAD_MS
    tick, i = 0, 0
    while time.perf_counter() < stop_at:
        batch = [owners[(i + k) % len(owners)] for k in range(per_tick)]
        i += per_tick
        await runtime.run_mutation("statements:schedule", {"owners": batch, "every_ms": every_ms,
                                                           "at_ms": first_due + tick * FEED_EVERY * 1000.0})
        tick += 1
        # Keep the feeder on its own clock: the next mutation goes out when its slot's jobs are due soon.
        wait = (first_due + tick * FEED_EVERY * 1000.0 - FEED_AHEAD_MS) / 1000.0 - time.time()
        if wait > 0:
            await asyncio.sleep(wait)


async def lateness_round(accounts: int, seconds: float, rate: float, with_jobs: bool) -> dict[str, Any]:
    """Transfers for `seconds` (after a 1 s warm-up), with or without `rate` jobs/s beside them."""
    with tempfile.TemporaryDirectory() as tmp:
        runtime = await _runtime(Path(tmp), 0, BANK)
        try:
            owners = [f"acct{i}" for i in range(accounts)]
            for i in range(0, accounts, 2000):
                await runtime.run_mutation("accounts:seed", {"owners": owners[i:i + 2000], "balance": 1e9})
            late: list[tuple[float, float]] = []  # (scheduledTime ms, applied - scheduledTime ms)

            def applied(records: list[Any]) -> None:
                now = time.time() * 1000.0
                for record in records:
                    for write in record.writes:
                        if write.table == SCHEDULED_FUNCTIONS and write.doc is not None and write.prev is not None:
                            doc = decode_doc(write.doc)
                            if doc["state"]["kind"] == "success":
                                late.append((doc["scheduledTime"], now - doc["scheduledTime"]))

            runtime.add_listener(applied)
            # The collector settings a served node applies once its long-lived state is built (gateway.node).
            thresholds = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
            rng = random.Random(7)
            warm_until = time.time() + 1.0
            stop_at = time.perf_counter() + 1.0 + seconds
            latencies: list[float] = []
            callers = [transfer_loop(runtime, owners, lambda: rng.randrange(accounts), stop_at, latencies)
                       for _ in range(CALLERS)]
            feeder = [_feed(runtime, owners, rate, stop_at)] if with_jobs else []
            try:
                await asyncio.gather(*callers, *feeder)
            finally:
                gc.unfreeze()
                gc.set_threshold(*thresholds)
            end = time.time()
            if with_jobs:  # the jobs due before the end finish within moments of it
                deadline = time.time() + 10.0
                while time.time() < deadline and not any(t >= end * 1000.0 for t, _ in late):
                    await asyncio.sleep(0.05)
            window = sorted(ms for t, ms in late if warm_until * 1000.0 <= t <= end * 1000.0)
            out: dict[str, Any] = {"transfers_per_s": len(latencies) / (1.0 + seconds)}
            if with_jobs:
                due = [t for t, _ in late if warm_until * 1000.0 <= t <= end * 1000.0]
                out.update({"jobs": len(window), "jobs_per_s": len(due) / max(end - warm_until, 1e-9),
                            **latency_summary([ms / 1000.0 for ms in window], "lateness_")})
            return out
        finally:
            await _close(runtime)


async def lateness(accounts: int, seconds: float, rate: float) -> dict[str, Any]:
    """Transfers alone, then with jobs at `rate`/s beside them."""
    alone = await lateness_round(accounts, seconds, rate, with_jobs=False)
    both = await lateness_round(accounts, seconds, rate, with_jobs=True)
    return {"rate": rate, "seconds": seconds, "callers": CALLERS, **both,
            "transfers_alone_per_s": alone["transfers_per_s"],
            "transfer_ratio": both["transfers_per_s"] / alone["transfers_per_s"], "goal_p99_ms": 50.0}


def run(quick: bool = False) -> dict[str, Any]:
    """Both parts, as `tape bench --only scheduler` runs them."""
    jobs, rounds = (2_000, 1) if quick else (10_000, 3)
    accounts, seconds = (10_000, 3.0) if quick else (100_000, 10.0)
    return {"burst": asyncio.run(burst(jobs, rounds)), "lateness": asyncio.run(lateness(accounts, seconds, 1000.0))}


def report(result: dict[str, Any]) -> str:
    """The console summary of `run`'s result."""
    b, late = result["burst"], result["lateness"]
    return "\n".join([
        f"{b['jobs']} jobs due at one instant (median of {b['rounds']}):",
        f"  scheduling mutation:           {b['scheduling_mutation_ms']:8.0f} ms",
        f"  due instant -> last complete:  {b['due_to_last_ms']:8.0f} ms  ({b['jobs_per_s']:8.0f} jobs/s)",
        f"  direct mutations:              {b['direct_ms']:8.0f} ms  ({b['direct_per_s']:8.0f} mutations/s)",
        f"  scheduled / direct throughput: {b['ratio']:.2f}x (goal >= 0.8x)",
        f"{late['rate']:.0f} jobs/s beside {late['callers']} transfer callers for {late['seconds']:.0f} s:",
        f"  jobs run: {late['jobs']} ({late['jobs_per_s']:.0f}/s); lateness p50 {late['lateness_p50_ms']:.1f} ms, "
        f"p99 {late['lateness_p99_ms']:.1f} ms, max {late['lateness_max_ms']:.1f} ms (goal p99 <= 50 ms)",
        f"  transfers: {late['transfers_per_s']:.0f}/s with the jobs, {late['transfers_alone_per_s']:.0f}/s alone "
        f"({late['transfer_ratio']:.2f}x)",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0, help="jobs per second in the lateness part")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds of the lateness part")
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="what the smoke test and `tape bench --quick` run")
    args = parser.parse_args()
    if args.quick:
        print(report(run(quick=True)))
        return
    print(report({"burst": asyncio.run(burst(args.jobs, args.rounds)),
                  "lateness": asyncio.run(lateness(args.accounts, args.seconds, args.rate))}))


if __name__ == "__main__":
    main()
