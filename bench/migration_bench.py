"""Moving data to and from Convex: Convex snapshot ZIPs against Tape's own Avro snapshots.

``python -m bench.migration_bench [--quick]`` prints a JSON dict; `run`
returns it. Setup: a deployment of N documents (200,000; 20,000 with --quick)
in two tables, every "items" document referencing a "lists" document (so the
id mapping has references to rewrite). Then, each three times (medians):

* ``convex_export`` / ``tape_export``: `export_convex_zip` vs `export_snapshot`
  to a ZIP (the peer: Tape's own format, same documents, same machine, same run);
* ``convex_import`` / ``tape_import``: the matching imports into new data directories.

Ratios are Convex ZIP ÷ Tape Avro (docs/s), so > 1 means the Convex path is faster.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from history.convex_zip import export_convex_zip, import_convex_zip
from history.snapshot import export_snapshot, import_snapshot
from log.file_log import FileLog
from log.record import Record, Write
from projections.rebuild import rebuild
from values import encode_doc, new_id

CHUNK = 2000
REPEATS = 3


async def _build(data: Path, n: int) -> None:
    """A data directory with n/100 lists and the rest items pointing at them."""
    log = FileLog(data / "log", read_only=False)
    await log.open()
    try:
        lists = [new_id("lists") for _ in range(max(1, n // 100))]
        batch: list[Record] = []
        for i, lid in enumerate(lists):
            batch.append(Record(writes=[Write("lists", lid, encode_doc({"_id": lid, "_creationTime": 1.7e12 + i,
                                                                          "name": f"list {i}"}), None)]))
        for i in range(n - len(lists)):
            doc_id = new_id("items")
            doc = {"_id": doc_id, "_creationTime": 1.7e12 + i, "list_id": lists[i % len(lists)],
                   "text": f"item number {i}", "count": i, "done": bool(i % 2), "rank": i / 3}
            batch.append(Record(writes=[Write("items", doc_id, encode_doc(doc), None)]))
            if len(batch) >= CHUNK:
                await log.append(batch)
                batch = []
        if batch:
            await log.append(batch)
        projection = await rebuild(log, data / "projection", {"items": {"by_list": ["list_id"]}})
        projection.close()
    finally:
        await log.close()


async def _timed(step: Callable[[int], Awaitable[Any]]) -> float:
    times = []
    for i in range(REPEATS):
        t0 = time.perf_counter()
        await step(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def _measure(quick: bool, root: Path, documents: int | None) -> dict[str, Any]:
    n = documents or (20_000 if quick else 200_000)
    data = root / "data"
    await _build(data, n)
    out: dict[str, Any] = {"documents": n, "repeats": REPEATS}
    out["convex_export_s"] = await _timed(lambda i: export_convex_zip(data, root / f"c{i}.zip"))
    out["tape_export_s"] = await _timed(lambda i: export_snapshot(data, root / f"t{i}.zip"))
    out["convex_import_s"] = await _timed(lambda i: import_convex_zip(root / f"c{i}.zip", root / f"ci{i}"))
    out["tape_import_s"] = await _timed(lambda i: import_snapshot(root / f"t{i}.zip", root / f"ti{i}"))
    out["convex_zip_bytes"] = (root / "c0.zip").stat().st_size
    out["tape_zip_bytes"] = (root / "t0.zip").stat().st_size
    for kind in ("convex_export", "tape_export", "convex_import", "tape_import"):
        out[f"{kind}_docs_per_s"] = round(n / out[f"{kind}_s"]) if out[f"{kind}_s"] else 0
        out[f"{kind}_s"] = round(out[f"{kind}_s"], 3)
    out["export_ratio"] = round(out["convex_export_docs_per_s"] / max(1, out["tape_export_docs_per_s"]), 2)
    out["import_ratio"] = round(out["convex_import_docs_per_s"] / max(1, out["tape_import_docs_per_s"]), 2)
    return out


def run(quick: bool = False, documents: int | None = None) -> dict[str, Any]:
    """Build the synthetic deployment (`documents` of them if given) in a temporary directory, measure, clean up."""
    root = Path(tempfile.mkdtemp(prefix="tape-migrationbench-"))
    try:
        return asyncio.run(_measure(quick, root, documents))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def headline(r: dict[str, Any]) -> str:
    """One line for the console."""
    return (f"{r['documents']:,} docs: Convex ZIP export {r['convex_export_docs_per_s']:,}/s "
            f"({r['export_ratio']:.2f}× Tape Avro), import {r['convex_import_docs_per_s']:,}/s "
            f"({r['import_ratio']:.2f}× Tape Avro)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20,000 documents instead of 200,000")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
