"""Workload 1: the keynote transfer benchmark against Tape, over HTTP and over the sync protocol.

Accounts ``u0 … u{N-1}`` are seeded with 1,000,000,000 each through
``accounts:seed`` (N = 100,000; quick: 10,000). 64 clients each run one
``accounts:transfer`` at a time, source and destination drawn Zipf(α) over
the accounts (α = 0 is uniform; at α = 1.5 the hottest account is in about
two transfers out of three), amount 1–100, for a fixed time per
configuration after a short warm-up that is not counted.

Transports:

* ``http``: ``POST /api/mutation`` with an aiohttp client, one keep-alive
  connection per client (64 connections).
* ``ws``: the raw sync-protocol driver of `bench.wsdriver`, **one socket
  per client** (64 sockets, one mutation in flight on each), done when the
  MutationResponse and the Transition covering it have arrived.

TPS counts transfers completed inside the measured window; latencies are
client-side send → done. At the end ``accounts:total`` must still equal
N × 1,000,000,000.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Sequence

import orjson

from bench.common import (HOST, INITIAL_BALANCE, BenchError, CpuMeter, Harness, Zipf, accounts_for, harness_for,
                              histogram_ms, latency_summary, owner, total_and_method)
from bench.wsdriver import MutationFailed, SyncClient, open_many

CLIENTS = 64
ALPHAS = (0.0, 1.5)
TRANSPORTS = ("http", "ws")
clock = time.perf_counter


def durations(quick: bool) -> tuple[float, float]:
    """(measured seconds, warm-up seconds) per configuration."""
    return (4.0, 0.5) if quick else (20.0, 2.0)


def transfer_args(pairs: Sequence[tuple[int, int]], i: int) -> dict[str, Any]:
    src, dst = pairs[i % len(pairs)]
    return {"src": owner(src), "dst": owner(dst), "amount": float(1 + i % 100)}


class Window:
    """Collects completions that fall in the measured window [begin, end]."""

    def __init__(self, warmup: float, duration: float) -> None:
        self.begin = clock() + warmup
        self.end = self.begin + duration
        self.latencies: list[float] = []
        self.failed = 0     # refused by the function (AppError), e.g. an overdraft
        self.errors = 0     # transport or server errors
        self.first_error = ""
        self.started = clock()  # every completion, warm-up and drain included, for overall rates
        self.completed = 0
        self.last_done = self.started

    def done(self, t0: float, t1: float) -> None:
        self.completed += 1
        if t1 > self.last_done:
            self.last_done = t1
        if self.begin <= t0 and t1 <= self.end:
            self.latencies.append(t1 - t0)

    def error(self, exc: BaseException | str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = str(exc)[:300]

    def result(self, **extra: Any) -> dict[str, Any]:
        duration = self.end - self.begin
        out: dict[str, Any] = dict(extra)
        out.update({"duration_s": round(duration, 3), "transfers": len(self.latencies),
                    "tps": len(self.latencies) / duration, "failed": self.failed, "errors": self.errors,
                    "completed_total": self.completed,
                    "overall_tps": self.completed / max(1e-9, self.last_done - self.started)})
        out.update(latency_summary(self.latencies))
        if self.first_error:
            out["first_error"] = self.first_error
        out["latency_ms_sorted"] = histogram_ms(self.latencies, 2000)
        return out


async def drive_http(url: str, pairs: Sequence[tuple[int, int]], clients: int, duration: float,
                     warmup: float, path: str = "accounts:transfer",
                     tokens: Sequence[str] | None = None) -> dict[str, Any]:
    """`clients` aiohttp clients (one keep-alive connection each) posting transfers back to back.

    With `tokens`, client k sends ``Authorization: Bearer tokens[k]``.
    """
    import aiohttp
    endpoint = f"{url}/api/mutation"
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=30))
                for _ in range(clients)]
    window = Window(warmup, duration)

    async def client(k: int, session: Any) -> None:
        headers = {"Content-Type": "application/json"}
        if tokens is not None:
            headers["Authorization"] = f"Bearer {tokens[k]}"
        i = k
        while True:
            t0 = clock()
            if t0 >= window.end:
                return
            body = orjson.dumps({"path": path, "args": transfer_args(pairs, i), "format": "json"})
            i += clients
            try:
                async with session.post(endpoint, data=body, headers=headers) as r:
                    data = await r.read()
                    status = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                window.error(exc)
                await asyncio.sleep(0.01)
                continue
            t1 = clock()
            if status == 200:
                window.done(t0, t1)
            elif status == 560:
                window.failed += 1
            else:
                window.error(f"HTTP {status}: {data[:200]!r}")
    try:
        await asyncio.gather(*(client(k, s) for k, s in enumerate(sessions)))
    finally:
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
    return window.result(transport="http", clients=clients, connections=clients)


async def drive_ws(port: int, pairs: Sequence[tuple[int, int]], clients: int, duration: float,
                   warmup: float, path: str = "accounts:transfer",
                   prepare: Callable[[list[SyncClient]], Awaitable[Any]] | None = None) -> dict[str, Any]:
    """`clients` sync-protocol sockets, one transfer in flight on each.

    `prepare(conns)`, when given, runs on the open sockets before the clock starts (e.g. authenticating them).
    """
    conns: list[SyncClient] = await open_many(clients, HOST, port)
    try:
        if prepare is not None:
            await prepare(conns)
        window = Window(warmup, duration)

        async def client(k: int, conn: SyncClient) -> None:
            i = k
            while True:
                t0 = clock()
                if t0 >= window.end:
                    return
                args = transfer_args(pairs, i)
                i += clients
                try:
                    await asyncio.wait_for(conn.send_mutation(path, args), 30)
                except MutationFailed:
                    window.failed += 1
                    continue
                except (asyncio.TimeoutError, RuntimeError, ConnectionError) as exc:
                    window.error(exc)
                    return
                window.done(t0, clock())
        await asyncio.gather(*(client(k, c) for k, c in enumerate(conns)))
    finally:
        for c in conns:
            c.close()
    return window.result(transport="ws", clients=clients, connections=clients)


def run(quick: bool = False, harness: Harness | None = None, *, accounts: int | None = None,
        duration: float | None = None, warmup: float | None = None, clients: int = CLIENTS,
        alphas: Sequence[float] = ALPHAS, transports: Sequence[str] = TRANSPORTS) -> dict[str, Any]:
    """Run every (α, transport) configuration against one seeded Tape server; returns the figures."""
    full_duration, full_warmup = durations(quick)
    duration = full_duration if duration is None else duration
    warmup = full_warmup if warmup is None else warmup
    with harness_for(quick, harness) as h:
        n = accounts or accounts_for(quick)
        tape = h.tape(n)
        expected = float(tape.accounts * INITIAL_BALANCE)
        configs: list[dict[str, Any]] = []
        for alpha in alphas:
            zipf = Zipf(tape.accounts, alpha, seed=7)
            pairs = zipf.pairs(50_000 if quick else 200_000)
            for transport in transports:
                h.reporter.phase(f"transfer: Tape over {transport}, α={alpha:g}, {clients} clients", duration + warmup)
                meter = CpuMeter(tape.server.pid).start()
                with h.profile(f"transfer-{transport}-a{alpha:g}", tape.server.pid):
                    if transport == "http":
                        res = asyncio.run(drive_http(tape.url, pairs, clients, duration, warmup))
                    elif transport == "ws":
                        res = asyncio.run(drive_ws(tape.port, pairs, clients, duration, warmup))
                    else:
                        raise BenchError(f"unknown transport {transport!r}")
                res.update(meter.stop())
                res.update(alpha=alpha, hottest_account_share=round(zipf.top_share(), 4))
                configs.append(res)
        h.reporter.phase("transfer: checking accounts:total")
        total, method = asyncio.run(total_and_method(tape.url, tape.accounts))
    return {
        "system": "tape",
        "accounts": tape.accounts,
        "initial_balance": INITIAL_BALANCE,
        "clients": clients,
        "warmup_s": warmup,
        "configs": configs,
        "total_expected": expected,
        "total_after": total,
        "total_unchanged": total == expected,
        "total_method": method,
        "seed_s": round(tape.extra.get("seed_s", 0.0), 3),
    }


if __name__ == "__main__":  # pragma: no cover
    import sys
    print(orjson.dumps({k: v for k, v in run(quick="--quick" in sys.argv).items()},
                       option=orjson.OPT_INDENT_2).decode())
