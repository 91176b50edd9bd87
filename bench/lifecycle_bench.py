"""Benchmark: a new replica joining a long history, and disk use under a retention window (issue 22).

Replica join: a synthetic history of N message records is written through the
real FileLog codec and projected (with a checkpoint), a committer serves it
(`tape serve`), a writer keeps posting messages, and a new replica process
starts with an empty data directory. Reported: seconds from the replica's
start to its first answered query, the checkpoint copy's bytes/s, and a plain
file copy of the same bytes (the peer) measured in the same run.

Retention: a committer with ``--retain W --log-segment-bytes S`` takes steady
writes for 5×W; the log's disk use is sampled. Reported: the log's bytes at
the end (and the largest after the first window) against the bytes the
writers appended per window, plus the checkpoints' own bytes (each file once:
checkpoints hard-link their SST files). Goal: log ≤ 1.5 × window.

Building 10,000,000 records takes a while: ``--history DIR`` builds the history
into DIR once (log + checkpoint) and later runs clone it (hard links for the
immutable files), so only the join itself is repeated.

Run ``python -m bench.lifecycle_bench [--quick] [--records N] [--dir DIR] [--history DIR]``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import ROOT, BenchError, ChildServer, call, free_port
from bench.restore_bench import _write_log
from engine.app import App
from log.file_log import FileLog
from log.segment import list_segments
from projections.checkpoints import copy_projection, list_checkpoints, take_checkpoint
from projections.rebuild import catch_up
from projections.store import Projection

APP = Path(__file__).resolve().parent / "apps" / "chat"
FULL_RECORDS = 10_000_000
QUICK_RECORDS = 100_000
GOAL_FIRST_QUERY_S = 30.0
GOAL_RETENTION_RATIO = 1.5
COMMITTER_START_TIMEOUT = 3600.0
_BOOT = re.compile(r"bootstrapped from (.+?): checkpoint at offset (\d+), (\d+) bytes in ([\d.]+)s")


def _serve(name: str, data: Path, port: int, log_dir: Path, *extra: str) -> ChildServer:
    argv = [sys.executable, "-m", "ops.cli", "serve", str(APP), "--data", str(data), "--port", str(port), *extra]
    return ChildServer(name, argv, port, log_dir / f"{name}.log")


async def _build_history(data: Path, records: int) -> dict[str, Any]:
    """Write `records` messages to DATA/log, project them, checkpoint: a deployment with that much history."""
    started = time.perf_counter()
    await _write_log(data / "log", records)
    written = time.perf_counter() - started
    log = FileLog(data / "log", read_only=True)
    await log.open()
    projection = Projection(data / "projection", App.load(APP).schema.index_catalog())
    try:
        await catch_up(projection, log)
        await asyncio.to_thread(projection.flush)
        take_checkpoint(projection, data)
    finally:
        projection.close()
        await log.close()
    return {"records": records, "write_s": round(written, 1), "build_s": round(time.perf_counter() - started, 1)}


def _clone_history(src: Path, dest: Path) -> None:
    """A data directory at `dest` holding `src`'s log and checkpoints (hard links for sealed segments and
    checkpoint files, copies of what the committer changes) and a projection copied from the newest checkpoint."""
    (dest / "log").mkdir(parents=True)
    segs = list_segments(src / "log")
    active = segs[-1][1].name if segs else None
    for entry in os.scandir(src / "log"):
        if entry.name == "LOCK":
            continue
        sealed = entry.name.endswith((".seg", ".seal")) and not entry.name.startswith(active or "-")
        (os.link if sealed else shutil.copy2)(entry.path, dest / "log" / entry.name)
    shutil.copytree(src / "checkpoints", dest / "checkpoints", copy_function=os.link)
    copy_projection(list_checkpoints(dest)[-1].projection_dir, dest / "projection")


async def _history(data: Path, records: int, keep: Path | None) -> dict[str, Any]:
    """Build the history into `data` (or into `keep` once, then clone it from there)."""
    if keep is None:
        return await _build_history(data, records)
    if not list_checkpoints(keep):
        shutil.rmtree(keep, ignore_errors=True)
        built = await _build_history(keep, records)
        (keep / "built.json").write_text(json.dumps(built))
    await asyncio.to_thread(_clone_history, keep, data)
    return {**json.loads((keep / "built.json").read_text()), "reused": str(keep)}


async def _writer(url: str, stop: asyncio.Event, counts: list[int], pause: float = 0.0) -> None:
    async with aiohttp.ClientSession() as session:
        n = 0
        while not stop.is_set():
            await call(session, url, "mutation", "messages:send", {"channel": f"c{n % 16}", "body": f"live {n}"})
            counts[0] += 1
            n += 1
            if pause:
                await asyncio.sleep(pause)


async def _first_query(url: str, deadline: float) -> None:
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                await call(session, url, "query", "messages:latest", {"channel": "c1"})
                return
            except (aiohttp.ClientError, BenchError, OSError):
                await asyncio.sleep(0.02)
    raise BenchError("the replica answered no query before the deadline")


def _plain_copy(src: Path, dest: Path) -> tuple[int, float]:
    """Copy every file of directory tree `src` (the checkpoint) with shutil.copyfile + fsync: (bytes, seconds)."""
    total, started = 0, time.perf_counter()
    for root, _dirs, files in os.walk(src):
        target = dest / Path(root).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copyfile(Path(root) / name, target / name)
            fd = os.open(target / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            total += (target / name).stat().st_size
    return total, time.perf_counter() - started


async def replica_join(root: Path, records: int, keep: Path | None = None) -> dict[str, Any]:
    """Build the history, start the committer and a writer, then time a new replica to its first query."""
    data = root / "committer"
    history = await _history(data, records, keep)
    started = time.monotonic()
    # (its first start checks every document against schema.py once: minutes for 10,000,000)
    committer = _serve("committer", data, free_port(), root).start(COMMITTER_START_TIMEOUT)
    history["committer_first_start_s"] = round(time.monotonic() - started, 1)
    try:
        key_file = root / "admin_key"
        key_file.write_text((data / "admin_key").read_text())
        key_file.chmod(0o600)
        stop, counts = asyncio.Event(), [0]
        writer = asyncio.create_task(_writer(committer.url, stop, counts))
        replica = _serve("replica", root / "replica", free_port(), root, "--role", "replica", "--committer",
                         committer.url, "--log", str(data / "log"), "--admin-key-file", str(key_file))
        before = counts[0]
        started = time.monotonic()
        proc_task = asyncio.create_task(asyncio.to_thread(replica.start, 600))
        await _first_query(replica.url, started + 600)
        first_query_s = time.monotonic() - started
        await proc_task
        stop.set()
        await writer
        during = counts[0] - before
        try:
            line = _BOOT.search(replica.log_path.read_text(errors="replace"))
            if line is None:
                raise BenchError(f"the replica did not bootstrap from a checkpoint:\n{replica.output()}")
            copied, copy_s = int(line.group(3)), float(line.group(4))
            async with aiohttp.ClientSession() as session:  # the replica converges with the committer
                want = await call(session, committer.url, "query", "messages:latest", {"channel": "c1"})
                deadline = time.monotonic() + 30
                while await call(session, replica.url, "query", "messages:latest", {"channel": "c1"}) != want:
                    if time.monotonic() > deadline:
                        raise BenchError("the replica did not catch up with the committer")
                    await asyncio.sleep(0.05)
        finally:
            replica.stop()
    finally:
        committer.stop()
    got = list_checkpoints(root / "replica")[0]
    peer_bytes, peer_s = await asyncio.to_thread(_plain_copy, got.path, root / "plain-copy")
    return {
        **history,
        "first_query_s": round(first_query_s, 2),
        "writes_during_join": during,
        "checkpoint_offset": got.offset,
        "checkpoint_bytes": copied,
        "checkpoint_copy_s": round(copy_s, 3),
        "checkpoint_copy_mb_per_s": round(copied / copy_s / 1e6, 1) if copy_s else None,
        "plain_copy_bytes": peer_bytes,
        "plain_copy_mb_per_s": round(peer_bytes / peer_s / 1e6, 1) if peer_s else None,
        "copy_vs_plain": round((copied / copy_s) / (peer_bytes / peer_s), 2) if copy_s and peer_s else None,
        "goal_first_query_s": GOAL_FIRST_QUERY_S,
        "met": first_query_s <= GOAL_FIRST_QUERY_S,
    }


def _log_bytes(log_dir: Path) -> int:
    return sum(p.stat().st_size for _, p in list_segments(log_dir) if p.exists())


def _unique_bytes(directory: Path) -> int:
    """Bytes of the files under `directory`, each inode counted once (checkpoints share SST files)."""
    seen: set[int] = set()
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


async def retention_disk(root: Path, window_s: float, segment_bytes: int, writers: int) -> dict[str, Any]:
    """Steady writes for 5 × `window_s` against ``--retain``; the log's disk use against one window's bytes."""
    data = root / "retained"
    server = _serve("retained", data, free_port(), root, "--retain", f"{window_s:g}s", "--log-segment-bytes",
                    str(segment_bytes)).start(60)
    samples: list[tuple[float, int]] = []
    try:
        stop, counts = asyncio.Event(), [0]
        tasks = [asyncio.create_task(_writer(server.url, stop, counts, 0.002)) for _ in range(writers)]
        started = time.monotonic()
        while time.monotonic() - started < 5 * window_s:
            await asyncio.sleep(0.1)
            samples.append((time.monotonic() - started, await asyncio.to_thread(_log_bytes, data / "log")))
        stop.set()
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
        log_end = await asyncio.to_thread(_log_bytes, data / "log")
        archived = await asyncio.to_thread(_log_bytes, data / "log-archive") if (data / "log-archive").is_dir() else 0
        checkpoints = await asyncio.to_thread(_unique_bytes, data / "checkpoints")
        cp_count = len(list_checkpoints(data))
    finally:
        server.stop()
    appended = log_end + archived
    window_bytes = appended / elapsed * window_s
    after_first = [b for t, b in samples if t >= 2 * window_s]
    return {
        "window_s": window_s,
        "segment_bytes": segment_bytes,
        "seconds": round(elapsed, 1),
        "writes": counts[0],
        "appended_bytes": appended,
        "window_bytes": round(window_bytes),
        "log_bytes_end": log_end,
        "log_bytes_max_after_2_windows": max(after_first) if after_first else None,
        "archived_bytes": archived,
        "checkpoints": cp_count,
        "checkpoint_bytes": checkpoints,
        "ratio_end": round(log_end / window_bytes, 2) if window_bytes else None,
        "ratio_max": round(max(after_first) / window_bytes, 2) if window_bytes and after_first else None,
        "goal_ratio": GOAL_RETENTION_RATIO,
        "met": bool(window_bytes) and log_end <= GOAL_RETENTION_RATIO * window_bytes,
    }


async def run_async(records: int, root: Path, quick: bool, window: float | None = None,
                    keep: Path | None = None) -> dict[str, Any]:
    """Both measurements under `root` (a `window` of None: 3 s quick, 10 s full; `keep`: see --history)."""
    join = await replica_join(root / "join", records, keep)
    shutil.rmtree(root / "join", ignore_errors=True)
    window = window or (3.0 if quick else 10.0)
    retention = await retention_disk(root / "retention", window, 32 << 10 if quick else 64 << 10,
                                     writers=4 if quick else 8)
    return {"replica_join": join, "retention": retention}


def run(quick: bool = False, harness: Any = None, records: int | None = None, work_dir: Path | None = None,
        keep: Path | None = None) -> dict[str, Any]:
    """The benchmark (quick: 100,000 records of history and a 3 s window; full: 10,000,000 and 10 s)."""
    n = records or (QUICK_RECORDS if quick else FULL_RECORDS)
    root = Path(tempfile.mkdtemp(prefix="tape-lifecycle-", dir=work_dir))
    try:
        return asyncio.run(run_async(n, root, quick, keep=keep))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def headline(r: dict[str, Any]) -> str:
    """One console line."""
    j, k = r["replica_join"], r["retention"]
    return (f"replica joins {j['records']:,} records of history: first query {j['first_query_s']:.1f} s "
            f"(goal ≤ {j['goal_first_query_s']:g} s {'met' if j['met'] else 'not met'}), checkpoint copy "
            f"{j['checkpoint_copy_mb_per_s']} MB/s vs plain copy {j['plain_copy_mb_per_s']} MB/s; --retain "
            f"{k['window_s']:g}s: log {k['ratio_end']}× a window after 5 windows (goal ≤ {k['goal_ratio']:g}× "
            f"{'met' if k['met'] else 'not met'}), checkpoints {k['checkpoint_bytes']:,} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--records", type=int)
    parser.add_argument("--dir", help="work directory (default: a temporary one)")
    parser.add_argument("--history", help="build the history here once and reuse it in later runs")
    args = parser.parse_args()
    result = run(args.quick, records=args.records, work_dir=Path(args.dir) if args.dir else None,
                 keep=Path(args.history) if args.history else None)
    print(json.dumps(result, indent=2))
    print(headline(result))


if __name__ == "__main__":
    main()
