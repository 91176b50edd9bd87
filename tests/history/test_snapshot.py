"""Snapshots: `export_snapshot` writes Avro + manifest.json, `import_snapshot` builds a deployment from them."""
from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastavro import reader as avro_reader

from engine.app import App
from engine.runtime import Runtime
from history.errors import SnapshotError
from history.snapshot import export_snapshot, import_snapshot
from log.file_log import FileLog
from projections.checkpoints import take_checkpoint
from projections.store import Projection
from values import decode_doc, from_wire

APPS = Path(__file__).resolve().parents[1] / "apps"

VALUES = {
    "int": 42,
    "big": -(1 << 62),
    "float": 2.5,
    "whole_float": 3.0,
    "neg_zero": -0.0,
    "nan": float("nan"),
    "inf": float("-inf"),
    "bytes": b"\x00\xffbin",
    "nested": {"a": [1, 2.0, None, True, "s", {"b": b"x"}], "empty": {}},
    "text": "ünïcødé \n \"quoted\"",
}


async def start(data: Path, app_name: str) -> Runtime:
    app = App.load(APPS / app_name)
    log = FileLog(data / "log")
    await log.open()
    runtime = Runtime(app, log, Projection(data / "projection", app.schema.index_catalog()))
    await runtime.start()
    return runtime


async def stop(runtime: Runtime) -> None:
    await runtime.stop()
    runtime.projection.close()
    await runtime.log.close()


def documents(data: Path) -> dict[str, dict[str, Any]]:
    """Every non-system document of a data directory's projection, by id (raw storage bytes compared too)."""
    p = Projection(data / "projection")
    try:
        return {decode_doc(raw)["_id"]: {"table": t, "raw": raw}
                for t in p.tables() if not t.startswith("_") for raw in p.iter_documents(t)}
    finally:
        p.close()


def same_value(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if type(a) is dict:
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return bool(a == b)


async def make_deployment(data: Path) -> dict[str, Any]:
    """Cells holding every kind of value (and an update) in the values app; returns the documents."""
    rt = await start(data, "values")
    for key, value in VALUES.items():
        await rt.run_mutation("values:put", {"key": key, "value": value})
    await rt.run_mutation("values:put", {"key": "int", "value": 43})  # an update
    await rt.run_mutation("values:put", {"key": "gone", "value": 1})
    await stop(rt)
    return documents(data)


async def test_round_trip_keeps_every_document(tmp_path: Path) -> None:
    data = tmp_path / "data"
    before = await make_deployment(data)
    report = await export_snapshot(data, tmp_path / "snap")
    assert report.tables == {"cells": len(before)}
    manifest = orjson.loads((tmp_path / "snap" / "manifest.json").read_bytes())
    assert manifest["format"] == "tape.export" and manifest["position"]["offset"] == report.offset
    assert manifest["tables"] == [{"name": "cells", "file": "cells.avro", "documents": len(before),
                                   "indexes": {"by_key": ["key"]}}]
    assert manifest["indexes"] == {"cells": {"by_key": ["key"]}}
    # standard Avro: any reader gets _id, _creationTime and the Convex JSON document
    with open(tmp_path / "snap" / "cells.avro", "rb") as f:
        rows = list(avro_reader(f))
    assert {r["_id"] for r in rows} == set(before)
    for row in rows:
        doc = from_wire(orjson.loads(row["doc"]))
        assert doc["_creationTime"] == row["_creationTime"]
        assert same_value(doc, decode_doc(before[row["_id"]]["raw"]))
    imported = await import_snapshot(tmp_path / "snap", tmp_path / "new")
    assert imported.tables == {"cells": len(before)}
    after = documents(tmp_path / "new")
    assert after.keys() == before.keys()
    for doc_id, entry in before.items():
        assert after[doc_id]["table"] == entry["table"]
        assert same_value(decode_doc(after[doc_id]["raw"]), decode_doc(entry["raw"]))
    # the new deployment's log and projection agree, its indexes work, and it accepts new writes
    rt = await start(tmp_path / "new", "values")
    try:
        assert rt.projection.applied_offset == rt.log.next_offset() - 1
        got = rt.run_query("values:get", {"key": "nested"}).value
        assert same_value(got, VALUES["nested"])
        assert rt.run_query("values:get", {"key": "int"}).value == 43
        await rt.run_mutation("values:put", {"key": "fresh", "value": 1})
    finally:
        await stop(rt)


async def test_export_is_consistent_and_can_go_back_in_time(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rt = await start(data, "values")
    offsets = []
    for i in range(12):
        offsets.append((await rt.run_mutation("values:put", {"key": f"k{i % 4}", "value": i})).offset)
        if i == 5:
            take_checkpoint(rt.projection, data)
    # exported while the deployment runs (its projection is locked): built from checkpoint + log
    live = await export_snapshot(data, tmp_path / "live.zip")
    assert live.offset == offsets[-1] and live.tables == {"cells": 4}
    past = await export_snapshot(data, tmp_path / "past", at=f"offset:{offsets[2]}")
    assert past.tables == {"cells": 3}
    await stop(rt)
    with zipfile.ZipFile(tmp_path / "live.zip") as zf:
        assert sorted(zf.namelist()) == ["cells.avro", "manifest.json"]
    await import_snapshot(tmp_path / "live.zip", tmp_path / "from-zip")
    rt = await start(tmp_path / "from-zip", "values")
    try:
        assert [rt.run_query("values:get", {"key": f"k{i}"}).value for i in range(4)] == [8, 9, 10, 11]
    finally:
        await stop(rt)
    await import_snapshot(tmp_path / "past", tmp_path / "from-past")
    rt = await start(tmp_path / "from-past", "values")
    try:
        assert [rt.run_query("values:get", {"key": f"k{i}"}).value for i in range(4)] == [0, 1, 2, None]
    finally:
        await stop(rt)


async def test_export_import_errors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await make_deployment(data)
    await export_snapshot(data, tmp_path / "snap")
    with pytest.raises(SnapshotError, match="exists"):
        await export_snapshot(data, tmp_path / "snap")
    with pytest.raises(SnapshotError, match="not a Tape data directory"):
        await export_snapshot(tmp_path / "snap", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(SnapshotError, match="not empty"):
        await import_snapshot(tmp_path / "snap", tmp_path / "full")
    with pytest.raises(SnapshotError, match="manifest"):
        await import_snapshot(tmp_path / "full", tmp_path / "y")
    # a tampered count is noticed and nothing is left behind
    manifest = orjson.loads((tmp_path / "snap" / "manifest.json").read_bytes())
    manifest["tables"][0]["documents"] += 1
    (tmp_path / "snap" / "manifest.json").write_bytes(orjson.dumps(manifest))
    with pytest.raises(SnapshotError, match="manifest says"):
        await import_snapshot(tmp_path / "snap", tmp_path / "z")
    assert not (tmp_path / "z").exists()
    assert not [p for p in tmp_path.iterdir() if ".importing-" in p.name or ".exporting-" in p.name]
    assert not [p for p in data.iterdir() if p.name.startswith(".export-")]
