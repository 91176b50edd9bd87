"""Convex snapshot ZIPs: `tape export --format convex-zip` and `tape import` of a `npx convex export` ZIP.

The layout (as Convex's snapshot export writes it, get-convex/convex-backend
``crates/exports``; read back by ``crates/application/src/snapshot_import``)::

    README.md
    _tables/documents.jsonl            {"name": "<table>", "id": <table number>} per user table
    <table>/documents.jsonl            one document per line
    <table>/generated_schema.jsonl     the line "uniform" (documents use the export JSON format)
    _storage/documents.jsonl           file metadata {_id, _creationTime, sha256, size, contentType, internalId}
    _storage/<id>[.<ext>]              file contents

Documents are in Convex's *export JSON* format (``ValueFormat::ConvexExportJSON``):
int64 is a JSON integer, float64 a JSON number with a fraction or exponent,
bytes ``{"$bytes": b64}``, NaN/±inf ``{"$float": b64 of 8 little-endian bytes}``.
A table whose ``generated_schema.jsonl`` is missing or not ``"uniform"`` (old
exports) is read as Convex JSON (every number a float64, ``{"$integer": ..}``
for int64).

Ids: a Convex id and a Tape id both carry 16 id bytes besides their table
(`history.convex_ids`). Importing keeps each document's 16 bytes under its
table's name, so its Tape id is derived from its Convex id, and every string
anywhere in any document that is a Convex id of an imported table is rewritten
to that Tape id: references between tables stay consistent. The table numbers
are kept in the system table ``_convex_tables`` ({name, number}); exporting
maps every Tape id of an exported table back (tables without a number get new
ones from 10001), so Convex → Tape → Convex gives back the same ids, and
Tape-made documents get valid Convex ids that ``npx convex import`` keeps.
``_creationTime`` is kept both ways.

File storage: `import_convex_zip` takes a `blob_store` hook — a function
of the new data directory returning an object with ``put_file(binary file)
-> info`` (``info.sha256_base64``, ``info.size``), the interface of a
content-addressed blob store. With it, each ``_storage/<id>[.ext]`` file is
stored (its bytes checked against the sha256 of its
``_storage/documents.jsonl`` entry), a ``_storage`` document
``{sha256, size, contentType}`` keeps the file's ``_id`` (mapped like any id)
and ``_creationTime``, and references to files are rewritten like other ids.
Without it the files are counted, reported as skipped, and references to them
stay as they are (`tape import` passes the deployment's `storage.LocalBlobStore`).
Export writes no ``_storage`` entries.
"""
from __future__ import annotations

import base64
import math
import os
import re
import shutil
import struct
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Protocol

import orjson

from history.build import projection_at
from history.convex_ids import FIRST_USER_TABLE_NUMBER, decode_convex_id, encode_convex_id, tape_id, tape_internal
from history.errors import SnapshotError
from history.import_log import append_table, build_projection_from, new_work_dir
from history.progress import Reporter
from history.sources import is_data_dir
from log import FileLog
from log.directory import fsync_dir, move_into_place
from log.record import Record, Write
from values import ConvexValueError, check_value, decode_doc, encode_doc, from_wire, new_id

TABLES_TABLE = "_tables"
STORAGE_TABLE = "_storage"
NUMBERS_TABLE = "_convex_tables"
IMPORT_FUNCTION = "_import_convex"
IMPORT_BATCH_DOCS = 1000
IMPORT_BATCH_BYTES = 4 << 20
README = """# Welcome to your Convex snapshot export!

This ZIP file contains a snapshot of the tables in your Convex deployment.

Documents for each table are listed as lines of JSON in
<table_name>/documents.jsonl files.

For details on the format and how to use this snapshot with npx convex import,
check out [the docs](https://docs.convex.dev/database/import-export/export) or
ask us in [Discord](http://convex.dev/community).

(Written by Tape.)
"""
_DOCUMENTS = re.compile(r"^(?P<prefix>.*/)?(?P<table>[^/]+)/documents\.jsonl$")
_SCHEMA = re.compile(r"^(?P<prefix>.*/)?(?P<table>[^/]+)/generated_schema\.jsonl$")
_CONVEX_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_STORAGE_FILE = re.compile(r"^(?:.*/)?_storage/[^/.]+(?:\.[^/]+)?$")


class StoredBlob(Protocol):
    """What a blob store answers for a stored file."""

    size: int

    @property
    def sha256_base64(self) -> str: ...


class BlobSink(Protocol):
    """Where imported files' bytes go: a content-addressed blob store."""

    def put_file(self, source: BinaryIO) -> StoredBlob: ...


BlobStoreFactory = Callable[[Path], BlobSink]
"""Given the data directory being built, the blob store that goes with it."""


def is_convex_zip(path: Path) -> bool:
    """True if `path` is a ZIP laid out as a Convex snapshot export (no Tape manifest.json)."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return "manifest.json" not in names and any(_DOCUMENTS.match(n) for n in names)


# ----------------------------------------------------------------- values


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _float_bits(value: float) -> dict[str, str]:
    return {"$float": _b64(struct.pack("<d", value))}


def _id_lengths(ids: dict[str, int]) -> frozenset[int]:
    """The lengths a Tape id of the tables in `ids` can have (unpadded base64 of table + NUL + 16 bytes)."""
    return frozenset(-(-(len(t.encode()) + 17) * 4 // 3) for t in ids)


def export_json(value: Any, ids: dict[str, int], lengths: frozenset[int] | None = None) -> Any:
    """`value` in Convex's export JSON format, Tape ids of tables in `ids` (name -> number) as Convex ids."""
    if lengths is None:
        lengths = _id_lengths(ids)
    t = type(value)
    if t is str:
        if len(value) in lengths:
            found = tape_internal(value)
            if found is not None and found[0] in ids:
                return encode_convex_id(ids[found[0]], found[1])
        return value
    if t is bool or value is None or t is int:
        return value
    if t is float:
        return value if math.isfinite(value) else _float_bits(value)
    if t is dict:
        return {k: export_json(v, ids, lengths) for k, v in value.items()}
    if t is list:
        return [export_json(v, ids, lengths) for v in value]
    if t is bytes:
        return {"$bytes": _b64(value)}
    raise SnapshotError(f"{t.__name__} is not a Convex value")


def _special(obj: dict[str, Any], path: str) -> Any:
    key = next(iter(obj))
    if key in ("$bytes", "$float", "$integer"):
        return from_wire(obj, path)
    raise ConvexValueError(f"{path}: unknown special value {key!r}")


def import_json(value: Any, tables: dict[int, str], path: str, uniform: bool) -> Any:
    """A value of a Convex export (`uniform`: export JSON, else Convex JSON) as Python, Convex ids mapped."""
    t = type(value)
    if t is str:
        found = decode_convex_id(value) if tables else None
        if found is not None and found[0] in tables:
            return tape_id(tables[found[0]], found[1])
        return value
    if t is bool or value is None or t is float:
        return value
    if t is int:
        return value if uniform else float(value)
    if t is list:
        return [import_json(v, tables, f"{path}[{i}]", uniform) for i, v in enumerate(value)]
    if t is dict:
        if value and next(iter(value)).startswith("$"):
            if len(value) != 1:
                raise ConvexValueError(f"{path}: field names may not start with '$'")
            return _special(value, path)
        return {k: import_json(v, tables, f"{path}.{k}", uniform) for k, v in value.items()}
    raise ConvexValueError(f"{path}: {t.__name__} is not a JSON value")


# ----------------------------------------------------------------- export


@dataclass
class ConvexExportReport:
    """What a Convex ZIP export wrote."""

    out: Path
    offset: int
    ts: int
    tables: dict[str, int] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    base: str = ""

    @property
    def documents(self) -> int:
        """How many documents were exported."""
        return sum(self.tables.values())


def table_numbers(projection: Any, tables: list[str]) -> dict[str, int]:
    """Convex table numbers for `tables`: kept ones from ``_convex_tables``, new ones from 10001 for the rest."""
    known: dict[str, int] = {}
    for raw in projection.iter_documents(NUMBERS_TABLE):
        doc = decode_doc(raw)
        if isinstance(doc.get("name"), str) and type(doc.get("number")) is int:
            known[doc["name"]] = doc["number"]
    used = set(known.values())
    out: dict[str, int] = {}
    nxt = FIRST_USER_TABLE_NUMBER
    for table in tables:
        if table in known:
            out[table] = known[table]
    for table in tables:
        if table not in out:
            while nxt in used:
                nxt += 1
            out[table] = nxt
            used.add(nxt)
    return out


def _export_chunks(projection: Any, table: str, ids: dict[str, int], counter: list[int]) -> Iterator[bytes]:
    """documents.jsonl of `table`, in chunks of up to 1,000 lines."""
    lengths = _id_lengths(ids)
    dumps = orjson.dumps
    lines: list[bytes] = []
    for raw in projection.iter_documents(table):
        doc = decode_doc(raw)
        doc["_creationTime"] = float(doc["_creationTime"])
        lines.append(dumps(export_json(doc, ids, lengths)))
        if len(lines) >= 1000:
            counter[0] += len(lines)
            yield b"\n".join(lines) + b"\n"
            lines = []
    if lines:
        counter[0] += len(lines)
        yield b"\n".join(lines) + b"\n"


async def export_convex_zip(data_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, at: str | None = None,
                            reporter: Reporter | None = None) -> ConvexExportReport:
    """Write the user tables of `data_dir` (as of `at`, default the end of the log) as a Convex snapshot ZIP."""
    reporter = reporter or Reporter()
    started = time.perf_counter()
    data = Path(data_dir).absolute()
    target = Path(out).absolute()
    if not is_data_dir(data):
        raise SnapshotError(f"{data} is not a Tape data directory")
    if target.exists():
        raise SnapshotError(f"{target} exists: export into a new file")
    async with projection_at(data, at, reporter) as view:
        projection = view.projection
        report = ConvexExportReport(target, view.upto, view.ts, base=view.build.base)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            tables = [t for t in projection.tables() if not t.startswith("_")]
            bad = [t for t in tables if _CONVEX_TABLE_NAME.fullmatch(t) is None]
            if bad:
                raise SnapshotError(f"table name(s) Convex does not accept: {', '.join(map(repr, bad))} (a Convex "
                                    "table name starts with a letter and has up to 64 ASCII letters, digits and "
                                    "underscores)")
            numbers = table_numbers(projection, tables)
            report.numbers = numbers
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr("README.md", README)
                rows = sorted((n, t) for t, n in numbers.items())
                zf.writestr(f"{TABLES_TABLE}/documents.jsonl",
                            b"".join(orjson.dumps({"name": t, "id": n}) + b"\n" for n, t in rows))
                for table in tables:
                    task = reporter.task(f"export {table}", projection.count(table))
                    count = [0]
                    with zf.open(f"{table}/documents.jsonl", "w", force_zip64=True) as f:  # may pass 2 GiB
                        for chunk in _export_chunks(projection, table, numbers, count):
                            f.write(chunk)
                    zf.writestr(f"{table}/generated_schema.jsonl", '"uniform"\n')
                    task.update(count[0])
                    task.finish()
                    report.tables[table] = count[0]
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
            fsync_dir(target.parent)
        finally:
            if tmp.exists():
                tmp.unlink()
    report.seconds = time.perf_counter() - started
    return report


# ----------------------------------------------------------------- import


@dataclass
class ConvexImportReport:
    """What a Convex ZIP import built."""

    data: Path
    tables: dict[str, int] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)
    records: int = 0
    storage_skipped: int = 0
    files: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def documents(self) -> int:
        """How many documents were imported."""
        return sum(self.tables.values())


class _ConvexZip:
    """A Convex snapshot ZIP, opened and indexed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise SnapshotError(f"{path}: not a ZIP file ({exc})") from None
        self.documents: dict[str, str] = {}  # table -> entry name
        self.uniform: dict[str, bool] = {}
        self.storage_files: dict[str, str] = {}  # Convex storage id -> entry name
        for name in self.zip.namelist():
            if name.startswith("_components/") or "/_components/" in name:
                raise SnapshotError(f"{path}: {name}: component data cannot be imported (Tape has no components)")
            m = _DOCUMENTS.match(name)
            if m:
                if m.group("prefix"):
                    raise SnapshotError(f"{path}: {name}: expected <table>/documents.jsonl at the top level")
                self.documents[m.group("table")] = name
                continue
            m = _SCHEMA.match(name)
            if m:
                first = self.zip.read(name).split(b"\n", 1)[0].strip()
                self.uniform[m.group("table")] = first == b'"uniform"'
            elif _STORAGE_FILE.match(name) and not name.endswith("documents.jsonl"):
                file_id = name.rsplit("/", 1)[-1].split(".", 1)[0]
                self.storage_files[file_id] = name
        if not self.documents:
            raise SnapshotError(f"{path}: no <table>/documents.jsonl entries (not a Convex snapshot export)")

    def lines(self, table: str) -> Iterator[tuple[int, Any]]:
        """(line number, parsed JSON) of each non-empty line of `table`'s documents.jsonl."""
        name = self.documents[table]
        with self.zip.open(name) as f:
            for lineno, line in enumerate(f, 1):
                if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                    raise SnapshotError(f"{name}: line 1 starts with a UTF-8 byte order mark")
                if not line.strip():
                    continue
                try:
                    yield lineno, orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise SnapshotError(f"{name}: line {lineno}: not valid JSON ({exc})") from None

    def table_numbers(self) -> dict[str, int]:
        """Table name -> number, from ``_tables`` and, for tables it does not list, their first ``_id``."""
        numbers: dict[str, int] = {}
        if TABLES_TABLE in self.documents:
            for lineno, row in self.lines(TABLES_TABLE):
                if (type(row) is not dict or not isinstance(row.get("name"), str)
                        or type(row.get("id")) is not int or row["id"] <= 0):
                    raise SnapshotError(f"{self.documents[TABLES_TABLE]}: line {lineno}: expected "
                                        '{"name": string, "id": positive integer}')
                if row["name"] in numbers:
                    raise SnapshotError(f"{self.documents[TABLES_TABLE]}: line {lineno}: "
                                        f"table {row['name']!r} is listed twice")
                numbers[row["name"]] = row["id"]
        for table in self.user_tables():
            if table in numbers:
                continue
            for _lineno, row in self.lines(table):
                found = decode_convex_id(row.get("_id")) if type(row) is dict else None
                if found is not None:
                    numbers[table] = found[0]
                break
        by_number: dict[int, str] = {}
        for table, number in numbers.items():
            if number in by_number:
                raise SnapshotError(f"{self.path}: tables {by_number[number]!r} and {table!r} have the same "
                                    f"number {number}")
            by_number[number] = table
        return numbers

    def user_tables(self) -> list[str]:
        """The tables with documents to import (system tables left out)."""
        return sorted(t for t in self.documents if not t.startswith("_"))

    def close(self) -> None:
        self.zip.close()


def _convert(row: Any, table: str, where: str, by_number: dict[int, str], number: int | None,
             uniform: bool, now_ms: float) -> dict[str, Any]:
    if type(row) is not dict:
        raise SnapshotError(f"{where}: expected a JSON object, got {type(row).__name__}")
    raw_id = row.get("_id")
    if raw_id is not None:
        found = decode_convex_id(raw_id)
        if found is None:
            raise SnapshotError(f"{where}: _id {raw_id!r} is not a Convex document id")
        if number is not None and found[0] != number:
            raise SnapshotError(f"{where}: _id {raw_id!r} belongs to table number {found[0]}, "
                                f"not {table!r} (number {number})")
    try:
        doc = import_json(row, by_number, where, uniform)
        check_value(doc, where)
    except ConvexValueError as exc:
        raise SnapshotError(str(exc)) from None
    if raw_id is None:
        doc["_id"] = new_id(table)
    created = doc.get("_creationTime", now_ms)
    if type(created) not in (int, float) or not math.isfinite(created):
        raise SnapshotError(f"{where}: _creationTime must be a number, got {created!r}")
    doc["_creationTime"] = float(created)
    return doc


def _table_records(z: _ConvexZip, table: str, by_number: dict[int, str], number: int | None,
                   now_ms: float) -> Iterator[tuple[Record, int]]:
    uniform = z.uniform.get(table, False)
    writes: list[Write] = []
    size = 0
    seen: set[str] = set()
    name = z.documents[table]
    for lineno, row in z.lines(table):
        where = f"{name}: line {lineno}"
        doc = _convert(row, table, where, by_number, number, uniform, now_ms)
        if doc["_id"] in seen:
            raise SnapshotError(f"{where}: duplicate _id {row.get('_id')!r}")
        seen.add(doc["_id"])
        raw = encode_doc(doc)
        writes.append(Write(table, doc["_id"], raw, None))
        size += len(raw)
        if len(writes) >= IMPORT_BATCH_DOCS or size >= IMPORT_BATCH_BYTES:
            yield Record(writes=writes, function=IMPORT_FUNCTION, extra={"tape.import": table}), len(writes)
            writes, size = [], 0
    if writes:
        yield Record(writes=writes, function=IMPORT_FUNCTION, extra={"tape.import": table}), len(writes)


def _storage_records(z: _ConvexZip, sink: BlobSink, now_ms: float,
                     report: "ConvexImportReport") -> Iterator[Record]:
    """Store every ``_storage/<id>`` file in `sink`; records of the ``_storage`` documents describing them."""
    metadata: dict[str, dict[str, Any]] = {}
    if STORAGE_TABLE in z.documents:
        for lineno, row in z.lines(STORAGE_TABLE):
            if type(row) is not dict or decode_convex_id(row.get("_id")) is None:
                raise SnapshotError(f"{z.documents[STORAGE_TABLE]}: line {lineno}: expected an object with the "
                                    "file's Convex _id")
            metadata[row["_id"]] = row
    writes: list[Write] = []
    for file_id, name in sorted(z.storage_files.items()):
        found = decode_convex_id(file_id)
        if found is None:
            raise SnapshotError(f"{name}: {file_id!r} is not a Convex storage id")
        meta = metadata.get(file_id, {})
        with z.zip.open(name) as f:
            info = sink.put_file(f)
        expected = meta.get("sha256")
        if expected is not None and expected != info.sha256_base64:
            raise SnapshotError(f"{name}: its bytes do not match the sha256 in _storage/documents.jsonl")
        created = meta.get("_creationTime")
        doc: dict[str, Any] = {"_id": tape_id(STORAGE_TABLE, found[1]),
                               "_creationTime": float(created) if type(created) in (int, float) else now_ms,
                               "sha256": info.sha256_base64, "size": float(info.size)}
        if isinstance(meta.get("contentType"), str):
            doc["contentType"] = meta["contentType"]
        writes.append(Write(STORAGE_TABLE, doc["_id"], encode_doc(doc), None))
        report.files += 1
        if len(writes) >= IMPORT_BATCH_DOCS:
            yield Record(writes=writes, function=IMPORT_FUNCTION, extra={"tape.import": STORAGE_TABLE})
            writes = []
    if writes:
        yield Record(writes=writes, function=IMPORT_FUNCTION, extra={"tape.import": STORAGE_TABLE})


def _storage_numbers(z: _ConvexZip) -> set[int]:
    """The table numbers of the files' ids (Convex's ``_storage`` number in the exporting deployment)."""
    numbers = {found[0] for found in map(decode_convex_id, z.storage_files) if found is not None}
    if STORAGE_TABLE in z.documents:
        for _lineno, row in z.lines(STORAGE_TABLE):
            found = decode_convex_id(row.get("_id")) if type(row) is dict else None
            if found is not None:
                numbers.add(found[0])
    return numbers


def _numbers_record(numbers: dict[str, int], now_ms: float) -> Record:
    writes = []
    for table, number in sorted(numbers.items(), key=lambda kv: kv[1]):
        doc = {"_id": new_id(NUMBERS_TABLE), "_creationTime": now_ms, "name": table, "number": number}
        writes.append(Write(NUMBERS_TABLE, doc["_id"], encode_doc(doc), None))
    return Record(writes=writes, function=IMPORT_FUNCTION, extra={"tape.import": NUMBERS_TABLE})


async def import_convex_zip(src: str | os.PathLike[str], data_dir: str | os.PathLike[str],
                            reporter: Reporter | None = None,
                            blob_store: BlobStoreFactory | None = None) -> ConvexImportReport:
    """Build the new data directory `data_dir` from the Convex snapshot ZIP `src` (see the module docstring)."""
    reporter = reporter or Reporter()
    started = time.perf_counter()
    dest = Path(data_dir).absolute()
    work = new_work_dir(dest, os.getpid())
    try:
        z = _ConvexZip(Path(src))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    report = ConvexImportReport(dest)
    now_ms = time.time() * 1000.0
    try:
        numbers = z.table_numbers()
        tables = z.user_tables()
        report.numbers = {t: n for t, n in numbers.items() if t in tables}
        by_number = {n: t for t, n in report.numbers.items()}
        if blob_store is not None:
            for number in _storage_numbers(z):
                if number in by_number:
                    raise SnapshotError(f"{z.path}: _storage ids use table number {number}, which _tables gives "
                                        f"to {by_number[number]!r}")
                by_number[number] = STORAGE_TABLE
        else:
            if STORAGE_TABLE in z.documents:
                report.storage_skipped = sum(1 for _ in z.lines(STORAGE_TABLE))
            if report.storage_skipped or z.storage_files:
                report.notes.append(f"skipped {report.storage_skipped} _storage entr"
                                    f"{'y' if report.storage_skipped == 1 else 'ies'} and {len(z.storage_files)} "
                                    "stored file(s): this Tape build has no file storage; references to them are "
                                    "kept as strings")
        log_ = FileLog(work / "log", read_only=False)
        await log_.open()
        try:
            if report.numbers:
                await log_.append([_numbers_record(report.numbers, now_ms)])
                report.records += 1
            if blob_store is not None and z.storage_files:
                sink = blob_store(work)
                for record in _storage_records(z, sink, now_ms, report):
                    await log_.append([record])
                    report.records += 1
            for table in tables:
                task = reporter.task(f"import {table}", None)
                appended, done = await append_table(
                    log_, _table_records(z, table, by_number, report.numbers.get(table), now_ms), task)
                report.records += appended
                report.tables[table] = done
            await build_projection_from(log_, work, {}, reporter, report.records)
        finally:
            await log_.close()
        move_into_place(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        z.close()
    report.seconds = time.perf_counter() - started
    return report


__all__ = [
    "BlobSink",
    "BlobStoreFactory",
    "ConvexExportReport",
    "ConvexImportReport",
    "NUMBERS_TABLE",
    "export_convex_zip",
    "export_json",
    "import_convex_zip",
    "import_json",
    "is_convex_zip",
    "table_numbers",
]
