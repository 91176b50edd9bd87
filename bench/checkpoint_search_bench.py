"""Opening a projection checkpoint with a full-text index: carried by the checkpoint vs rebuilt.

``python -m bench.checkpoint_search_bench [--quick] [--docs N]`` (or ``tape
bench --only checkpoint``) prints a JSON dict; `run` returns it. Setup: a projection of N messages (100,000; 5,000
with --quick; 8 words each from a 2,000-word vocabulary) with one search
index, and one checkpoint of it (`take_checkpoint`, which carries the index).
Then, each `REPEAT` times (the median is reported):

* ``open_carried_s``: copy the checkpoint to a new directory
  (`copy_projection`), open it as a `Projection` and answer a first search —
  the index comes with the checkpoint;
* ``open_rebuilt_s``: the same with the checkpoint's ``search/`` removed (a
  checkpoint taken before they were carried): opening rebuilds the index
  from the projection's documents before the search answers;
* ``checkpoint_s`` / ``checkpoint_blocked_ms``: taking the checkpoint (the
  search worker's commit and hard links included), and the part of it a live
  node runs on its event loop (the RocksDB checkpoint and queueing the copy).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.db import DatabaseReader, Transaction
from engine.execution import drive
from engine.limits import DEFAULT_LIMITS
from engine.schema import define_schema, define_table
from log.record import Record, Write
from projections.checkpoints import copy_projection, take_checkpoint
from projections.store import Projection
from values import encode_doc, new_id

SCHEMA = define_schema({"messages": define_table().search_index("search_body", search_field="body",
                                                                filter_fields=["channel"])})
REPEAT = 3
BATCH = 1000


def _words(n: int = 2000) -> list[str]:
    rng = random.Random(1)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return sorted({"".join(rng.choices(letters, k=rng.randint(4, 9))) for _ in range(n)})


def _build(path: Path, docs: int) -> Projection:
    rng = random.Random(2)
    words = _words()
    projection = Projection(path, SCHEMA.index_catalog())
    projection.bulk_search(True)
    for base in range(0, docs, BATCH):
        records = []
        for i in range(base, min(base + BATCH, docs)):
            doc_id = new_id("messages")
            raw = encode_doc({"_id": doc_id, "_creationTime": 1.7e12 + i, "channel": f"c{i % 8}",
                              "body": " ".join(rng.choices(words, k=8))})
            records.append(Record(writes=[Write("messages", doc_id, raw, None)], offset=i, ts=1_000 + i))
        projection.apply(records)
    projection.bulk_search(False)
    return projection


def _first_search(projection: Projection, text: str) -> int:
    tx = Transaction(projection, SCHEMA, DEFAULT_LIMITS, None, writable=False)
    query = DatabaseReader(tx).query("messages").with_search_index("search_body", lambda q: q.search("body", text))
    return len(drive(query.take(10), "bench"))


def _open_and_search(checkpoint_dir: Path, dest: Path, carried: bool, text: str) -> float:
    started = time.perf_counter()
    copy_projection(checkpoint_dir, dest)
    if not carried:
        shutil.rmtree(dest / "search", ignore_errors=True)
    projection = Projection(dest, SCHEMA.index_catalog())
    try:
        found = _first_search(projection, text)
        elapsed = time.perf_counter() - started
        assert projection.search_progress()["messages.search_body"]["building"] is None
    finally:
        projection.close()
    assert found > 0, "the first search found nothing"
    return elapsed


def run(docs: int = 100_000, work: Path | None = None) -> dict[str, Any]:
    """Measure (see the module docstring); returns the results."""
    own = work is None
    root = Path(tempfile.mkdtemp(prefix="tape-ckpt-search-")) if own else work
    try:
        data = root / "data"
        t0 = time.perf_counter()
        projection = _build(data / "projection", docs)
        build_s = time.perf_counter() - t0
        words = _words()
        text = f"{words[7]} {words[11][:3]}"
        try:
            projection.flush()  # what `checkpoint_live` does off the loop first
            projection.flush_search()
            t0 = time.perf_counter()
            info = take_checkpoint(projection, data)
            checkpoint_s = time.perf_counter() - t0
        finally:
            projection.close()
        assert info is not None and info.search == {"messages.search_body": info.offset}
        carried, rebuilt = [], []
        for i in range(REPEAT):  # interleaved, so drift on a noisy machine hits both alike
            carried.append(_open_and_search(info.projection_dir, root / f"carried-{i}", True, text))
            rebuilt.append(_open_and_search(info.projection_dir, root / f"rebuilt-{i}", False, text))
            shutil.rmtree(root / f"carried-{i}")
            shutil.rmtree(root / f"rebuilt-{i}")
        search_bytes = sum(p.stat().st_size for p in (info.projection_dir / "search").rglob("*") if p.is_file())
        result = {
            "docs": docs,
            "projection_build_s": round(build_s, 3),
            "checkpoint_s": round(checkpoint_s, 3),
            "checkpoint_blocked_ms": info.blocked_ms,
            "checkpoint_search_bytes": search_bytes,
            "open_carried_s": round(statistics.median(carried), 4),
            "open_rebuilt_s": round(statistics.median(rebuilt), 4),
            "open_carried_runs_s": [round(x, 4) for x in carried],
            "open_rebuilt_runs_s": [round(x, 4) for x in rebuilt],
        }
        result["speedup"] = round(result["open_rebuilt_s"] / max(result["open_carried_s"], 1e-9), 1)
        return result
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


def headline(r: dict[str, Any]) -> str:
    """One line for `tape bench`'s console."""
    return (f"{r['docs']:,} documents: open + first search {r['open_carried_s']:.3f} s with the index carried vs "
            f"{r['open_rebuilt_s']:.3f} s rebuilt ({r['speedup']:g}×)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5,000 documents instead of 100,000")
    parser.add_argument("--docs", type=int, help="documents in the projection")
    args = parser.parse_args()
    docs = args.docs or (5_000 if args.quick else 100_000)
    print(json.dumps(run(docs), indent=2))


if __name__ == "__main__":
    main()
