"""Concurrency correctness: 64 clients hammer hot accounts; no reader may ever see money in flight.

48 WebSocket clients each subscribe to `accounts:total`, to the balances of
every account (whose sum must be the initial total) and to the balances
of a few hot accounts, then run transfers between accounts picked with a
Zipf(alpha=1.5) law (most traffic hits a handful of accounts). 16 HTTP
clients mix transfers with `accounts:balances` queries over several
accounts at once. Every value ever pushed to a subscription and every query
answer must show the initial total: a partially applied transfer, or a
query that mixes two states, would break it. After each acknowledged
mutation the client must receive a Transition reaching the mutation's ts
(read-your-writes). When the workload stops, every live subscription's last
pushed value must equal a fresh run of its query.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from gateway.protocol import decode_ts
from values import from_wire
from tests.reliability.reliability_wire import WsClient, http_call, query

ACCOUNTS = [f"hot{i:02d}" for i in range(32)]
INITIAL = 1000.0
TOTAL = INITIAL * len(ACCOUNTS)
ALPHA = 1.5
N_WS = 48
N_HTTP = 16
SECONDS = 6.0
WEIGHTS = [1.0 / (k ** ALPHA) for k in range(1, len(ACCOUNTS) + 1)]


def zipf_accounts(rng: random.Random, n: int) -> list[str]:
    """`n` distinct accounts, each drawn from Zipf(ALPHA) over the account ranks."""
    chosen: list[str] = []
    while len(chosen) < n:
        owner = rng.choices(ACCOUNTS, WEIGHTS)[0]
        if owner not in chosen:
            chosen.append(owner)
    return chosen


@dataclass
class Stats:
    transfers: int = 0
    refused: int = 0
    queries: int = 0
    pushes: int = 0
    problems: list[str] = field(default_factory=list)


def check_all_balances(value: Any, where: str, stats: Stats) -> None:
    if set(value) != set(ACCOUNTS) or any(b is None or b < 0 for b in value.values()):
        stats.problems.append(f"{where}: bad balances {value}")
    elif sum(value.values()) != TOTAL:
        stats.problems.append(f"{where}: money in flight: balances sum to {sum(value.values())}, not {TOTAL}")


async def ws_client(i: int, url: str, http: aiohttp.ClientSession, rng: random.Random, deadline: float,
                    stats: Stats) -> tuple[WsClient, dict[int, tuple[str, dict[str, Any]]]]:
    client = await WsClient(url).connect(http)
    subs = {}
    q_total = await client.subscribe("accounts:total")
    subs[q_total] = ("accounts:total", {})
    q_all = await client.subscribe("accounts:balances", {"owners": ACCOUNTS})
    subs[q_all] = ("accounts:balances", {"owners": ACCOUNTS})
    hot = {"owners": sorted(zipf_accounts(rng, 3))}
    subs[await client.subscribe("accounts:balances", hot)] = ("accounts:balances", hot)

    def on_transition(msg: dict[str, Any]) -> None:  # checked as each Transition arrives
        for mod in msg["modifications"]:
            stats.pushes += 1
            if mod["type"] != "QueryUpdated":
                stats.problems.append(f"client {i}: {mod}")
            elif mod["queryId"] == q_total and from_wire(mod["value"]) != TOTAL:
                stats.problems.append(f"client {i}: pushed total {from_wire(mod['value'])} != {TOTAL}")
            elif mod["queryId"] == q_all:
                check_all_balances(from_wire(mod["value"]), f"client {i} subscription", stats)
    client.on_transition = on_transition
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        src, dst = zipf_accounts(rng, 2)
        resp = await client.mutate("accounts:transfer", {"src": src, "dst": dst, "amount": float(rng.randint(1, 300))})
        if not resp["success"]:
            assert "INSUFFICIENT_FUNDS" in resp["result"], resp
            stats.refused += 1
            continue
        stats.transfers += 1
        ts = decode_ts(resp["ts"])
        try:  # read-your-writes: a Transition reaching the mutation's ts follows the response
            await asyncio.wait_for(_version_reaches(client, ts), 10)
        except asyncio.TimeoutError:
            stats.problems.append(f"client {i}: no Transition reached ts {ts} after its mutation")
    return client, subs


async def _version_reaches(client: WsClient, ts: int) -> None:
    while client.version["ts"] < ts:
        await asyncio.sleep(0.002)


async def http_client(i: int, url: str, http: aiohttp.ClientSession, rng: random.Random, deadline: float,
                      stats: Stats) -> None:
    loop = asyncio.get_running_loop()
    n = 0
    while loop.time() < deadline:
        r = rng.random()
        if r < 0.4:
            src, dst = zipf_accounts(rng, 2)
            n += 1
            status, body = await http_call(http, url, "mutation", "accounts:transfer",
                                           {"src": src, "dst": dst, "amount": float(rng.randint(1, 300))},
                                           key=f"http{i}:{n}")
            assert status in (200, 560), body
            if status == 200:
                stats.transfers += 1
            else:
                stats.refused += 1
        elif r < 0.7:
            value = await query(http, url, "accounts:balances", {"owners": ACCOUNTS})
            check_all_balances(value, f"http client {i} query", stats)
            stats.queries += 1
        else:
            owners = zipf_accounts(rng, rng.randint(2, 6))
            value = await query(http, url, "accounts:balances", {"owners": owners})
            if set(value) != set(owners) or any(b is None or b < 0 for b in value.values()):
                stats.problems.append(f"http client {i}: bad balances {value}")
            stats.queries += 1


async def run_bank_workload(server_factory: Any, seed: int, seconds: float) -> None:
    server = server_factory("bank")
    rng = random.Random(seed)
    stats = Stats()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        status, body = await http_call(http, server.url, "mutation", "accounts:seed",
                                       {"owners": ACCOUNTS, "balance": INITIAL})
        assert status == 200, body
        deadline = asyncio.get_running_loop().time() + seconds
        ws_jobs = [ws_client(i, server.url, http, random.Random(rng.random()), deadline, stats) for i in range(N_WS)]
        http_jobs = [http_client(i, server.url, http, random.Random(rng.random()), deadline, stats)
                     for i in range(N_HTTP)]
        results = await asyncio.gather(*ws_jobs, *http_jobs)
        clients = [r for r in results[:N_WS]]
        assert not stats.problems, stats.problems[:10]

        # Quiet now: every live subscription must converge to a fresh run of its query.
        fresh: dict[tuple[str, str], Any] = {}
        stale = []
        for client, subs in clients:
            for qid, (path, args) in subs.items():
                key = (path, repr(sorted(args.items())))
                if key not in fresh:
                    fresh[key] = await query(http, server.url, path, args)
                try:
                    await client.wait_value(qid, lambda v, want=fresh[key]: v == want, timeout=10)
                except AssertionError as exc:
                    stale.append(str(exc))
        assert not stale, stale[:5]
        assert fresh[("accounts:total", "[]")] == TOTAL
        for client, _subs in clients:
            assert not client.violations, client.violations[:5]
            assert client.fatal is None
            await client.close()
    print(f"\nbank invariant: {N_WS + N_HTTP} clients, Zipf alpha={ALPHA} over {len(ACCOUNTS)} accounts, "
          f"{stats.transfers} transfers ({stats.refused} refused), {stats.queries} multi-account queries, "
          f"{stats.pushes} pushed query updates, {3 * N_WS} subscriptions; money in flight seen: 0")


async def test_bank_invariant_under_zipf_contention(server_factory):  # type: ignore[no-untyped-def]
    await run_bank_workload(server_factory, seed=1, seconds=SECONDS)


@pytest.mark.soak
async def test_bank_invariant_soak(server_factory):  # type: ignore[no-untyped-def]
    await run_bank_workload(server_factory, seed=2, seconds=300.0)
