"""Benchmark of the embedded commit log (FileLog).

Measures, in one run and on one filesystem:

* ``fsync_per_s``: raw durable small writes (100 bytes + fdatasync) per second;
* ``append_*``: FileLog durable appends by 64 concurrent appenders, each
  appending single ~100-byte records in a loop (records/s, p50/p99 latency,
  and records/s divided by the raw fsync rate: the group-commit gain);
* ``read_per_s``: records/s reading the whole log back (decode included);
* ``open_s``: seconds to reopen (scan and verify) the log just written.

Run ``python -m bench.log_bench [--quick]``.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from log.file_log import FileLog
from log.record import Record, Write

APPENDERS = 64
TARGET_RECORDS_PER_S = 20_000


def fsync_rate(directory: Path, seconds: float) -> float:
    """Raw rate of 100-byte write + fdatasync pairs in `directory`."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    data = b"x" * 100
    count = 0
    try:
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            os.write(fd, data)
            os.fdatasync(fd)
            count += 1
            if count % 16 == 0 and time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()
    return count / elapsed


def _record(i: int) -> Record:
    doc = b'{"author":"bench","body":"' + b"m" * 60 + b'","n":' + str(i).encode() + b"}"
    return Record([Write("messages", f"m{i:012d}", doc[:100])], session_id="bench", function="messages:send")


async def append_throughput(directory: Path, seconds: float) -> dict[str, float]:
    """64 concurrent appenders, one record per append, for `seconds`."""
    log = FileLog(directory)
    await log.open()
    latencies: list[float] = []
    syncs = 0
    real_fsync = log._fsync

    def counting_fsync(fd: int) -> None:
        nonlocal syncs
        syncs += 1
        real_fsync(fd)

    log._fsync = counting_fsync  # type: ignore[method-assign]
    stop_at = time.perf_counter() + seconds

    async def appender(k: int) -> None:
        i = k
        clock = time.perf_counter
        while clock() < stop_at:
            t0 = clock()
            await log.append([_record(i)])
            latencies.append(clock() - t0)
            i += APPENDERS

    start = time.perf_counter()
    await asyncio.gather(*(appender(k) for k in range(APPENDERS)))
    elapsed = time.perf_counter() - start
    await log.close()
    latencies.sort()
    n = len(latencies)
    return {
        "append_records": n,
        "append_per_s": n / elapsed,
        "append_p50_ms": latencies[n // 2] * 1e3,
        "append_p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3,
        "append_fsyncs": syncs,
        "append_records_per_fsync": n / max(1, syncs),
    }


async def read_back(directory: Path) -> dict[str, float]:
    """Reopen the log (timed), then read and decode all of it (timed)."""
    t0 = time.perf_counter()
    log = FileLog(directory)
    await log.open()
    open_s = time.perf_counter() - t0
    count = 0
    t0 = time.perf_counter()
    async for batch in log.read(0):
        count += len(batch)
    elapsed = time.perf_counter() - t0
    await log.close()
    return {"open_s": open_s, "read_records": count, "read_per_s": count / elapsed}


def run(quick: bool = False, directory: str | None = None) -> dict[str, float]:
    """Run the whole benchmark; returns its numbers (see the module docstring)."""
    seconds = 1.0 if quick else 5.0
    base = Path(tempfile.mkdtemp(prefix="tape-log-bench-", dir=directory))
    try:
        results: dict[str, float] = {"fsync_per_s": fsync_rate(base, 0.5 if quick else 2.0)}
        data = base / "log"
        results.update(asyncio.run(append_throughput(data, seconds)))
        results["append_vs_fsync"] = results["append_per_s"] / results["fsync_per_s"]
        results.update(asyncio.run(read_back(data)))
        results["target_append_per_s"] = TARGET_RECORDS_PER_S
        return results
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str]) -> None:
    """Print the results of `run` as a small table."""
    results = run(quick="--quick" in argv)
    width = max(len(k) for k in results)
    for key, value in results.items():
        text = f"{value:,.0f}" if isinstance(value, int) or value >= 100 else f"{value:.3f}"
        print(f"{key:<{width}}  {text}")


if __name__ == "__main__":
    main(sys.argv[1:])
