"""Scheduled mutations against direct ones: 10,000 jobs due at one instant, scheduled by one mutation.

    python -m bench.scheduler_bench [--jobs 10000] [--rounds 3]

Each round, on a fresh FileLog + RocksDB projection (in-process, no network):

* **scheduled**: one mutation (`jobs:schedule_at`, the tests/apps/jobs app) schedules N `jobs:record`
  mutations all due at the same instant, 5 s ahead; reported: the time from that instant to the last
  job's completion (its success committed and applied), and N / that time as the job throughput.
* **direct**: the same N `jobs:record` mutations submitted at once straight to the runtime; reported: their
  throughput (N / time to the last answer).

The ratio scheduled / direct is the issue's "goal >= 0.8x". One mutation may write at most
`Limits.max_writes` documents (8,192 by default), so the benchmark raises that bound to schedule 10,000 jobs
in one transaction.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from engine.app import App
from engine.limits import DEFAULT_LIMITS
from engine.runtime import Runtime
from log.file_log import FileLog
from projections.store import Projection

APP = Path(__file__).resolve().parents[1] / "tests" / "apps" / "jobs"
LEAD_SECONDS = 5.0


async def _runtime(directory: Path, jobs: int) -> Runtime:
    app = App.load(APP)
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


async def main_async(jobs: int, rounds: int) -> None:
    scheduled, direct, scheduling = [], [], []
    for _ in range(rounds):  # alternate, so both see the same machine load
        elapsed, took = await scheduled_round(jobs)
        scheduled.append(elapsed)
        scheduling.append(took)
        direct.append(await direct_round(jobs))
    s, d = statistics.median(scheduled), statistics.median(direct)
    print(f"{jobs} jobs due at one instant (median of {rounds}):")
    print(f"  scheduling mutation:          {statistics.median(scheduling) * 1000:8.0f} ms")
    print(f"  due instant -> last complete: {s * 1000:8.0f} ms  ({jobs / s:8.0f} jobs/s)")
    print(f"  direct mutations:             {d * 1000:8.0f} ms  ({jobs / d:8.0f} mutations/s)")
    print(f"  scheduled / direct throughput: {d / s:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main_async(args.jobs, args.rounds))


if __name__ == "__main__":
    main()
