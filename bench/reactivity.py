"""Workload 3: reactivity — commit → update latency, fan-out, and many distinct subscriptions.

(a) **commit → update**: 100 sync-protocol sockets subscribe to
    ``accounts:balance`` of one owner; a writer socket sends one transfer
    from that owner (amount 1) at a time. Latency = the writer's send → each
    subscriber receiving the Transition carrying the new balance; the next
    round starts once all 100 have it. That figure includes running the
    mutation and making it durable; ``commit_receipt_*``/``commit_all_*``
    time the same receipts from the commit itself: the server's
    ``perf_counter`` when the transfer's batch was durable and applied
    (``GET /api/admin/commit_times``; same host, same monotonic clock).
(b) **fan-out**: the same with 1,000 subscribers. Per round, "all have it" is
    the latest of the 1,000 receipts; p50/p99 are taken over rounds (and over
    every receipt).
(floor) both are measured against `bench.floor_server`, which forwards
    the exact bytes of a Tape Transition to the same number of sockets when a
    trigger socket sends them: trigger send → receipt is the cost of moving
    those bytes through aiohttp and the kernel, with no commit and no query.
    Ratios are Tape ÷ floor, measured in the same run with the same client.
    Tape rounds and floor rounds alternate (each floor round forwards the
    Transition Tape delivered in the round before), so a burst of load from
    elsewhere on the machine lands on both sides alike.
(c) **10,000 subscriptions**: 100 sockets each subscribe to 100 distinct
    ``accounts:balance`` queries (one per account, 10,000 in all), then 64
    writer sockets run uniform random transfers among those accounts (each
    commit changes two subscribed queries). Reported: commits/s sustained
    and updates delivered/s, beside the same writers' commits/s with no
    subscriptions, measured just before.
"""
from __future__ import annotations

import asyncio
import bisect
import contextlib
import sys
import time
from typing import Any, Callable

from bench.common import (HOST, Harness, Zipf, accounts_for, harness_for, histogram_ms, latency_summary,
                              owner)
from bench.transfer import drive_ws
from bench.wsdriver import RawWebSocket, SyncClient, open_many

clock = time.perf_counter
BALANCE = "accounts:balance"


def settings(quick: bool) -> dict[str, Any]:
    return {
        "latency_subscribers": 100,
        "latency_rounds": 100 if quick else 500,
        "fanout_subscribers": 1000,
        "fanout_rounds": 20 if quick else 100,
        "distinct_subscriptions": 10_000,
        "distinct_sockets": 100,
        "writers": 64,
        "distinct_seconds": 4.0 if quick else 10.0,
        "baseline_seconds": 2.0 if quick else 5.0,
    }


class Rounds:
    """Receipt bookkeeping for rounds of one update delivered to many subscribers."""

    def __init__(self, subscribers: int) -> None:
        self.subscribers = subscribers
        self.receipts: list[float] = []      # every subscriber's latency, all rounds
        self.all_have_it: list[float] = []   # per round: the latest receipt
        self.first: list[float] = []         # per round: the earliest receipt
        self.t_send = 0.0
        self.expected: Any = None
        self._round: list[float] = []
        self._event: asyncio.Event | None = None
        self.late = 0
        self.acks: list[float] = []          # per round: the writer's own mutation done (response + Transition)
        self.raw: list[tuple[float, list[float]]] = []  # per round: (t_send, receipts after t_send)
        self.commit_ts: list[int | None] = []  # per round: the mutation's commit ts
        self.from_commit: list[list[float]] = []  # per round: receipts after the server's commit instant

    def begin(self, expected: Any) -> None:
        self.expected = expected
        self._round = []
        self._event = asyncio.Event()
        self.t_send = clock()

    def received(self, t: float, value: Any) -> None:
        if self._event is None or value != self.expected:
            return
        self._round.append(t - self.t_send)
        if len(self._round) == self.subscribers:
            self._event.set()

    async def finish(self, timeout: float = 10.0) -> None:
        assert self._event is not None
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            self.late += 1
        self.raw.append((self.t_send, self._round))
        if self._round:
            self.receipts.extend(self._round)
            self.all_have_it.append(max(self._round))
            self.first.append(min(self._round))
        self._event = None

    def time_from_commits(self, clock_name: str, commits: list[list[int]]) -> None:
        """Re-time every receipt from its commit instant (server stamps, on this host's monotonic clock)."""
        if clock_name != time.get_clock_info("perf_counter").implementation or "MONOTONIC" not in clock_name:
            return  # not the same clock: receipts cannot be compared with server stamps
        stamps = sorted((ts, t_ns) for ts, t_ns in commits)
        keys = [ts for ts, _ in stamps]
        for (t_send, receipts), ts in zip(self.raw, self.commit_ts):
            if ts is None or not receipts:
                continue
            i = bisect.bisect_left(keys, ts)  # the first batch ending at or after this commit holds it
            if i == len(keys):
                continue
            t_commit = stamps[i][1] / 1e9
            self.from_commit.append([t_send + r - t_commit for r in receipts])

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"subscribers": self.subscribers, "rounds": len(self.all_have_it),
                               "incomplete_rounds": self.late}
        out.update(latency_summary(self.receipts, "receipt_"))
        out.update(latency_summary(self.all_have_it, "all_"))
        out.update(latency_summary(self.first, "first_"))
        out.update(latency_summary(self.acks, "writer_ack_"))
        if self.from_commit:
            out["commit_rounds"] = len(self.from_commit)
            out.update(latency_summary([x for r in self.from_commit for x in r], "commit_receipt_"))
            out.update(latency_summary([max(r) for r in self.from_commit if r], "commit_all_"))
        out["receipt_ms_sorted"] = histogram_ms(self.receipts, 2000)
        out["all_ms_per_round"] = [round(x * 1e3, 4) for x in self.all_have_it]
        return out


def _handler(rounds: Rounds, query_id: int = 0) -> Callable[[float, int, Any], None]:
    def on_update(t: float, qid: int, value: Any) -> None:
        if qid == query_id:
            rounds.received(t, value)
    return on_update


async def _subscribe_all(clients: list[SyncClient], query: tuple[int, str, dict[str, Any]], timeout: float = 30) -> Any:
    """Subscribe every client to one query; returns the initial value once all have it."""
    first: list[Any] = []
    remaining = len(clients)
    done = asyncio.Event()

    def initial(t: float, qid: int, value: Any) -> None:
        nonlocal remaining
        first.append(value)
        remaining -= 1
        if remaining == 0:
            done.set()
    for c in clients:
        c.on_update = initial
        c.subscribe([query])
    await asyncio.wait_for(done.wait(), timeout)
    return first[0]


async def tape_rounds(port: int, subscribers: int, rounds: int, hot: str, sink_count: int,
                      around: Callable[[], Any] = contextlib.nullcontext, admin_key: str | None = None,
                      floor_port: int | None = None) -> tuple[Rounds, Rounds | None, bytes]:
    """Rounds of: writer transfers 1 from `hot`; every subscriber of balance(hot) must see the new value.

    `around()` is a context manager entered for the rounds only (not the connection setup).
    With `admin_key`, receipts are also timed from the server's commit instants. With
    `floor_port`, as many sockets subscribe to the floor server, and every Tape round is
    followed by one floor round forwarding the Transition bytes Tape just delivered, so both
    are measured under the same machine load (returned as the second Rounds).
    """
    subs: list[SyncClient] = await open_many(subscribers, HOST, port)
    writer = await SyncClient.open(HOST, port)
    floor_subs: list[SyncClient] = []
    trigger: RawWebSocket | None = None
    try:
        value = await _subscribe_all(subs, (0, BALANCE, {"owner": hot}))
        rec = Rounds(subscribers)
        for c in subs:
            c.on_update = _handler(rec)
        floor: Rounds | None = None
        if floor_port is not None:
            floor_subs = await open_many(subscribers, HOST, floor_port, "/sub")
            trigger = await RawWebSocket.connect(HOST, floor_port, "/trigger", lambda payload, t: None)
            await asyncio.sleep(0.2)  # let the floor server register the last sockets
            floor = Rounds(subscribers)
            for c in floor_subs:
                c.on_update = _handler(floor)
        with around():
            for r in range(rounds):
                value = await _tape_round(rec, writer, r, hot, sink_count, value)
                if floor is not None and trigger is not None:
                    await _floor_round(floor, trigger, subs[0].last_transition)
        if admin_key is not None:
            clock_name, commits = await commit_times(port, admin_key)
            rec.time_from_commits(clock_name, commits)
        payload = subs[0].last_transition
        return rec, floor, payload
    finally:
        writer.close()
        if trigger is not None:
            trigger.close()
        for c in subs + floor_subs:
            c.close()


async def _tape_round(rec: Rounds, writer: SyncClient, r: int, hot: str, sink_count: int, value: float) -> float:
    """One transfer from `hot`; returns the new balance once every subscriber has it and the writer is done."""
    expected = value - 1.0
    rec.begin(expected)
    future = writer.send_mutation("accounts:transfer", {"src": hot, "dst": owner(r % sink_count), "amount": 1.0})
    request_id = writer.last_request_id
    t_send = rec.t_send
    future.add_done_callback(lambda f, t0=t_send: rec.acks.append(clock() - t0))
    await rec.finish()
    result = await asyncio.wait_for(future, 10)
    rec.commit_ts.append(writer.mutation_ts.get(request_id))
    await asyncio.sleep(0.002)
    return float(result)


async def _floor_round(rec: Rounds, trigger: RawWebSocket, payload: bytes) -> None:
    """The trigger sends `payload`; the floor server forwards it to every subscriber."""
    rec.begin(_updated_value(payload))
    trigger.send(payload)
    await rec.finish()
    await asyncio.sleep(0.002)


async def commit_times(port: int, admin_key: str) -> tuple[str, list[list[int]]]:
    """The server's recent (batch ts, perf_counter_ns when durable and applied) stamps and its clock's name."""
    import aiohttp
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{HOST}:{port}/api/admin/commit_times",
                            headers={"Authorization": f"Convex {admin_key}"}) as r:
            if r.status != 200:
                return "", []
            body = await r.json()
    return body.get("clock", ""), body.get("commits", [])


def admin_key_of(argv: list[str]) -> str | None:
    """The admin key a `tape serve ... --data DIR` child wrote into its data directory."""
    from pathlib import Path
    if "--data" not in argv:
        return None
    try:
        return (Path(argv[argv.index("--data") + 1]) / "admin_key").read_text().strip()
    except (OSError, IndexError):
        return None


async def solo_commits(port: int, rounds: int, hot: str, sink_count: int) -> dict[str, Any]:
    """One writer, nobody subscribed: sequential transfers, send → done (response + Transition)."""
    writer = await SyncClient.open(HOST, port)
    try:
        times = []
        for r in range(rounds):
            t0 = clock()
            await asyncio.wait_for(writer.mutation("accounts:transfer", {"src": hot, "dst": owner(r % sink_count),
                                                                         "amount": 1.0}), 10)
            times.append(clock() - t0)
            await asyncio.sleep(0.002)
        return latency_summary(times)
    finally:
        writer.close()


def _updated_value(payload: bytes) -> Any:
    import orjson
    msg = orjson.loads(payload)
    for mod in msg.get("modifications", []):
        if mod.get("type") == "QueryUpdated":
            return mod["value"]
    return None


async def distinct_subscriptions(port: int, accounts: int, s: dict[str, Any], quick: bool,
                                 reporter: Any) -> dict[str, Any]:
    count = min(s["distinct_subscriptions"], accounts)
    sockets = s["distinct_sockets"]
    per_socket = (count + sockets - 1) // sockets
    subs: list[SyncClient] = await open_many(sockets, HOST, port)
    try:
        t0 = clock()
        remaining = count
        ready = asyncio.Event()
        updates = 0

        def on_update(t: float, qid: int, value: Any) -> None:
            nonlocal remaining, updates
            updates += 1
            if remaining > 0:
                remaining -= 1
                if remaining == 0:
                    ready.set()
        for j, c in enumerate(subs):
            c.on_update = on_update
            lo, hi = j * per_socket, min(count, (j + 1) * per_socket)
            if lo < hi:
                c.subscribe([(k - lo, BALANCE, {"owner": owner(k)}) for k in range(lo, hi)])
        await asyncio.wait_for(ready.wait(), 120)
        subscribe_s = clock() - t0
        pairs = Zipf(count, 0.0, seed=11).pairs(50_000 if quick else 200_000)
        reporter.phase(f"reactivity: {count:,} subscriptions live, 64 writers", s["distinct_seconds"] + 0.5)
        before = updates
        t0 = clock()
        res = await drive_ws(port, pairs, s["writers"], s["distinct_seconds"], 0.5)
        elapsed = clock() - t0
        await asyncio.sleep(0.2)
        delivered = updates - before
        # Rates over the whole drive (warm-up and drain included): when invalidation is slow a
        # transfer can take longer than the measured window, and the window would count none.
        return {"subscriptions": count, "sockets": sockets, "subscribe_s": round(subscribe_s, 3),
                "commits_per_s": res["overall_tps"], "window_commits_per_s": res["tps"],
                "commits": res["completed_total"], "drive_s": round(elapsed, 3),
                "p50_ms": res["p50_ms"], "p99_ms": res["p99_ms"], "errors": res["errors"],
                "updates_delivered": delivered, "updates_per_s": delivered / elapsed,
                "updates_per_commit": delivered / max(1, res["completed_total"])}
    finally:
        for c in subs:
            c.close()


def run(quick: bool = False, harness: Harness | None = None, *, accounts: int | None = None,
        overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    s = settings(quick)
    s.update(overrides or {})
    with harness_for(quick, harness) as h:
        tape = h.tape(accounts or accounts_for(quick))
        n = tape.accounts
        hot = owner(n - 1)
        out: dict[str, Any] = {"settings": s}

        h.reporter.phase("reactivity: one writer alone, sequential transfers")
        out["solo_commit"] = asyncio.run(solo_commits(tape.port, s["latency_rounds"], hot, n - 2))
        key = admin_key_of(tape.server.argv)
        floor = h.start_child("broadcast floor", lambda port: [
            sys.executable, "-m", "bench.floor_server", "--port", str(port)])
        try:
            h.reporter.phase(f"reactivity: commit → update, {s['latency_subscribers']} subscribers (rounds "
                             "alternate with the raw broadcast floor)")
            lat, floor_lat, payload = asyncio.run(tape_rounds(
                tape.port, s["latency_subscribers"], s["latency_rounds"], hot, n - 2, admin_key=key,
                floor_port=floor.port))
            h.reporter.phase(f"reactivity: fan-out to {s['fanout_subscribers']:,} subscribers (rounds alternate "
                             "with the raw broadcast floor)")
            fan, floor_fan, payload = asyncio.run(tape_rounds(
                tape.port, s["fanout_subscribers"], s["fanout_rounds"], hot, n - 2,
                lambda: h.profile("fanout", tape.server.pid), admin_key=key, floor_port=floor.port))
        finally:
            h.stop_child(floor)
        assert floor_lat is not None and floor_fan is not None
        out["latency"] = lat.summary()
        out["fanout"] = fan.summary()
        out["transition_bytes"] = len(payload)
        out["floor_latency"] = floor_lat.summary()
        out["floor_fanout"] = floor_fan.summary()

        h.reporter.phase("reactivity: writers with no subscriptions", s["baseline_seconds"] + 0.5)
        count = min(s["distinct_subscriptions"], n)
        pairs = Zipf(count, 0.0, seed=11).pairs(50_000 if quick else 200_000)
        base = asyncio.run(drive_ws(tape.port, pairs, s["writers"], s["baseline_seconds"], 0.5))
        h.reporter.phase(f"reactivity: subscribing {count:,} distinct queries")
        with h.profile("distinct", tape.server.pid):
            distinct = asyncio.run(distinct_subscriptions(tape.port, n, s, quick, h.reporter))
        distinct["no_subscription_commits_per_s"] = base["overall_tps"]
        out["distinct"] = distinct
    return out


if __name__ == "__main__":  # pragma: no cover
    import json
    result = run(quick="--quick" in sys.argv)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if not isinstance(vv, list)} if isinstance(v, dict) else v
                      for k, v in result.items()}, indent=2))
