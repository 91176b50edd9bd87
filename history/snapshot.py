"""Consistent snapshots of every table as Avro files (`tape export`), and new deployments from them (`tape import`).

A snapshot is every table at one log position (the end of the log, or a past
point; a server may keep running: the log is read as a follower and the state
is built from the nearest checkpoint, or the projection itself when no server
holds it, plus a replay). It is a directory (or a zip of one) holding

* ``<table>.avro`` — an Avro object container file per table (standard Avro,
  deflate codec), records of the schema `DOC_SCHEMA`::

      {"_id": string, "_creationTime": double, "doc": string}

  where ``doc`` is the whole document (with ``_id`` and ``_creationTime``) as
  Convex JSON (`values.to_wire`), so every value round-trips exactly;
* ``manifest.json`` — the format, the position (offset, ts, time), each
  table's file, document count and indexes, the full index catalog and the
  Avro schema;
* ``blobs/<sha256 hex>`` — the bytes of every stored file (the `_storage`
  table, which is exported like user tables).

`import_snapshot` writes the documents as log records (``function: "_import"``,
up to `IMPORT_BATCH_DOCS` documents each) into a new FileLog and replays them
into a new projection with the snapshot's indexes; ids and ``_creationTime``
values are kept.
"""
from __future__ import annotations

import os
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import orjson
from fastavro import parse_schema
from fastavro import reader as avro_reader
from fastavro import writer as avro_writer

from history.build import projection_at
from history.errors import SnapshotError
from history.import_log import append_table, build_projection_from, new_work_dir
from history.points import format_ns
from history.progress import Reporter
from history.sources import is_data_dir
from log import FileLog
from log.directory import fsync_dir, move_into_place
from log.record import Record, Write
from storage import BLOBS_DIR, STORAGE_TABLE, BlobError, BlobMissing, LocalBlobStore, key_of
from values import decode_doc, encode_doc, from_wire, to_wire

FORMAT = "tape.export"
VERSION = 1
MANIFEST = "manifest.json"
IMPORT_BATCH_DOCS = 1000
IMPORT_BATCH_BYTES = 4 << 20
IMPORT_FUNCTION = "_import"

DOC_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Document",
    "namespace": "tape.export.v1",
    "doc": "One document of a Tape table.",
    "fields": [
        {"name": "_id", "type": "string"},
        {"name": "_creationTime", "type": "double"},
        {"name": "doc", "type": "string", "doc": "the whole document as Convex JSON"},
    ],
}


def _table_file(table: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in table)
    return f"{safe}.avro"


# ----------------------------------------------------------------- export


@dataclass
class ExportReport:
    """What an export wrote."""

    out: Path
    offset: int
    ts: int
    tables: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    base: str = ""
    blobs: int = 0  # stored files' blobs written under blobs/

    @property
    def documents(self) -> int:
        """How many documents were exported."""
        return sum(self.tables.values())


def _avro_rows(projection: Any, table: str, counter: list[int]) -> Iterator[dict[str, Any]]:
    dumps = orjson.dumps
    for raw in projection.iter_documents(table):
        doc = decode_doc(raw)
        counter[0] += 1
        yield {"_id": doc["_id"], "_creationTime": float(doc["_creationTime"]), "doc": dumps(to_wire(doc)).decode()}


async def export_snapshot(data_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, at: str | None = None,
                          include_system: bool = False, codec: str = "deflate",
                          reporter: Reporter | None = None) -> ExportReport:
    """Write a snapshot of `data_dir` (as of `at`, default the end of the log) to `out` (a directory or .zip)."""
    reporter = reporter or Reporter()
    started = time.perf_counter()
    data = Path(data_dir).absolute()
    target = Path(out).absolute()
    as_zip = target.suffix.lower() == ".zip"
    if not is_data_dir(data):
        raise SnapshotError(f"{data} is not a Tape data directory")
    if target.exists() and (as_zip or not target.is_dir() or any(target.iterdir())):
        raise SnapshotError(f"{target} exists: export into a new directory or file")
    async with projection_at(data, at, reporter) as view:
        projection, upto, scratch = view.projection, view.upto, view.scratch
        report = ExportReport(target, upto, view.ts, base=view.build.base)
        catalog = projection.indexes
        tables = sorted(set(projection.tables()) | set(catalog))
        if not include_system:
            tables = [t for t in tables if not t.startswith("_") or t == STORAGE_TABLE]  # files are data
        files_dir = scratch / "out" if as_zip else target.parent / f".{target.name}.exporting-{os.getpid()}"
        shutil.rmtree(files_dir, ignore_errors=True)
        files_dir.mkdir(parents=True)
        schema = parse_schema(DOC_SCHEMA)
        entries = []
        used_names: set[str] = set()
        for table in tables:
            name = _table_file(table)
            while name in used_names:
                name = "_" + name
            used_names.add(name)
            count = [0]
            task = reporter.task(f"export {table}", projection.count(table))
            with open(files_dir / name, "wb") as f:
                avro_writer(f, schema, _avro_rows(projection, table, count), codec=codec,
                            metadata={"tape.table": table, "tape.offset": str(upto)})
                f.flush()
                os.fsync(f.fileno())
            task.update(count[0])
            task.finish()
            report.tables[table] = count[0]
            entries.append({"name": table, "file": name, "documents": count[0],
                            "indexes": catalog.get(table, {})})
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "created_ns": time.time_ns(),
            "source": str(data),
            "position": {"offset": upto, "next_offset": upto + 1, "ts": report.ts,
                         "time": format_ns(report.ts) if report.ts else None},
            "document_encoding": "convex-json",
            "tables": entries,
            "indexes": catalog,
            "avro_schema": DOC_SCHEMA,
        }
        if STORAGE_TABLE in tables:
            report.blobs = export_blobs(projection, LocalBlobStore(data / BLOBS_DIR), files_dir / BLOBS_DIR,
                                        reporter)
            manifest["blobs"] = {"directory": BLOBS_DIR, "count": report.blobs}
        (files_dir / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        fsync_dir(files_dir)
        if as_zip:
            tmp_zip = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_STORED) as zf:
                for entry in sorted(files_dir.rglob("*")):
                    if entry.is_file():
                        zf.write(entry, entry.relative_to(files_dir).as_posix())
            os.replace(tmp_zip, target)
        else:
            if target.exists():
                target.rmdir()
            os.rename(files_dir, target)
        fsync_dir(target.parent)
    report.seconds = time.perf_counter() - started
    return report


def export_blobs(projection: Any, store: LocalBlobStore, out: Path, reporter: Reporter) -> int:
    """Copy the blob of every `_storage` document to ``out/<sha256 hex>``; SnapshotError naming a missing one."""
    out.mkdir(exist_ok=True)
    task = reporter.task("export file blobs", projection.count(STORAGE_TABLE))
    copied = 0
    for n, raw in enumerate(projection.iter_documents(STORAGE_TABLE), 1):
        doc = decode_doc(raw)
        try:
            key = key_of(doc)
            target = out / key
            if not target.exists():
                with store.open(key) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                    dst.flush()
                    os.fsync(dst.fileno())
                copied += 1
        except BlobError as exc:
            raise SnapshotError(f"stored file {doc['_id']}: {exc} (tape doctor lists missing blobs)") from None
        task.update(n)
    task.finish()
    fsync_dir(out)
    return copied


def import_blobs(snapshot: "_Snapshot", entry: dict[str, Any], store: LocalBlobStore, reporter: Reporter) -> int:
    """Store the blob of every imported `_storage` document, checking its bytes hash to its sha256."""
    task = reporter.task("import file blobs", entry.get("documents"))
    stored: set[str] = set()
    with snapshot.open(entry["file"]) as f:
        for n, row in enumerate(avro_reader(f), 1):
            doc = from_wire(orjson.loads(row["doc"]), f"{STORAGE_TABLE}/{row['_id']}")
            try:
                key = key_of(doc)
                if key not in stored:
                    try:
                        blob = snapshot.open(f"{BLOBS_DIR}/{key}")
                    except (KeyError, FileNotFoundError):
                        raise BlobMissing(f"the snapshot has no {BLOBS_DIR}/{key}") from None
                    with blob:
                        info = store.put_file(blob)
                    if info.key != key:
                        store.delete(info.key)
                        raise BlobError(f"{BLOBS_DIR}/{key} is damaged (its bytes hash to {info.key})")
                    stored.add(key)
            except BlobError as exc:
                raise SnapshotError(f"stored file {row['_id']}: {exc}") from None
            task.update(n)
    task.finish()
    return len(stored)


# ----------------------------------------------------------------- import


class _Snapshot:
    """A snapshot directory or zip, opened for reading."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_file():
            try:
                self.zip = zipfile.ZipFile(path)
            except zipfile.BadZipFile:
                raise SnapshotError(f"{path}: not a snapshot directory or zip file") from None
        elif not path.is_dir():
            raise SnapshotError(f"{path} does not exist")
        try:
            self.manifest = orjson.loads(self.read_bytes(MANIFEST))
        except (KeyError, FileNotFoundError):
            raise SnapshotError(f"{path}: no {MANIFEST} (not a tape export)") from None
        if self.manifest.get("format") != FORMAT:
            raise SnapshotError(f"{path}: {MANIFEST} is not a {FORMAT} manifest")
        if int(self.manifest.get("version", 0)) > VERSION:
            raise SnapshotError(f"{path}: snapshot format version {self.manifest.get('version')} is newer than this "
                                f"build reads ({VERSION}); upgrade Tape")

    def read_bytes(self, name: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(name)
        return (self.path / name).read_bytes()

    def open(self, name: str) -> BinaryIO:
        if self.zip is not None:
            return self.zip.open(name)  # type: ignore[return-value]
        return open(self.path / name, "rb")

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


@dataclass
class ImportReport:
    """What an import built."""

    data: Path
    tables: dict[str, int] = field(default_factory=dict)
    records: int = 0
    seconds: float = 0.0
    blobs: int = 0  # stored files' blobs copied in

    @property
    def documents(self) -> int:
        """How many documents were imported."""
        return sum(self.tables.values())


def _import_records(snapshot: _Snapshot, entry: dict[str, Any]) -> Iterator[tuple[Record, int]]:
    """Records of up to IMPORT_BATCH_DOCS documents of one table, with their document counts."""
    table = entry["name"]
    writes: list[Write] = []
    size = 0
    with snapshot.open(entry["file"]) as f:
        for row in avro_reader(f):
            doc = from_wire(orjson.loads(row["doc"]), f"{table}/{row['_id']}")
            if doc.get("_id") != row["_id"] or doc.get("_creationTime") != row["_creationTime"]:
                raise SnapshotError(f"{entry['file']}: document {row['_id']} disagrees with its _id/_creationTime")
            raw = encode_doc(doc)
            writes.append(Write(table, row["_id"], raw, None))
            size += len(raw)
            if len(writes) >= IMPORT_BATCH_DOCS or size >= IMPORT_BATCH_BYTES:
                yield Record(writes=writes, function=IMPORT_FUNCTION, extra={"tape.import": table}), len(writes)
                writes, size = [], 0
    if writes:
        yield Record(writes=writes, function=IMPORT_FUNCTION, extra={"tape.import": table}), len(writes)


async def import_snapshot(src: str | os.PathLike[str], data_dir: str | os.PathLike[str],
                          reporter: Reporter | None = None) -> ImportReport:
    """Build the new data directory `data_dir` from the snapshot `src` (see the module docstring)."""
    reporter = reporter or Reporter()
    started = time.perf_counter()
    dest = Path(data_dir).absolute()
    work = new_work_dir(dest, os.getpid())
    try:
        snapshot = _Snapshot(Path(src))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    report = ImportReport(dest)
    try:
        log_ = FileLog(work / "log", read_only=False)
        await log_.open()
        try:
            for entry in snapshot.manifest.get("tables", []):
                task = reporter.task(f"import {entry['name']}", entry.get("documents"))
                appended, done = await append_table(log_, _import_records(snapshot, entry), task)
                report.records += appended
                expected = entry.get("documents")
                if expected is not None and expected != done:
                    raise SnapshotError(f"{entry['file']}: found {done} documents, the manifest says {expected}")
                report.tables[entry["name"]] = done
                if entry["name"] == STORAGE_TABLE:
                    report.blobs = import_blobs(snapshot, entry, LocalBlobStore(work / BLOBS_DIR), reporter)
            await build_projection_from(log_, work, snapshot.manifest.get("indexes") or {}, reporter, report.records)
        finally:
            await log_.close()
        move_into_place(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        snapshot.close()
    report.seconds = time.perf_counter() - started
    return report


__all__ = [
    "DOC_SCHEMA",
    "ExportReport",
    "IMPORT_BATCH_DOCS",
    "ImportReport",
    "SnapshotError",
    "export_snapshot",
    "import_snapshot",
]
