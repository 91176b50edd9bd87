"""`tape export --format convex-zip` and `tape import CONVEX_EXPORT.zip`: moving data to and from Convex.

Both are options of the `export` / `import` sub-commands (ops.export_cmd);
the formats and the id mapping are described in `history.convex_zip`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from rich.console import Console

from history.convex_zip import ConvexExportReport, ConvexImportReport, export_convex_zip, import_convex_zip
from history.points import format_ns
from ops.errors import CliError
from storage import BLOBS_DIR, LocalBlobStore


def export_convex(args: argparse.Namespace, run: Callable[[Any], Any]) -> None:
    """`tape export --format convex-zip` (run: ops.export_cmd._run, which shows progress)."""
    if not str(args.out).lower().endswith(".zip"):
        raise CliError(f"--format convex-zip writes a ZIP file: give --out FILE.zip, not {args.out}")
    if args.include_system:
        raise CliError("--include-system: a Convex ZIP holds user tables only")
    report: ConvexExportReport = run(lambda r: export_convex_zip(args.data, args.out, at=args.at, reporter=r))
    out = Console(highlight=False, soft_wrap=True)
    when = format_ns(report.ts) if report.ts else "the beginning"
    out.print(f"[bold green]Exported[/] {report.documents} document(s) in {len(report.tables)} table(s) "
              f"at offset {report.offset} ({when}) to {report.out} as a Convex snapshot ZIP in "
              f"{report.seconds:.2f}s")
    for table, n in report.tables.items():
        out.print(f"  {table} (table number {report.numbers[table]}): {n}")
    out.print(f"Load it into Convex with: npx convex import {report.out}")


def import_convex(args: argparse.Namespace, run: Callable[[Any], Any]) -> None:
    """`tape import CONVEX_EXPORT.zip --data NEW_DIR`."""
    report: ConvexImportReport = run(lambda r: import_convex_zip(
        args.snapshot, args.data, reporter=r, blob_store=lambda work: LocalBlobStore(work / BLOBS_DIR)))
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"[bold green]Imported[/] {report.documents} document(s) in {len(report.tables)} table(s) from a "
              f"Convex snapshot into {report.data} ({report.records} log record(s)) in {report.seconds:.2f}s")
    for table, n in report.tables.items():
        out.print(f"  {table}: {n}")
    for note in report.notes:
        out.print(f"[yellow]note:[/] {note}")
    out.print(f"Start it with: tape serve APP_DIR --data {report.data}")
    sys.stdout.flush()


__all__ = ["export_convex", "import_convex"]
