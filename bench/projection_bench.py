"""Projection throughput: the raw RocksDB put floor vs replaying log records.

``python -m bench.projection_bench [--quick]`` prints a JSON dict; `run`
returns it. The synthetic records each insert a document into a table with one
user index, and every other record also updates an earlier document.

* ``replay``: `projections.rebuild` from an in-memory log (batches of 4096, as
  the file log yields them) into a fresh projection — the rebuild path, which
  applies 2048-record atomic batches.
* ``apply``: `Projection.apply` called directly with 1000-record batches (the
  live path: one synchronous atomic write per call).

``*_per_cpu_s`` divide by the calling thread's CPU time rather than wall time:
on a shared, busy machine (see ``loadavg_1m``) they estimate the rate on an
idle core, while the wall-clock rates include time spent waiting for a CPU.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import tempfile
import time
from typing import Any

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from values import encode_doc, new_id
from log.record import Record, Write
from projections.rebuild import rebuild
from projections.store import Projection

BATCH = 1000
TABLE = "messages"
INDEXES = {TABLE: {"by_channel": ["channel"]}}


def _raw_put_rate(path: str, n: int) -> float:
    """Puts/s of ~100 byte values in WriteBatches of `BATCH` (WAL off, like the projection)."""
    db = Rdict(path, Options(raw_mode=True))
    wo = WriteOptions()
    wo.disable_wal = True
    value = os.urandom(100)
    keys = [b"k%012d" % i for i in range(n)]
    start = time.perf_counter()
    for i in range(0, n, BATCH):
        wb = WriteBatch(raw_mode=True)
        for key in keys[i:i + BATCH]:
            wb.put(key, value)
        db.write(wb, wo)
    elapsed = time.perf_counter() - start
    db.close()
    return n / elapsed


def make_records(n: int) -> list[Record]:
    """`n` records: each inserts a message; odd ones also edit an earlier message."""
    records: list[Record] = []
    docs: list[tuple[str, bytes]] = []
    t0 = 1.7e12
    for i in range(n):
        doc_id = new_id(TABLE)
        doc = {"_id": doc_id, "_creationTime": t0 + i, "channel": f"c{i % 16}", "author": "bench",
               "body": f"message number {i}"}
        raw = encode_doc(doc)
        writes = [Write(TABLE, doc_id, raw, None)]
        if i % 2 and docs:
            j = (i * 7919) % len(docs)
            old_id, old_raw = docs[j]
            old = {"_id": old_id, "_creationTime": t0 + j, "channel": f"c{(j + 1) % 16}", "author": "bench",
                   "body": f"edited at {i}"}
            new_raw = encode_doc(old)
            writes.append(Write(TABLE, old_id, new_raw, old_raw))
            docs[j] = (old_id, new_raw)
        docs.append((doc_id, raw))
        records.append(Record(writes=writes, offset=i, ts=1_700_000_000_000_000_000 + i))
    return records


class _MemoryLog:
    """Just enough of the log interface for `rebuild`: ``read(start, end)``."""

    def __init__(self, records: list[Record]) -> None:
        self._records = records

    async def read(self, start: int, end: int | None = None, batch: int = 4096):  # type: ignore[no-untyped-def]
        end = len(self._records) if end is None else min(end, len(self._records))
        for i in range(start, end, batch):
            yield self._records[i:min(i + batch, end)]


def _apply_rate(path: str, records: list[Record]) -> tuple[float, float]:
    """(records/s through `Projection.apply` in batches of `BATCH`, records per CPU-second)."""
    proj = Projection(path, INDEXES)
    start = time.perf_counter()
    cpu = time.thread_time()
    for i in range(0, len(records), BATCH):
        proj.apply(records[i:i + BATCH])
    cpu = time.thread_time() - cpu
    elapsed = time.perf_counter() - start
    assert proj.applied_offset == len(records) - 1
    proj.close()
    return len(records) / elapsed, len(records) / cpu


def _replay_rate(path: str, records: list[Record]) -> tuple[float, float, float]:
    """(records/s rebuilding, records/s including the final flush, records per CPU-second)."""

    async def go() -> tuple[float, float, float]:
        start = time.perf_counter()
        cpu = time.thread_time()
        proj = await rebuild(_MemoryLog(records), path, INDEXES)
        cpu = time.thread_time() - cpu
        replayed = time.perf_counter() - start
        proj.flush()
        flushed = time.perf_counter() - start
        assert proj.applied_offset == len(records) - 1
        proj.close()
        return len(records) / replayed, len(records) / flushed, len(records) / cpu

    return asyncio.run(go())


def run(quick: bool = False) -> dict[str, Any]:
    """Measure the raw put rate, the replay (rebuild) rate and the apply rate."""
    n = 20_000 if quick else 200_000
    root = tempfile.mkdtemp(prefix="tape-projbench-")
    records = make_records(n)
    writes = sum(len(r.writes) for r in records)
    # The pre-built records stand in for a log read lazily; keep the collector
    # from rescanning them on every full collection.
    gc.collect()
    gc.freeze()
    try:
        raw = _raw_put_rate(os.path.join(root, "raw"), max(n, writes))
        _apply_rate(os.path.join(root, "warmup"), records[:n // 10])  # warm caches and the allocator
        load_before = os.getloadavg()[0]
        replay, replay_flushed, replay_cpu = _replay_rate(os.path.join(root, "replay"), records)
        apply, apply_cpu = _apply_rate(os.path.join(root, "apply"), records)
        load_after = os.getloadavg()[0]
    finally:
        gc.unfreeze()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "records": n,
        "writes": writes,
        "raw_puts_per_s": round(raw),
        "replay_records_per_s": round(replay),
        "replay_records_per_s_incl_flush": round(replay_flushed),
        "replay_writes_per_s": round(replay * writes / n),
        "replay_records_per_cpu_s": round(replay_cpu),
        "apply_records_per_s": round(apply),
        "apply_records_per_cpu_s": round(apply_cpu),
        "loadavg_1m": [round(load_before, 2), round(load_after, 2)],
        "cpus": os.cpu_count(),
        "ratio_replay_records_to_raw_puts": round(replay / raw, 3),
        "target_records_per_s": 100_000,
        "meets_target": replay >= 100_000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20k records instead of 200k")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
