"""`tape export` / `tape import`: consistent snapshots as Avro files.

    tape export --data DATA_DIR --out DIR|FILE.zip [--at TIME] [--include-system] [--codec deflate|null]
    tape import DIR|FILE.zip --data NEW_DATA_DIR
    tape export --data DATA_DIR --out FILE.zip --format convex-zip [--at TIME]
    tape import CONVEX_EXPORT.zip --data NEW_DATA_DIR      (a `npx convex export` ZIP; see ops.convex_zip_cmd)

A snapshot is every table at one log position (the end of the log, or --at
TIME; a server may keep running: the log is read as a follower and the state
is built from the nearest checkpoint, or the projection itself when no server
holds it, plus a replay). It is a directory (or a zip of one) holding

* ``<table>.avro`` — an Avro object container file per table (standard Avro,
  deflate codec), records of the schema `DOC_SCHEMA`::

      {"_id": string, "_creationTime": double, "doc": string}

  where ``doc`` is the whole document (with ``_id`` and ``_creationTime``) as
  Convex JSON (`values.to_wire`: int64 as ``{"$integer": b64}``,
  bytes as ``{"$bytes": b64}``, special floats as ``{"$float": b64}``), so
  every value round-trips exactly;
* ``manifest.json`` — the format, the position (offset, ts, time), each
  table's file, document count and indexes, the full index catalog and the
  Avro schema.

System tables (``_requests``: idempotency memos of the old deployment) are left
out unless --include-system; stored files (the ``_storage`` table) are always
exported, with their bytes as ``blobs/<sha256 hex>``, and imported with them.

`tape import` builds a new deployment from a snapshot: it writes the documents
as log records (``function: "_import"``, up to `IMPORT_BATCH_DOCS` documents
each) into a new FileLog and replays them into a new projection with the
snapshot's indexes, so log and projection agree; ids and ``_creationTime``
values are kept.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

from rich.console import Console

from history.convex_zip import is_convex_zip
from history.errors import RestoreError, SnapshotError
from history.points import format_ns
from history.progress import Reporter
from history.snapshot import ExportReport, ImportReport, export_snapshot, import_snapshot
from log.errors import LogError
from ops import convex_zip_cmd
from ops.errors import CliError
from ops.help import HelpFormatter
from ops.restore_cmd import RichReporter
from projections.errors import ProjectionError


EXPORT_HELP = """\
Write every table of a deployment, as of one moment, to a snapshot: one Avro file per
table plus manifest.json. A server may keep running while you export.

  tape export --data DATA_DIR --out snap/                  # the state now
  tape export --data DATA_DIR --out snap.zip --at 2026-11-23T18:30:00Z
  tape export --data DATA_DIR --out convex.zip --format convex-zip   # for `npx convex import`
"""

IMPORT_HELP = """\
Build a new data directory from a snapshot written by `tape export`, then serve it
with `tape serve APP_DIR --data NEW_DATA_DIR`.

  tape import snap/ --data NEW_DATA_DIR
  tape import convex_export.zip --data NEW_DATA_DIR      # a ZIP from `npx convex export`
"""


def register(subparsers: Any) -> None:
    """Add the `export` and `import` sub-commands (called by ops.cli)."""
    p = subparsers.add_parser("export", help="write a consistent snapshot (Avro files + manifest.json)",
                              description=EXPORT_HELP, formatter_class=HelpFormatter)
    p.add_argument("--data", required=True, help="the data directory to export (a server may be running)")
    p.add_argument("--out", required=True, help="a new directory, or FILE.zip")
    p.add_argument("--at", help="export the state as of this time (ISO-8601, ts in ns, ts:N, offset:N; default: now)")
    p.add_argument("--include-system", action="store_true", help="also export system tables (_requests)")
    p.add_argument("--codec", choices=["deflate", "null"], default="deflate", help="Avro block codec")
    p.add_argument("--format", choices=["tape", "convex-zip"], default="tape",
                   help="tape: Avro files + manifest.json; convex-zip: a snapshot ZIP `npx convex import` reads")
    p.set_defaults(func=cmd_export)
    q = subparsers.add_parser("import", help="build a new deployment from a snapshot made by `tape export`",
                              description=IMPORT_HELP, formatter_class=HelpFormatter)
    q.add_argument("snapshot", help="a directory or .zip written by `tape export`, or a Convex snapshot ZIP")
    q.add_argument("--format", choices=["auto", "tape", "convex-zip"], default="auto",
                   help="auto: a ZIP without manifest.json but with <table>/documents.jsonl is a Convex export")
    q.add_argument("--data", required=True, help="the new data directory (must not exist or be empty)")
    q.set_defaults(func=cmd_import)


def _run(coro: Callable[[Reporter], Awaitable[Any]]) -> Any:
    """Run `coro(reporter)` with rich progress bars on stderr; library errors become CliErrors."""
    reporter = RichReporter(Console(stderr=True, highlight=False))
    try:
        with reporter:
            return asyncio.run(coro(reporter))
    except (SnapshotError, RestoreError, LogError, ProjectionError, OSError) as exc:
        raise CliError(str(exc)) from None


def cmd_export(args: argparse.Namespace) -> None:
    """Run `tape export` (see the module docstring)."""
    if args.format == "convex-zip":
        convex_zip_cmd.export_convex(args, _run)
        return
    report: ExportReport = _run(lambda r: export_snapshot(args.data, args.out, at=args.at,
                                                          include_system=args.include_system, codec=args.codec,
                                                          reporter=r))
    out = Console(highlight=False, soft_wrap=True)
    when = format_ns(report.ts) if report.ts else "the beginning"
    out.print(f"[bold green]Exported[/] {report.documents} document(s) in {len(report.tables)} table(s) "
              f"at offset {report.offset} ({when}) to {report.out} in {report.seconds:.2f}s (state: {report.base})")
    for table, n in report.tables.items():
        out.print(f"  {table}: {n}")
    if report.blobs:
        out.print(f"  file blobs: {report.blobs}")


def cmd_import(args: argparse.Namespace) -> None:
    """Run `tape import` (see the module docstring)."""
    if args.format == "convex-zip" or (args.format == "auto" and is_convex_zip(Path(args.snapshot))):
        convex_zip_cmd.import_convex(args, _run)
        return
    report: ImportReport = _run(lambda r: import_snapshot(args.snapshot, args.data, reporter=r))
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"[bold green]Imported[/] {report.documents} document(s) in {len(report.tables)} table(s) into "
              f"{report.data} ({report.records} log record(s)) in {report.seconds:.2f}s")
    for table, n in report.tables.items():
        out.print(f"  {table}: {n}")
    if report.blobs:
        out.print(f"  file blobs: {report.blobs}")
    out.print(f"Start it with: tape serve APP_DIR --data {report.data}")
    sys.stdout.flush()


__all__ = ["register"]
