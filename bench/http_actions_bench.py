"""HTTP actions against their peers on the same server: what running a handler on an action worker costs.

    python -m bench.http_actions_bench [--requests 2000] [--concurrency 32] [--rounds 3] [--quick]

A `tape serve` child process serves tests/apps/http (API port and site port); this process drives it with
aiohttp over loopback, `--concurrency` requests in flight, and reports the median requests/s of the rounds:

* **webhook**: ``POST /stripe/webhook`` on the site (JSON body → ``ctx.run_mutation`` → durable commit)
  against its peer ``POST /api/mutation events:add`` on the API port (the same write, no HTTP action);
* **trivial**: ``GET /echo/exact`` on the site (a handler returning a constant) against ``GET /version``
  on the API port (a plain aiohttp handler: no function, no worker) and against ``POST /api/action
  events:ping`` (an action returning a constant: the same worker hop).

The ratios (HTTP action / peer) are what the action worker hop and the request/response translation cost.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp

from bench.common import ChildServer, free_port

APP = Path(__file__).resolve().parents[1] / "tests" / "apps" / "http"


async def _drive(make: Callable[[aiohttp.ClientSession, int], Any], requests: int, concurrency: int) -> float:
    """Requests/s of `requests` calls of `make(session, i)` with `concurrency` in flight; each must answer 200."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        counter = iter(range(requests))

        async def worker() -> None:
            for i in counter:
                async with make(session, i) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{response.url} answered {response.status}")
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - started)


def run(requests: int = 2000, concurrency: int = 32, rounds: int = 3) -> dict[str, Any]:
    """Start the server, run every pair `rounds` times (interleaved), return medians and ratios."""
    api_port, site_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = ChildServer("tape", [sys.executable, "-m", "ops.cli", "serve", str(APP), "--data", f"{tmp}/data",
                                      "--port", str(api_port), "--site-port", str(site_port)],
                             api_port, Path(tmp) / "server.log").start()
        api, site = server.url, f"http://127.0.0.1:{site_port}"
        cases: dict[str, Callable[[aiohttp.ClientSession, int], Any]] = {
            "webhook": lambda s, i: s.post(site + "/stripe/webhook", json={"type": "charge", "amount": i}),
            "webhook_peer": lambda s, i: s.post(api + "/api/mutation", json={
                "path": "events:add", "args": {"kind": "charge", "amount": i}}),
            "trivial": lambda s, i: s.get(site + "/echo/exact"),
            "trivial_peer": lambda s, i: s.get(api + "/version"),
            "action_peer": lambda s, i: s.post(api + "/api/action", json={"path": "events:ping", "args": {}}),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        try:
            asyncio.run(_drive(cases["trivial"], 200, concurrency))  # warm up
            for _ in range(rounds):
                for name, make in cases.items():
                    samples[name].append(asyncio.run(_drive(make, requests, concurrency)))
        finally:
            server.stop()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {"requests": requests, "concurrency": concurrency, "rounds": rounds,
            "per_second": {name: round(value) for name, value in medians.items()},
            "webhook_ratio": round(medians["webhook"] / medians["webhook_peer"], 2),
            "trivial_ratio": round(medians["trivial"] / medians["trivial_peer"], 2),
            "action_ratio": round(medians["trivial"] / medians["action_peer"], 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200 requests, 1 round (a smoke run)")
    args = parser.parse_args(argv)
    result = run(200, args.concurrency, 1) if args.quick else run(args.requests, args.concurrency, args.rounds)
    for name, value in result["per_second"].items():
        print(f"{name:<14} {value:>8} requests/s (median of {result['rounds']})")
    print(f"webhook / peer mutation: {result['webhook_ratio']}x;  trivial HTTP action / bare aiohttp: "
          f"{result['trivial_ratio']}x;  trivial HTTP action / trivial /api/action: {result['action_ratio']}x")


if __name__ == "__main__":
    main()
