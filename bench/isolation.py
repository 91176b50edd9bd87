"""Workload: isolation (issue 14) — does one client's CPU-bound code hurt everyone else?

A Tape server (``python -m ops.cli serve bench/apps/isolation``) is measured
from a *bystander* that does two cheap things in closed loops, ~10 ms apart:

* ``POST /api/query`` of ``attack:get_one`` (one document by id), and
* on one WebSocket it holds (Convex sync protocol): ``ModifyQuerySet`` Add of
  ``attack:get_one``, wait for the ``Transition`` carrying its result (one
  *subscribe round trip*, timed from the send to the frame's arrival), then
  Remove it.

Phase A (idle): the bystander alone. Phase B (under attack): the same
bystander while, concurrently,

1. one client calls ``attack:spin_forever`` (``while True: pass`` in a
   mutation; stopped only by the 1 s bound) over HTTP in a loop;
2. one socket subscribes every second, with fresh args, to
   ``attack:spin_query`` (spins forever) and ``attack:spin_for`` (0.5 s of CPU,
   then returns), removing the previous round's pair;
3. ten clients each loop ``attack:burn`` (0.4 s of pure CPU, then one insert)
   over HTTP.

Every bystander call has a timeout (5 s); a call that times out counts as a
sample of the timeout. Attackers run until the phase ends and are then
cancelled, so the run finishes however badly the server does. Reported per
phase: p50/p90/p99/max and counts of both bystander figures, the attackers'
completed calls and their error messages (the first of each kind), the
server's RSS (``/proc/PID/status``) before and after, and how long the server
took to answer the bystander again once the attackers stopped. The goal:
bystander p99 ≤ 50 ms under attack.

    python -m bench.isolation [--quick] [--seconds S] [--json OUT]
"""
from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import orjson

from bench.common import HOST, ROOT, BenchError, ChildServer, CpuMeter, Harness, call, harness_for, percentile
from bench.wsdriver import HandshakeError, RawWebSocket

clock = time.perf_counter
APP = ROOT / "bench" / "apps" / "isolation"
GOAL_P99_MS = 50.0


def settings(quick: bool, seconds: float | None = None) -> dict[str, Any]:
    """The knobs of one run (`seconds` overrides each phase's length)."""
    return {
        "phase_s": seconds if seconds is not None else (5.0 if quick else 20.0),
        "timeout_s": 5.0,            # every bystander call
        "pause_s": 0.010,            # between two bystander calls of one kind
        "items": 100,                # documents the bystander reads, in turn
        "attack_head_start_s": 0.5,  # attackers start this long before the bystander's measured window
        "attack_call_timeout_s": 30.0,
        "resubscribe_every_s": 2.0,  # > one step of the pair (1 s bound + 0.5 s), so results can arrive before the Remove
        "spin_for_s": 0.5,
        "burners": 10,
        "burn_s": 0.4,
        "recovery_limit_s": 30.0,
    }


# --- results bookkeeping -------------------------------------------------------------

def _kind(message: str) -> str:
    """An error message with ids, numbers and request ids blanked: one key per kind of error."""
    return re.sub(r"[0-9a-fA-F]{8,}|\d+(\.\d+)?", "#", message)[:160]


@dataclass
class ErrorKinds:
    """Error messages grouped by kind: the first message of each kind and how often the kind occurred."""

    kinds: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, message: str) -> None:
        entry = self.kinds.setdefault(_kind(message), [message[:400], 0])
        entry[1] += 1

    def summary(self) -> list[dict[str, Any]]:
        return [{"first": first, "count": count} for first, count in self.kinds.values()]


@dataclass
class Samples:
    """Latencies (s) of one bystander figure: answers, errors and timeouts (as the timeout value)."""

    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    errors: int = 0
    timeouts: int = 0
    error_kinds: ErrorKinds = field(default_factory=ErrorKinds)

    def answered(self, seconds: float) -> None:
        self.latencies.append(seconds)
        self.ok += 1

    def failed(self, seconds: float, message: str) -> None:
        self.latencies.append(seconds)
        self.errors += 1
        self.error_kinds.add(message)

    def timed_out(self, timeout: float) -> None:
        self.latencies.append(timeout)
        self.timeouts += 1

    def summary(self) -> dict[str, Any]:
        xs = sorted(self.latencies)
        n = len(xs)
        return {
            "n": n, "ok": self.ok, "errors": self.errors, "timeouts": self.timeouts,
            "p50_ms": percentile(xs, 0.50) * 1e3, "p90_ms": percentile(xs, 0.90) * 1e3,
            "p99_ms": percentile(xs, 0.99) * 1e3, "max_ms": (xs[-1] * 1e3) if n else float("nan"),
            "mean_ms": (sum(xs) / n * 1e3) if n else float("nan"),
            "error_kinds": self.error_kinds.summary(),
        }


@dataclass
class AttackerStats:
    """What one attacker got done: calls sent, calls completed (answered or failed by the server)."""

    name: str
    description: str
    sent: int = 0
    ok: int = 0
    errors: int = 0
    timeouts: int = 0
    reconnects: int = 0
    error_kinds: ErrorKinds = field(default_factory=ErrorKinds)

    def summary(self) -> dict[str, Any]:
        return {"description": self.description, "sent": self.sent, "completed": self.ok + self.errors,
                "ok": self.ok, "errors": self.errors, "timeouts": self.timeouts, "reconnects": self.reconnects,
                "error_kinds": self.error_kinds.summary()}


def server_memory(pid: int) -> dict[str, int | None]:
    """VmRSS, VmHWM (kB) and thread count of `pid` from /proc/PID/status (None when unreadable)."""
    out: dict[str, int | None] = {"rss_kb": None, "peak_rss_kb": None, "threads": None}
    names = {"VmRSS": "rss_kb", "VmHWM": "peak_rss_kb", "Threads": "threads"}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in names:
                out[names[key]] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


# --- a sync-protocol socket that can add and remove queries ---------------------------

ResultHandler = Callable[[float, dict[str, Any]], None]


class SyncSocket:
    """One Convex sync session: Connect, then ModifyQuerySet Add/Remove; results resolve per-query futures.

    A query's first ``QueryUpdated`` or ``QueryFailed`` modification resolves
    the future from `expect` (with the frame's arrival time) and is also given
    to `on_result`. A ``FatalError`` or a closed socket fails every waiter.
    """

    def __init__(self) -> None:
        self.ws: RawWebSocket = None  # type: ignore[assignment]
        self.version = 0
        self.waiters: dict[int, asyncio.Future[tuple[float, dict[str, Any]]]] = {}
        self.on_result: ResultHandler | None = None
        self.fatal: str | None = None

    @classmethod
    async def open(cls, port: int, timeout: float) -> "SyncSocket":
        sock = cls()
        sock.ws = await RawWebSocket.connect(HOST, port, "/api/sync", sock._on_message, timeout=timeout)
        sock.ws.closed.add_done_callback(lambda _: sock._fail_all(ConnectionError("the socket closed")))
        sock.ws.send(orjson.dumps({"type": "Connect", "sessionId": str(uuid.uuid4()), "connectionCount": 0,
                                   "lastCloseReason": "InitialConnect", "clientTs": int(time.time() * 1000)}))
        return sock

    @property
    def closed(self) -> bool:
        return self.ws.closed.done() or self.fatal is not None

    def expect(self, query_id: int) -> asyncio.Future[tuple[float, dict[str, Any]]]:
        """A future for the first result of `query_id` (register it before sending the Add)."""
        future: asyncio.Future[tuple[float, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self.waiters[query_id] = future
        return future

    def forget(self, query_id: int) -> None:
        self.waiters.pop(query_id, None)

    def modify(self, adds: Sequence[tuple[int, str, dict[str, Any]]] = (), removes: Sequence[int] = ()) -> None:
        """Send one ModifyQuerySet with these Adds ``(queryId, udfPath, args)`` and Removes."""
        mods: list[dict[str, Any]] = [{"type": "Remove", "queryId": qid} for qid in removes]
        mods += [{"type": "Add", "queryId": qid, "udfPath": path, "args": [args]} for qid, path, args in adds]
        base = self.version
        self.version += 1
        self.ws.send(orjson.dumps({"type": "ModifyQuerySet", "baseVersion": base, "newVersion": self.version,
                                   "modifications": mods}))

    def close(self) -> None:
        self.ws.close()
        self._fail_all(ConnectionError("closed by the client"))

    def _fail_all(self, error: Exception) -> None:
        waiters, self.waiters = self.waiters, {}
        for future in waiters.values():
            if not future.done():
                future.set_exception(error)

    def _on_message(self, payload: bytes, now: float) -> None:
        msg = orjson.loads(payload)
        kind = msg.get("type")
        if kind == "Transition":
            for mod in msg.get("modifications", ()):
                if mod.get("type") not in ("QueryUpdated", "QueryFailed"):
                    continue
                future = self.waiters.pop(mod.get("queryId"), None)
                if future is not None and not future.done():
                    future.set_result((now, mod))
                if self.on_result is not None:
                    self.on_result(now, mod)
        elif kind == "FatalError":
            self.fatal = str(msg.get("error"))
            self._fail_all(ConnectionError(f"FatalError: {self.fatal}"))


# --- the bystander ---------------------------------------------------------------------

def _check_item(value: Any, doc_id: str) -> str | None:
    """None when `value` is the document `doc_id`, else what is wrong with it."""
    if isinstance(value, dict) and value.get("_id") == doc_id:
        return None
    return f"attack:get_one returned {str(value)[:120]} for {doc_id}"


async def http_bystander(url: str, ids: list[str], end: float, s: dict[str, Any], out: Samples) -> None:
    """`attack:get_one` over HTTP in a closed loop until `end`, one sample per call."""
    import aiohttp
    timeout = s["timeout_s"]
    async with aiohttp.ClientSession() as session:
        i = 0
        while clock() < end:
            doc_id = ids[i % len(ids)]
            i += 1
            t0 = clock()
            try:
                value = await asyncio.wait_for(call(session, url, "query", "attack:get_one", {"id": doc_id}), timeout)
            except asyncio.TimeoutError:
                out.timed_out(timeout)
            except (BenchError, aiohttp.ClientError, OSError) as exc:
                out.failed(clock() - t0, f"{type(exc).__name__}: {exc}")
            else:
                problem = _check_item(value, doc_id)
                if problem is None:
                    out.answered(clock() - t0)
                else:
                    out.failed(clock() - t0, problem)
            await asyncio.sleep(s["pause_s"])


async def ws_bystander(port: int, ids: list[str], end: float, s: dict[str, Any], out: Samples) -> int:
    """Subscribe round trips of `attack:get_one` on one held socket until `end`; returns reconnects."""
    timeout, pause = s["timeout_s"], s["pause_s"]
    sock: SyncSocket | None = None
    reconnects = -1
    query_id = 0
    try:
        while clock() < end:
            if sock is None or sock.closed:
                if sock is not None:
                    sock.close()
                sock = None
                reconnects += 1
                t0 = clock()
                try:
                    sock = await asyncio.wait_for(SyncSocket.open(port, timeout), timeout)
                except asyncio.TimeoutError:
                    out.timed_out(timeout)
                except (HandshakeError, OSError) as exc:
                    out.failed(clock() - t0, f"connecting: {type(exc).__name__}: {exc}")
                if sock is None:
                    await asyncio.sleep(pause)
                    continue
            query_id += 1
            doc_id = ids[query_id % len(ids)]
            future = sock.expect(query_id)
            t0 = clock()
            sock.modify(adds=[(query_id, "attack:get_one", {"id": doc_id})])
            try:
                t_received, mod = await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                sock.forget(query_id)
                out.timed_out(timeout)
            except ConnectionError as exc:
                out.failed(clock() - t0, str(exc))
                continue
            else:
                if mod["type"] == "QueryFailed":
                    out.failed(t_received - t0, str(mod.get("errorMessage")))
                else:
                    problem = _check_item(mod.get("value"), doc_id)
                    if problem is None:
                        out.answered(t_received - t0)
                    else:
                        out.failed(t_received - t0, problem)
            if not sock.closed:
                sock.modify(removes=[query_id])
            await asyncio.sleep(pause)
    finally:
        if sock is not None:
            sock.close()
    return max(0, reconnects)


# --- the attackers ------------------------------------------------------------------------

async def _http_attack(session: Any, url: str, path: str, args: dict[str, Any], stats: AttackerStats,
                       timeout: float) -> None:
    """Call one mutation over HTTP in a loop until cancelled."""
    import aiohttp
    while True:
        stats.sent += 1
        try:
            await asyncio.wait_for(call(session, url, "mutation", path, args), timeout)
            stats.ok += 1
        except asyncio.TimeoutError:
            stats.timeouts += 1
        except BenchError as exc:
            stats.errors += 1
            stats.error_kinds.add(str(exc))
        except (aiohttp.ClientError, OSError) as exc:  # not an answer: do not spin on a dead server
            stats.timeouts += 1
            stats.error_kinds.add(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.05)


async def spin_subscriber(port: int, s: dict[str, Any], forever: AttackerStats, half: AttackerStats) -> None:
    """Every second, subscribe afresh to a query that spins forever and one that spins 0.5 s (until cancelled)."""
    owner: dict[int, AttackerStats] = {}

    def on_result(_: float, mod: dict[str, Any]) -> None:
        stats = owner.pop(mod.get("queryId"), None)
        if stats is None:
            return
        if mod["type"] == "QueryFailed":
            stats.errors += 1
            stats.error_kinds.add(str(mod.get("errorMessage")))
        else:
            stats.ok += 1

    sock: SyncSocket | None = None
    query_id, live = 0, []
    try:
        while True:
            if sock is None or sock.closed:
                if sock is not None:
                    sock.close()
                    forever.reconnects += 1
                sock, live = None, []
                try:
                    sock = await asyncio.wait_for(SyncSocket.open(port, s["timeout_s"]), s["timeout_s"])
                    sock.on_result = on_result
                except (asyncio.TimeoutError, HandshakeError, OSError) as exc:
                    forever.error_kinds.add(f"connecting: {type(exc).__name__}: {exc}")
                    await asyncio.sleep(s["resubscribe_every_s"])
                    continue
            nonce = float(query_id)
            adds = [(query_id + 1, "attack:spin_query", {"nonce": nonce}),
                    (query_id + 2, "attack:spin_for", {"seconds": s["spin_for_s"], "nonce": nonce})]
            owner[query_id + 1], owner[query_id + 2] = forever, half
            sock.modify(adds=adds, removes=live)
            forever.sent += 1
            half.sent += 1
            live = [query_id + 1, query_id + 2]
            query_id += 2
            await asyncio.sleep(s["resubscribe_every_s"])
    finally:
        if sock is not None:
            sock.close()


def attacker_table(s: dict[str, Any]) -> dict[str, AttackerStats]:
    """The attackers of phase B, by name."""
    return {
        "spin_mutation": AttackerStats("spin_mutation", "HTTP loop: a mutation spinning `while True: pass`"),
        "spin_query": AttackerStats("spin_query", "WebSocket: a query spinning forever, re-subscribed every "
                                    f"{s['resubscribe_every_s']:g} s with fresh args"),
        "spin_for": AttackerStats("spin_for", f"WebSocket: a query spinning {s['spin_for_s']:g} s, re-subscribed "
                                  f"every {s['resubscribe_every_s']:g} s with fresh args"),
        "burners": AttackerStats("burners", f"{s['burners']} concurrent HTTP loops: a mutation of {s['burn_s']:g} s "
                                 "pure CPU, then one insert"),
    }


# --- phases -------------------------------------------------------------------------------

async def phase(server: ChildServer, ids: list[str], s: dict[str, Any], attack: bool) -> dict[str, Any]:
    """One measured window of the bystander, with the attackers running when `attack`."""
    import aiohttp
    out: dict[str, Any] = {"memory_before": server_memory(server.pid)}
    stats = attacker_table(s) if attack else {}
    tasks: list[asyncio.Task[None]] = []
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=s["burners"] + 4)) if attack else None
    try:
        if attack:
            assert session is not None
            t_call = s["attack_call_timeout_s"]
            tasks.append(asyncio.create_task(_http_attack(session, server.url, "attack:spin_forever", {},
                                                          stats["spin_mutation"], t_call)))
            tasks.append(asyncio.create_task(spin_subscriber(server.port, s, stats["spin_query"], stats["spin_for"])))
            for _ in range(s["burners"]):
                tasks.append(asyncio.create_task(_http_attack(session, server.url, "attack:burn",
                                                              {"seconds": s["burn_s"]}, stats["burners"], t_call)))
            await asyncio.sleep(s["attack_head_start_s"])
        http, ws = Samples(), Samples()
        meter = CpuMeter(server.pid).start()
        t0 = clock()
        end = t0 + s["phase_s"]
        _, reconnects = await asyncio.gather(http_bystander(server.url, ids, end, s, http),
                                             ws_bystander(server.port, ids, end, s, ws))
        out["window_s"] = clock() - t0
        out.update(meter.stop())
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        if session is not None:
            await session.close()
    out["http"] = http.summary()
    out["subscribe"] = ws.summary()
    out["subscribe"]["reconnects"] = reconnects
    if attack:
        out["attackers"] = {name: a.summary() for name, a in stats.items()}
    out["memory_after"] = server_memory(server.pid)
    return out


async def recovery(url: str, ids: list[str], limit: float) -> float | None:
    """Seconds until `attack:get_one` answers within 1 s again (None: not within `limit`)."""
    import aiohttp
    t0 = clock()
    async with aiohttp.ClientSession() as session:
        while clock() - t0 < limit:
            try:
                await asyncio.wait_for(call(session, url, "query", "attack:get_one", {"id": ids[0]}), 1.0)
                return clock() - t0
            except (asyncio.TimeoutError, BenchError, aiohttp.ClientError, OSError):
                await asyncio.sleep(0.05)
    return None


async def seed(url: str, count: int) -> list[str]:
    """Insert the bystander's documents; returns their ids."""
    import aiohttp
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        ids = await call(session, url, "mutation", "attack:seed", {"count": float(count)})
    if not isinstance(ids, list) or len(ids) != count:
        raise BenchError(f"attack:seed returned {str(ids)[:200]}")
    return ids


def _p99(x: dict[str, Any]) -> float:
    return float(x["p99_ms"])


def run(quick: bool = False, harness: Harness | None = None, *, seconds: float | None = None,
        overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start a Tape server on the isolation app, measure phase A (idle) and B (under attack), stop it.

    `seconds` sets each phase's length; `overrides` replaces other settings (tests use a short timeout).
    """
    s = settings(quick, seconds)
    unknown = set(overrides or {}) - set(s)
    if unknown:
        raise BenchError(f"unknown isolation settings: {', '.join(sorted(unknown))}")
    s.update(overrides or {})
    if not (APP / "attack.py").exists():
        raise BenchError(f"the isolation benchmark app is missing ({APP})")
    with harness_for(quick, harness) as h:
        data = Path(tempfile.mkdtemp(prefix="tape-isolation-", dir=h.work_dir))
        h.reporter.phase("isolation: starting Tape (isolation app)")
        server = h.start_child("Tape server isolation", lambda port: [
            sys.executable, "-m", "ops.cli", "serve", str(APP), "--data", str(data), "--port", str(port)])
        try:
            ids = asyncio.run(seed(server.url, s["items"]))
            memory_start = server_memory(server.pid)
            h.reporter.phase("isolation: phase A, bystander alone", s["phase_s"])
            idle = asyncio.run(phase(server, ids, s, attack=False))
            h.reporter.phase("isolation: phase B, bystander under attack", s["phase_s"] + s["attack_head_start_s"])
            with h.profile("isolation", server.pid):
                attacked = asyncio.run(phase(server, ids, s, attack=True))
            h.reporter.phase("isolation: waiting for the server to answer again")
            recovered = asyncio.run(recovery(server.url, ids, s["recovery_limit_s"]))
            memory_end = server_memory(server.pid)
            alive = server.proc is not None and server.proc.poll() is None
            log_tail = server.output(1500)
        finally:
            server.stop(5.0)
            h.stop_child(server)
    http_met = _p99(attacked["http"]) <= GOAL_P99_MS
    sub_met = _p99(attacked["subscribe"]) <= GOAL_P99_MS
    return {
        "settings": s,
        "idle": idle,
        "attack": attacked,
        "recovery_s": recovered,
        "server_alive_after": alive,
        "memory": {"start": memory_start, "end": memory_end},
        "goal": {"p99_ms": GOAL_P99_MS, "http_met": http_met, "subscribe_met": sub_met,
                 "met": http_met and sub_met},
        "server_log_tail": log_tail if (not alive or recovered is None) else "",
    }


# --- standalone ----------------------------------------------------------------------------

def _ms(x: Any) -> str:
    if not isinstance(x, (int, float)) or x != x:
        return "–"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def print_tables(r: dict[str, Any]) -> None:
    """A small rich summary of one result."""
    from rich.console import Console
    from rich.table import Table
    console = Console(highlight=False)
    if not console.is_terminal and console.width < 120:
        console = Console(highlight=False, width=120)
    table = Table(title=f"Bystander latency ({r['settings']['phase_s']:g} s per phase, "
                  f"timeout {r['settings']['timeout_s']:g} s)")
    for col in ("phase", "figure", "n", "ok", "errors", "timeouts", "p50 ms", "p90 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="left" if col in ("phase", "figure") else "right")
    for name in ("idle", "attack"):
        for key, label in (("http", "HTTP query"), ("subscribe", "subscribe round trip")):
            x = r[name][key]
            table.add_row(name, label, str(x["n"]), str(x["ok"]), str(x["errors"]), str(x["timeouts"]),
                          _ms(x["p50_ms"]), _ms(x["p90_ms"]), _ms(x["p99_ms"]), _ms(x["max_ms"]))
    console.print(table)
    attackers = Table(title="Attackers (phase B)")
    for col in ("attacker", "sent", "completed", "ok", "errors", "timeouts", "first error of each kind"):
        attackers.add_column(col, justify="left" if col in ("attacker", "first error of each kind") else "right")
    for name, a in r["attack"]["attackers"].items():
        kinds = "\n".join(f"{k['count']}× {k['first'][:100]}" for k in a["error_kinds"]) or "–"
        attackers.add_row(name, str(a["sent"]), str(a["completed"]), str(a["ok"]), str(a["errors"]),
                          str(a["timeouts"]), kinds)
    console.print(attackers)
    mem = r["memory"]
    goal = r["goal"]
    rec = r["recovery_s"]
    console.print(f"Server RSS: {mem['start']['rss_kb'] or 0:,} kB at the start, {mem['end']['rss_kb'] or 0:,} kB at "
                  f"the end (peak {mem['end']['peak_rss_kb'] or 0:,} kB, {mem['end']['threads']} threads). "
                  f"Answered again {'after ' + format(rec, '.2f') + ' s' if rec is not None else 'never'} "
                  "once the attackers stopped.")
    verdict = "[green]met[/]" if goal["met"] else "[red]not met[/]"
    console.print(f"Goal: bystander p99 ≤ {goal['p99_ms']:g} ms under attack: {verdict} (HTTP "
                  f"{_ms(r['attack']['http']['p99_ms'])} ms, subscribe {_ms(r['attack']['subscribe']['p99_ms'])} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 s per phase instead of 20 s")
    parser.add_argument("--seconds", type=float, help="length of each phase (overrides --quick)")
    parser.add_argument("--json", help="write the result to this file")
    args = parser.parse_args()
    result = run(quick=args.quick, seconds=args.seconds)
    print_tables(result)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
