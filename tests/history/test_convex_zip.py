"""Convex snapshot ZIPs: Tape → ZIP → Tape keeps every document; a hand-built Convex export imports with its ids."""
from __future__ import annotations

import base64
import hashlib
import os
import types
import zipfile
from pathlib import Path
from typing import Any

import orjson
import pytest

from history.convex_ids import decode_convex_id, encode_convex_id, tape_id
from history.convex_zip import NUMBERS_TABLE, export_convex_zip, import_convex_zip, is_convex_zip
from history.errors import SnapshotError
from projections.store import Projection
from values import decode_doc
from tests.history.test_snapshot import VALUES, documents, make_deployment, same_value, start, stop

INTERNAL = [bytes([i]) * 16 for i in range(1, 5)]


def real_convex_ids() -> None:
    """Ids taken from Convex's own repository decode (checksum, table number) and re-encode identically."""
    for text, number in (("k570e9j5cj1t5gf0zwf3tq3vkawxhqr0", 10009), ("nx70paj9d23tdhf40ch42r3zktyxrddc", 10031)):
        found = decode_convex_id(text)
        assert found is not None and found[0] == number
        assert encode_convex_id(*found) == text


def test_convex_ids_decode_and_reject() -> None:
    real_convex_ids()
    good = encode_convex_id(10001, INTERNAL[0])
    assert decode_convex_id(good) == (10001, INTERNAL[0])
    broken = good[:-1] + ("0" if good[-1] != "0" else "1")
    assert decode_convex_id(broken) is None  # checksum
    assert decode_convex_id("hello") is None and decode_convex_id(42) is None
    assert decode_convex_id(good.upper()) is None  # only the canonical spelling


def write_convex_zip(path: Path, tables: dict[str, list[dict[str, Any]]], numbers: dict[str, int],
                     uniform: bool = True, extra: dict[str, bytes] | None = None) -> None:
    """A ZIP laid out exactly as `npx convex export` writes one."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("README.md", "# Welcome to your Convex snapshot export!\n")
        zf.writestr("_tables/documents.jsonl",
                    b"".join(orjson.dumps({"name": t, "id": n}) + b"\n" for t, n in numbers.items()))
        for table, docs in tables.items():
            zf.writestr(f"{table}/documents.jsonl", b"".join(orjson.dumps(d) + b"\n" for d in docs))
            if uniform:
                zf.writestr(f"{table}/generated_schema.jsonl", '"uniform"\n')
        for name, data in (extra or {}).items():
            zf.writestr(name, data)


async def test_hand_built_convex_export_imports_with_ids_and_references(tmp_path: Path) -> None:
    list_id = encode_convex_id(10001, INTERNAL[0])
    item_ids = [encode_convex_id(10002, INTERNAL[1]), encode_convex_id(10002, INTERNAL[2])]
    storage_id = encode_convex_id(7, INTERNAL[3])
    misc_id = encode_convex_id(10003, INTERNAL[3])
    docs = {
        "lists": [{"_id": list_id, "_creationTime": 1700000000000.5, "name": "groceries"}],
        "items": [
            {"_id": item_ids[0], "_creationTime": 1700000000001.0, "list_id": list_id, "text": "milk",
             "done": False, "rank": 2.0, "tags": ["a"]},
            {"_id": item_ids[1], "_creationTime": 1700000000002.0, "list_id": list_id, "text": "eggs",
             "done": True},
        ],
        "misc": [{"_id": misc_id, "_creationTime": 1700000000003.0, "item": item_ids[1], "count": 12,
                  "blob": {"$bytes": "AAE="}, "nan": {"$float": "AAAAAAAA+H8="}, "photo": storage_id,
                  "nested": {"refs": [list_id, item_ids[0]]}}],
    }
    src = tmp_path / "convex_export.zip"
    write_convex_zip(src, docs, {"lists": 10001, "items": 10002, "misc": 10003},
                     extra={"_storage/documents.jsonl": orjson.dumps({"_id": storage_id, "size": 3}) + b"\n",
                            f"_storage/{storage_id}.png": b"png"})
    assert is_convex_zip(src)
    report = await import_convex_zip(src, tmp_path / "data")
    assert report.tables == {"items": 2, "lists": 1, "misc": 1}
    assert report.storage_skipped == 1 and report.notes
    got = documents(tmp_path / "data")
    lists_tape = tape_id("lists", INTERNAL[0])
    milk = decode_doc(got[tape_id("items", INTERNAL[1])]["raw"])
    eggs = decode_doc(got[tape_id("items", INTERNAL[2])]["raw"])
    assert decode_doc(got[lists_tape]["raw"])["_creationTime"] == 1700000000000.5
    assert milk["list_id"] == lists_tape and eggs["list_id"] == lists_tape  # references follow
    misc = decode_doc(got[tape_id("misc", INTERNAL[3])]["raw"])
    assert misc["item"] == tape_id("items", INTERNAL[2])
    assert misc["nested"]["refs"] == [lists_tape, tape_id("items", INTERNAL[1])]  # found at any depth
    assert misc["count"] == 12 and type(misc["count"]) is int  # int64 stays int64
    assert misc["blob"] == b"\x00\x01" and misc["nan"] != misc["nan"]
    assert misc["photo"] == storage_id  # a _storage reference is kept as it was
    assert eggs["done"] is True
    # the imported deployment serves the kitchen app: indexes on the references work
    rt = await start(tmp_path / "data", "kitchen")
    try:
        rows = rt.run_query("lists:items", {"list_id": lists_tape}).value
        assert sorted(r["text"] for r in rows) == ["eggs", "milk"]
        await rt.run_mutation("lists:add", {"list_id": lists_tape, "text": "bread"})
    finally:
        await stop(rt)
    # and back out: the very same Convex ids, references, numbers and values
    out = tmp_path / "back.zip"
    back = await export_convex_zip(tmp_path / "data", out)
    assert back.numbers == {"items": 10002, "lists": 10001, "misc": 10003}
    assert back.tables == {"items": 3, "lists": 1, "misc": 1}
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        assert {"README.md", "_tables/documents.jsonl", "lists/documents.jsonl", "items/generated_schema.jsonl"} <= names
        assert NUMBERS_TABLE not in " ".join(names)
        assert zf.read("items/generated_schema.jsonl") == b'"uniform"\n'
        tables_rows = [orjson.loads(x) for x in zf.read("_tables/documents.jsonl").splitlines()]
        assert tables_rows == [{"name": "lists", "id": 10001}, {"name": "items", "id": 10002},
                               {"name": "misc", "id": 10003}]
        misc_rows = [orjson.loads(x) for x in zf.read("misc/documents.jsonl").splitlines()]
        items = [orjson.loads(x) for x in zf.read("items/documents.jsonl").splitlines()]
        lists = [orjson.loads(x) for x in zf.read("lists/documents.jsonl").splitlines()]
    assert lists == docs["lists"] and misc_rows == docs["misc"]
    by_id = {d["_id"]: d for d in items}
    assert by_id[item_ids[0]] == docs["items"][0] and by_id[item_ids[1]] == docs["items"][1]
    bread = next(d for d in items if d["text"] == "bread")
    assert bread["list_id"] == list_id and decode_convex_id(bread["_id"])[0] == 10002


async def test_tape_to_zip_to_tape_keeps_every_document(tmp_path: Path) -> None:
    data = tmp_path / "data"
    before = await make_deployment(data)
    out = tmp_path / "export.zip"
    report = await export_convex_zip(data, out)
    assert report.tables == {"cells": len(before)}
    with zipfile.ZipFile(out) as zf:
        lines = [orjson.loads(x) for x in zf.read("cells/documents.jsonl").splitlines()]
        raw = zf.read("cells/documents.jsonl")
    assert all(decode_convex_id(d["_id"])[0] == 10001 for d in lines)
    assert b'"value":42' not in raw and b'"value":43' in raw  # int64 as a plain JSON integer (export format)
    await import_convex_zip(out, tmp_path / "again")
    after = documents(tmp_path / "again")
    assert after.keys() == before.keys()  # Tape ids survive the trip through Convex ids
    for doc_id, entry in before.items():
        assert same_value(decode_doc(after[doc_id]["raw"]), decode_doc(entry["raw"]))
    rt = await start(tmp_path / "again", "values")
    try:
        assert same_value(rt.run_query("values:get", {"key": "nested"}).value, VALUES["nested"])
    finally:
        await stop(rt)
    past = await export_convex_zip(data, tmp_path / "past.zip", at="offset:1")  # as of the second commit
    assert past.tables == {"cells": 2} and past.offset == 1


async def test_bad_convex_exports_are_refused_with_the_place(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    write_convex_zip(bad, {"lists": [{"_id": "not-an-id", "name": "x"}]}, {"lists": 10001})
    with pytest.raises(SnapshotError, match=r"lists/documents.jsonl: line 1: _id 'not-an-id'"):
        await import_convex_zip(bad, tmp_path / "d1")
    wrong_table = tmp_path / "wrong.zip"
    write_convex_zip(wrong_table, {"lists": [{"_id": encode_convex_id(10002, INTERNAL[0]), "name": "x"}]},
                     {"lists": 10001, "items": 10002})
    with pytest.raises(SnapshotError, match="belongs to table number 10002"):
        await import_convex_zip(wrong_table, tmp_path / "d2")
    with zipfile.ZipFile(tmp_path / "json.zip", "w") as zf:
        zf.writestr("lists/documents.jsonl", b'{"name": "ok"}\n{"name": \n')
    with pytest.raises(SnapshotError, match="line 2: not valid JSON"):
        await import_convex_zip(tmp_path / "json.zip", tmp_path / "d3")
    assert not any(p.name.startswith(".d") for p in tmp_path.iterdir())  # nothing half-built left
    assert not (tmp_path / "d1").exists()


async def test_old_exports_without_uniform_schema_read_numbers_as_floats(tmp_path: Path) -> None:
    src = tmp_path / "old.zip"
    write_convex_zip(src, {"t": [{"n": 3, "i": {"$integer": "AQAAAAAAAAA="}}]}, {}, uniform=False)
    report = await import_convex_zip(src, tmp_path / "data")
    assert report.tables == {"t": 1}
    (doc,) = [decode_doc(e["raw"]) for e in documents(tmp_path / "data").values()]
    assert doc["n"] == 3.0 and type(doc["n"]) is float and doc["i"] == 1 and type(doc["i"]) is int
    assert os.path.isdir(tmp_path / "data" / "log")


class MemoryBlobs:
    """A content-addressed blob store in memory, standing in for the data directory's blob store."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.data_dirs: list[Path] = []

    def put_file(self, source: Any) -> Any:
        data = source.read()
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        self.blobs[digest] = data
        return types.SimpleNamespace(sha256_base64=digest, size=len(data))


async def test_storage_files_go_to_the_blob_store_hook(tmp_path: Path) -> None:
    file_id = encode_convex_id(540, INTERNAL[0])
    other_id = encode_convex_id(540, INTERNAL[1])
    data = b"\x89PNG..."
    sha = base64.b64encode(hashlib.sha256(data).digest()).decode()
    meta = [{"_id": file_id, "_creationTime": 1700000000000.0, "sha256": sha, "size": len(data),
             "contentType": "image/png", "internalId": "5f2a"}]
    src = tmp_path / "with_files.zip"
    write_convex_zip(src, {"profiles": [{"_id": encode_convex_id(10001, INTERNAL[2]), "_creationTime": 1.0,
                                         "avatar": file_id}]}, {"profiles": 10001},
                     extra={"_storage/documents.jsonl": orjson.dumps(meta[0]) + b"\n",
                            f"_storage/{file_id}.png": data})
    blobs = MemoryBlobs()

    def factory(path: Path) -> MemoryBlobs:
        blobs.data_dirs.append(path)
        return blobs

    report = await import_convex_zip(src, tmp_path / "data", blob_store=factory)
    assert report.files == 1 and report.storage_skipped == 0 and not report.notes
    assert blobs.blobs == {sha: data} and len(blobs.data_dirs) == 1
    p = Projection(tmp_path / "data" / "projection")
    try:
        (stored,) = [decode_doc(r) for r in p.iter_documents("_storage")]
        (profile,) = [decode_doc(r) for r in p.iter_documents("profiles")]
    finally:
        p.close()
    assert stored == {"_id": tape_id("_storage", INTERNAL[0]), "_creationTime": 1700000000000.0, "sha256": sha,
                      "size": float(len(data)), "contentType": "image/png"}
    assert profile["avatar"] == stored["_id"]  # the reference follows the file
    bad = tmp_path / "bad_files.zip"
    write_convex_zip(bad, {}, {}, extra={
        "_storage/documents.jsonl": orjson.dumps({**meta[0], "_id": other_id}) + b"\n",
        f"_storage/{other_id}": b"not the same bytes", "t/documents.jsonl": b""})
    with pytest.raises(SnapshotError, match="do not match the sha256"):
        await import_convex_zip(bad, tmp_path / "data2", blob_store=factory)


async def test_export_refuses_table_names_convex_rejects(tmp_path: Path) -> None:
    src = tmp_path / "in.zip"
    write_convex_zip(src, {"café": [{"x": 1}]}, {})
    await import_convex_zip(src, tmp_path / "data")
    with pytest.raises(SnapshotError, match="table name.*'café'"):
        await export_convex_zip(tmp_path / "data", tmp_path / "out.zip")
    assert not (tmp_path / "out.zip").exists()
