"""Benchmark: FileLog open time against history length (issue 22, item 1).

Builds synthetic logs of small records through the real FileLog append path
(codec, framing, segments, seals; appended in big batches to build fast) and
times `FileLog.open` (as the writer, as a server start does; page cache warm),
the median of `repeats` opens per log. With `scan=True` it also times an open
with the seals moved aside (a follower open, so nothing is rewritten): what
every open cost before seals.

Run ``python -m bench.log_open [--records 100000,10000000] [--dir DIR] [--keep]``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from log.file_log import FileLog
from log.record import Record, Write
from log.seal import SEAL_SUFFIX, read_seal
from log.segment import list_segments

BATCH = 20_000


def _records(start: int, n: int) -> list[Record]:
    """`n` small records (one ~60-byte document each) numbered from `start`."""
    body = b'{"author":"bench","body":"' + b"m" * 24 + b'","n":'
    return [Record([Write("messages", f"m{i:012d}", body + str(i).encode() + b"}")], function="messages:send")
            for i in range(start, start + n)]


async def build(directory: Path, n: int, batch: int = BATCH) -> float:
    """Append `n` records to a new FileLog in `directory`; seconds taken."""
    started = time.perf_counter()
    log = FileLog(directory)
    await log.open()
    done = log.next_offset()
    while done < n:
        k = min(batch, n - done)
        await log.append(_records(done, k))
        done += k
    await log.close()
    return time.perf_counter() - started


async def time_open(directory: Path, read_only: bool = False) -> float:
    """Seconds for one `FileLog.open` of `directory` (closed right after, untimed)."""
    log = FileLog(directory, read_only=read_only)
    started = time.perf_counter()
    await log.open()
    took = time.perf_counter() - started
    await log.close()
    return took


def describe(directory: Path) -> dict[str, Any]:
    """Segments, sealed segments, bytes, and how many bytes of the last segment its seal leaves to scan."""
    segs = list_segments(directory)
    size = sum(p.stat().st_size for _, p in segs)
    tail = segs[-1][1] if segs else None
    covered = 0
    if tail is not None:
        seal, _ = read_seal(tail)
        covered = seal.size if seal is not None else 0
    return {
        "segments": len(segs),
        "sealed_segments": sum(1 for _, p in segs[:-1] if read_seal(p)[0] is not None),
        "bytes": size,
        "tail_bytes": tail.stat().st_size if tail is not None else 0,
        "tail_unsealed_bytes": (tail.stat().st_size - covered) if tail is not None else 0,
    }


async def measure(directory: Path, n: int, repeats: int = 3, scan: bool = False) -> dict[str, Any]:
    """Build (or reuse) an `n`-record log in `directory` and time its opens."""
    existing = FileLog(directory, read_only=True)
    await existing.open()
    have = existing.next_offset()
    await existing.close()
    build_s = await build(directory, n) if have < n else 0.0
    out: dict[str, Any] = {"records": n, "build_s": round(build_s, 2), **describe(directory)}
    opens = [await time_open(directory) for _ in range(repeats)]
    out["open_s"] = [round(t, 4) for t in opens]
    out["open_median_s"] = round(statistics.median(opens), 4)
    if scan:
        aside = directory / "seals-aside"
        aside.mkdir(exist_ok=True)
        seals = list(directory.glob("*" + SEAL_SUFFIX))
        for p in seals:
            p.rename(aside / p.name)
        try:
            out["open_without_seals_s"] = round(await time_open(directory, read_only=True), 4)
        finally:
            for p in seals:
                (aside / p.name).rename(p)
            aside.rmdir()
    return out


async def run_async(sizes: list[int], root: Path, repeats: int, scan: bool, keep: bool,
                    verbose: bool = True) -> dict[str, Any]:
    """Measure every size; the result includes the 10M-vs-smallest ratio the issue asks for."""
    results = []
    for n in sizes:
        directory = root / f"log-{n}"
        try:
            results.append(await measure(directory, n, repeats, scan))
        finally:
            if not keep:
                shutil.rmtree(directory, ignore_errors=True)
        if verbose:
            print(json.dumps(results[-1]), flush=True)
    small, large = results[0], results[-1]
    return {
        "sizes": results,
        "ratio_largest_vs_smallest": round(large["open_median_s"] / small["open_median_s"], 2)
        if small["open_median_s"] else None,
        "goal": "largest open <= 1 s and within 2x of the smallest",
        "met": large["open_median_s"] <= 1.0 and large["open_median_s"] <= 2 * small["open_median_s"],
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point for `tape bench` (workload "log"): 100k vs 10M records (quick: 20k vs 1M)."""
    sizes = [20_000, 1_000_000] if quick else [100_000, 10_000_000]
    with tempfile.TemporaryDirectory(prefix="tape-log-open-") as tmp:
        return asyncio.run(run_async(sizes, Path(tmp), 3, False, False, verbose=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", default="100000,10000000", help="comma-separated log sizes, smallest first")
    parser.add_argument("--dir", help="where to build the logs (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the logs (reused by a later run with --dir)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scan", action="store_true", help="also time an open with the seals moved aside")
    args = parser.parse_args()
    sizes = [int(x) for x in args.records.split(",")]
    if args.dir:
        root = Path(args.dir)
        root.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(run_async(sizes, root, args.repeats, args.scan, args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="tape-log-open-") as tmp:
            result = asyncio.run(run_async(sizes, Path(tmp), args.repeats, args.scan, args.keep))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
