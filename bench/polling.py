"""Workload 4: polling vs push for the same data, measured side by side in one window.

One account's balance (``accounts:balance``) is watched by

* 1,000 **polling** clients, each with its own keep-alive HTTP connection,
  POSTing ``/api/query`` every 5 s (each at a random phase), and
* 1,000 **push** clients, each a sync-protocol socket subscribed to the
  same query,

while a writer changes the balance once per second (a transfer of 1 out of
that account). The window lasts 60 s (quick: 15 s); changes happen during
all but the last polling interval, so every poller gets to observe every
change before the window closes.

Counting is done at the client side, exactly: both kinds of client use
minimal raw clients (`RawHttp` here, `bench.wsdriver.RawWebSocket`)
that count every byte they write and read at the HTTP/WebSocket level
(request/status lines, headers, bodies, the WebSocket upgrade, frame
headers); TCP/IP overhead is not counted.

Staleness: the balance tells which change a client is looking at (version k
has balance b0 − k). For every client and every change, staleness is the
time from the writer sending that change's mutation (an upper bound on its
commit time) until the client first sees that version or a later one — for
a poller, the next poll that observes it.
"""
from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import orjson

from bench.common import HOST, BenchError, Harness, accounts_for, harness_for, latency_summary, owner
from bench.wsdriver import SyncClient, open_many

clock = time.perf_counter
BALANCE = "accounts:balance"


def settings(quick: bool) -> dict[str, Any]:
    return {"pollers": 1000, "subscribers": 1000, "interval_s": 5.0, "window_s": 15.0 if quick else 60.0,
            "change_every_s": 1.0}


class RawHttp:
    """One keep-alive HTTP/1.1 connection that counts the bytes it moves."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.bytes_out = 0
        self.bytes_in = 0
        self.requests = 0

    async def open(self) -> "RawHttp":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        request = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        self.writer.write(request)
        self.bytes_out += len(request)
        self.requests += 1
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        data = await self.reader.readexactly(length) if length else b""
        self.bytes_in += len(head) + len(data)
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Observer:
    """Staleness bookkeeping: versions a client has seen and when each was committed."""

    def __init__(self, b0: float, commits: dict[int, float]) -> None:
        self.b0 = b0
        self.commits = commits
        self.staleness: list[float] = []

    def client(self) -> "ClientView":
        return ClientView(self)


class ClientView:
    def __init__(self, observer: Observer) -> None:
        self.o = observer
        self.seen = 0

    def saw(self, value: Any, t: float) -> None:
        if not isinstance(value, (int, float)):
            return
        k = round(self.o.b0 - value)
        if k <= self.seen:
            return
        commits = self.o.commits
        for j in range(self.seen + 1, k + 1):
            t_commit = commits.get(j)
            if t_commit is not None:
                self.o.staleness.append(t - t_commit)
        self.seen = k


async def measure(port: int, hot: str, sink_count: int, s: dict[str, Any], reporter: Any) -> dict[str, Any]:
    interval, window = s["interval_s"], s["window_s"]
    changes = max(1, int((window - interval) / s["change_every_s"]))
    body = orjson.dumps({"path": BALANCE, "args": {"owner": hot}, "format": "json"})

    # Connections first (not part of the window), then the initial value.
    pollers = [RawHttp(HOST, port) for _ in range(s["pollers"])]
    gate = asyncio.Semaphore(64)

    async def open_one(p: RawHttp) -> None:
        async with gate:
            await p.open()
    await asyncio.gather(*(open_one(p) for p in pollers))
    subs: list[SyncClient] = await open_many(s["subscribers"], HOST, port)
    writer = await SyncClient.open(HOST, port)
    status, data = await pollers[0].post("/api/query", body)
    if status != 200:
        raise BenchError(f"accounts:balance of {hot}: HTTP {status}: {data[:200]!r}")
    b0 = float(orjson.loads(data)["value"])
    pollers[0].bytes_in = pollers[0].bytes_out = pollers[0].requests = 0

    commits: dict[int, float] = {}
    poll_obs, push_obs = Observer(b0, commits), Observer(b0, commits)
    subscribed = asyncio.Event()
    waiting = len(subs)

    def make_push_handler(view: ClientView) -> Any:
        def on_update(t: float, qid: int, value: Any) -> None:
            nonlocal waiting
            if view.seen == 0 and value == b0 and waiting > 0:
                waiting -= 1
                if waiting == 0:
                    subscribed.set()
            view.saw(value, t)
        return on_update

    reporter.phase(f"polling: {s['pollers']:,} pollers every {interval:g}s vs {s['subscribers']:,} subscribers",
                   window)
    for c in subs:
        c.on_update = make_push_handler(push_obs.client())
        c.subscribe([(0, BALANCE, {"owner": hot})])
    await asyncio.wait_for(subscribed.wait(), 60)
    start = clock()
    end = start + window
    errors = 0
    rng = random.Random(5)

    async def poller(p: RawHttp, view: ClientView) -> None:
        nonlocal errors
        t_next = start + rng.uniform(0, interval)
        while t_next < end:
            await asyncio.sleep(max(0.0, t_next - clock()))
            status, data = await p.post("/api/query", body)
            t = clock()
            if status == 200:
                view.saw(orjson.loads(data).get("value"), t)
            else:
                errors += 1
            t_next += interval

    async def change_writer() -> None:
        for k in range(1, changes + 1):
            await asyncio.sleep(max(0.0, start + (k - 0.5) * s["change_every_s"] - clock()))
            commits[k] = clock()
            await writer.mutation("accounts:transfer", {"src": hot, "dst": owner(k % sink_count), "amount": 1.0})

    await asyncio.gather(change_writer(), *(poller(p, poll_obs.client()) for p in pollers))
    await asyncio.sleep(max(0.0, end - clock()))
    elapsed = clock() - start
    writer.close()
    for p in pollers:
        p.close()
    for c in subs:
        c.close()

    poll = {
        "clients": len(pollers),
        "requests": sum(p.requests for p in pollers),
        "query_executions": sum(p.requests for p in pollers),
        "bytes_to_server": sum(p.bytes_out for p in pollers),
        "bytes_to_clients": sum(p.bytes_in for p in pollers),
        "errors": errors,
    }
    poll.update(latency_summary(poll_obs.staleness, "staleness_"))
    push = {
        "clients": len(subs),
        # Client → server messages: Connect + one ModifyQuerySet per client, nothing after that.
        "requests": sum(c.ws.frames_out for c in subs),
        "subscribe_requests": len(subs),
        # One shared execution when the first client subscribed, then one re-run per change.
        "query_executions": 1 + changes,
        "messages_to_clients": sum(c.transitions for c in subs),
        "bytes_to_server": sum(c.ws.bytes_out for c in subs),
        "bytes_to_clients": sum(c.ws.bytes_in for c in subs),
        "errors": 0,
    }
    push.update(latency_summary(push_obs.staleness, "staleness_"))
    for side in (poll, push):
        side["bytes_total"] = side["bytes_to_server"] + side["bytes_to_clients"]
    return {"settings": s, "changes": changes, "window_s": round(elapsed, 3), "polling": poll, "push": push,
            "expected_observations": changes * s["pollers"]}


def run(quick: bool = False, harness: Harness | None = None, *, accounts: int | None = None,
        overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    s = settings(quick)
    s.update(overrides or {})
    with harness_for(quick, harness) as h:
        tape = h.tape(accounts or accounts_for(quick))
        n = tape.accounts
        return asyncio.run(measure(tape.port, owner(n - 2), n - 2, s, h.reporter))


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
