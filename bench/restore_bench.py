"""Point-in-time restore and change export, measured on a synthetic deployment.

``python -m bench.restore_bench [--quick]`` prints a JSON dict; `run`
returns it. Setup: a FileLog of N records (1,000,000; 100,000 with --quick),
each inserting a message into a table with one user index, every other one
also editing an earlier message (like `bench.projection_bench`), and a
projection built from it with a checkpoint every N/10 records (what
``tape serve --checkpoint-interval`` leaves behind). Then:

* ``restore_mid_s``: `tape restore` of the data directory to offset N/2 — the
  log prefix copied and verified, the projection from the checkpoint just
  before plus the replay of the rest (target: <= 5 s for N = 1,000,000);
* ``restore_between_s``: the same to N/2 + N/20, half-way between two
  checkpoints (the average case for an arbitrary time);
* ``restore_no_checkpoints_s`` / ``replay_records_per_s``: the same restore to
  N/2 without checkpoints — a full replay (target: >= 100,000 records/s);
* ``export_jsonl_events_per_s`` / ``export_avro_events_per_s``: `tape stream`
  of the whole log to a file (target: >= 100,000 events/s for JSON lines);
* ``checkpoint_blocked_ms``: how long taking a checkpoint of the full
  projection blocks the event loop (after the off-loop memtable flush).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from values import encode_doc, new_id
from log.file_log import FileLog
from log.record import Record, Write

TABLE = "messages"
INDEXES = {TABLE: {"by_channel": ["channel"]}}
CHUNK = 4096


async def _write_log(path: Path, n: int) -> int:
    """Append `n` synthetic records to a new FileLog; returns the number of writes."""
    log = FileLog(path, read_only=False)
    await log.open()
    recent: list[tuple[str, bytes, float]] = []
    writes_total = 0
    t0 = 1.7e12
    try:
        for base in range(0, n, CHUNK):
            batch = []
            for i in range(base, min(base + CHUNK, n)):
                doc_id = new_id(TABLE)
                raw = encode_doc({"_id": doc_id, "_creationTime": t0 + i, "channel": f"c{i % 16}",
                                  "author": "bench", "body": f"message number {i}"})
                writes = [Write(TABLE, doc_id, raw, None)]
                if i % 2 and recent:
                    j = (i * 7919) % len(recent)
                    old_id, old_raw, ct = recent[j]
                    new_raw = encode_doc({"_id": old_id, "_creationTime": ct, "channel": f"c{(i + 1) % 16}",
                                          "author": "bench", "body": f"edited at {i}"})
                    writes.append(Write(TABLE, old_id, new_raw, old_raw))
                    recent[j] = (old_id, new_raw, ct)
                recent.append((doc_id, raw, t0 + i))
                if len(recent) > 20_000:
                    recent = recent[-10_000:]
                writes_total += len(writes)
                batch.append(Record(writes=writes, function="messages:send"))
            await log.append(batch)
    finally:
        await log.close()
    return writes_total


async def _project_with_checkpoints(data: Path, n: int, spacing: int) -> dict[str, Any]:
    from projections.checkpoints import take_checkpoint
    from projections.rebuild import catch_up
    from projections.store import Projection
    log = FileLog(data / "log", read_only=True)
    await log.open()
    projection = Projection(data / "projection", INDEXES)
    started = time.perf_counter()
    blocked = []
    try:
        for upto in range(spacing - 1, n, spacing):
            await catch_up(projection, log, upto)
            await asyncio.to_thread(projection.flush)  # as `checkpoint_live` does, off the loop
            info = take_checkpoint(projection, data, keep=100)
            if info is not None:
                blocked.append(info.blocked_ms)
        await catch_up(projection, log)
        elapsed = time.perf_counter() - started
    finally:
        projection.close()
        await log.close()
    return {"build_s": round(elapsed, 2), "build_records_per_s": round(n / elapsed),
            "checkpoints": len(blocked), "checkpoint_blocked_ms": round(max(blocked), 1) if blocked else None,
            "checkpoint_blocked_ms_median": round(sorted(blocked)[len(blocked) // 2], 1) if blocked else None}


async def _restore(data: Path, dest: Path, offset: int, use_checkpoints: bool = True) -> dict[str, Any]:
    from history.points import Point
    from history.restore import restore_to_dir
    started = time.perf_counter()
    report = await restore_to_dir(str(data), Point("offset", offset), dest, use_checkpoints=use_checkpoints)
    elapsed = time.perf_counter() - started
    out = {"seconds": round(elapsed, 3), "log_copy_s": round(report.log_seconds, 3),
           "base": report.projection.base, "replayed": report.projection.replayed,
           "replay_s": round(report.projection.replay_seconds, 3)}
    shutil.rmtree(dest, ignore_errors=True)
    return out


async def _export(data: Path, out: Path, fmt: str) -> dict[str, Any]:
    from log.changes import TableFilter
    from history.sinks import AvroSink, JsonlSink
    from history.stream import run_stream
    log = FileLog(data / "log", read_only=True)
    await log.open()
    try:
        with open(out, "wb") as f:
            sink = AvroSink(f, TableFilter(), "json") if fmt == "avro" else JsonlSink(f, TableFilter(), "json")
            stats = await run_stream(log, 0, sink)
            await sink.close()
    finally:
        await log.close()
    size = out.stat().st_size
    out.unlink()
    return {"events": stats.events, "seconds": round(stats.seconds, 3),
            "events_per_s": round(stats.events_per_second), "bytes": size}


async def _measure(quick: bool, root: Path) -> dict[str, Any]:
    n = 100_000 if quick else 1_000_000
    spacing = n // 10
    data = root / "data"
    data.mkdir(parents=True)
    started = time.perf_counter()
    writes = await _write_log(data / "log", n)
    setup = {"records": n, "writes": writes, "write_log_s": round(time.perf_counter() - started, 2),
             "checkpoint_every": spacing}
    setup.update(await _project_with_checkpoints(data, n, spacing))
    mid = n // 2
    between = n // 2 + spacing // 2
    with_cp = await _restore(data, root / "r1", mid)
    between_cp = await _restore(data, root / "r2", between)
    full = await _restore(data, root / "r3", mid, use_checkpoints=False)
    jsonl = await _export(data, root / "events.jsonl", "jsonl")
    avro = await _export(data, root / "events.avro", "avro")
    replay_rate = full["replayed"] / full["replay_s"] if full["replay_s"] else 0.0
    return {
        **setup,
        "restore_mid_offset": mid,
        "restore_mid_s": with_cp["seconds"],
        "restore_mid": with_cp,
        "restore_between_offset": between,
        "restore_between_s": between_cp["seconds"],
        "restore_between": between_cp,
        "restore_no_checkpoints_s": full["seconds"],
        "restore_no_checkpoints": full,
        "replay_records_per_s": round(replay_rate),
        "export_jsonl_events_per_s": jsonl["events_per_s"],
        "export_jsonl": jsonl,
        "export_avro_events_per_s": avro["events_per_s"],
        "export_avro": avro,
        "targets": {"restore_mid_s": 5.0 if not quick else None, "replay_records_per_s": 100_000,
                    "export_events_per_s": 100_000},
        "meets_restore_target": (with_cp["seconds"] <= 5.0) if not quick else None,
        "meets_replay_target": replay_rate >= 100_000,
        "meets_export_target": jsonl["events_per_s"] >= 100_000,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Build the synthetic deployment in a temporary directory, measure, clean up."""
    root = Path(tempfile.mkdtemp(prefix="tape-restorebench-"))
    gc.collect()
    gc.freeze()
    try:
        return asyncio.run(_measure(quick, root))
    finally:
        gc.unfreeze()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100,000 records instead of 1,000,000")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
