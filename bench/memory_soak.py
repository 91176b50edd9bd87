"""Memory under steady load: the transfer workload for 10 minutes, server RSS sampled every second.

    python -m bench.memory_soak [--seconds 600] [--quick]

A Tape server on the bank example app (FileLog + RocksDB, the defaults) takes transfers from 64
WebSocket clients (the official sync protocol) for the whole run. Each mutation over the sync protocol also
writes its `_requests` memo (the exactly-once answer, kept 24 h), so every mutation adds a new document:
the caches of committed documents and scans fill to their budgets and must stay there. Reported: the server's RSS at the start of the measured run (after a warm-up),
in the middle and at the end, the end / middle ratio (goal <= 1.2: memory levels off instead of growing
with the number of mutations), the mutations committed, and the growth per mutation between the middle
and the end.
"""
from __future__ import annotations

import argparse
import asyncio
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import Harness, Zipf, harness_for
from bench.transfer import CLIENTS, drive_ws

GOAL_RATIO = 1.2


def rss_mb(pid: int) -> float:
    """Resident set size of process `pid` in MiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for process {pid}")


async def _sample(pid: int, seconds: float, every: float, out: list[tuple[float, float]]) -> None:
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        out.append((elapsed, rss_mb(pid)))
        if elapsed >= seconds:
            return
        await asyncio.sleep(every)


def _at(samples: list[tuple[float, float]], t: float) -> float:
    """The RSS sampled closest to `t` seconds."""
    return min(samples, key=lambda s: abs(s[0] - t))[1]


def run(quick: bool = False, harness: Harness | None = None, *, seconds: float | None = None,
        warmup: float | None = None, accounts: int = 10_000) -> dict[str, Any]:
    """The soak; returns RSS at start, middle and end and the ratio end / middle."""
    seconds = (30.0 if quick else 600.0) if seconds is None else seconds
    warmup = (5.0 if quick else 30.0) if warmup is None else warmup
    with harness_for(quick, harness) as h:
        tape = h.tape(accounts)
        pairs = Zipf(tape.accounts, 0.0, seed=11).pairs(200_000)
        h.reporter.phase(f"memory: {seconds:.0f} s of transfers, server RSS sampled every second",
                         seconds + warmup)
        samples: list[tuple[float, float]] = []
        committed_before = _committed(tape.url)

        async def both() -> dict[str, Any]:
            drive = drive_ws(tape.port, pairs, CLIENTS, seconds, warmup)
            result, _ = await asyncio.gather(drive, _sample(tape.server.pid, seconds + warmup, 1.0, samples))
            return result

        traffic = asyncio.run(both())
        committed = _committed(tape.url) - committed_before
    measured = [(t - warmup, mb) for t, mb in samples if t >= warmup]
    start, middle, end = _at(measured, 0.0), _at(measured, seconds / 2), measured[-1][1]
    return {"seconds": seconds, "warmup_s": warmup, "clients": CLIENTS, "tps": traffic["tps"],
            "errors": traffic["errors"], "mutations": committed, "rss_start_mb": start, "rss_middle_mb": middle,
            "rss_end_mb": end, "end_over_middle": end / middle, "goal_ratio": GOAL_RATIO,
            "growth_bytes_per_mutation_second_half": (end - middle) * 1024 * 1024 / max(committed / 2, 1),
            "samples": [[round(t, 1), round(mb, 1)] for t, mb in measured]}


def _committed(url: str) -> int:
    """The server's applied log offset, from `/version` ("tape VERSION ROLE offset=N")."""
    with urllib.request.urlopen(url + "/version", timeout=5) as r:
        text = r.read().decode()
    return int(text.rsplit("offset=", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds (default 600; quick 30)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    r = run(args.quick, seconds=args.seconds)
    print(f"{r['seconds']:.0f} s of transfers at {r['tps']:,.0f}/s ({r['mutations']:,} mutations): server RSS "
          f"start {r['rss_start_mb']:.0f} MiB, middle {r['rss_middle_mb']:.0f} MiB, end {r['rss_end_mb']:.0f} MiB "
          f"-> end/middle {r['end_over_middle']:.2f} (goal <= {GOAL_RATIO})")


if __name__ == "__main__":
    main()
