"""`tape stream`: change data capture — every written document as a change event (see `log.changes`).

    tape stream --data DATA_DIR [--from OFFSET|TIME] [--table T ...] [--format jsonl|avro]
                [--doc-format json|convex] [--follow] [--out FILE] [--state FILE]
    tape stream --log URL ...                     # a log directory, kafka://..., or a discarded-*.avro archive
    tape stream --data DATA_DIR --to kafka://host:9092/topic --state exporter.json --follow

Events go to stdout, to `--out FILE`, or with `--to kafka://host:port/topic` to
a Kafka topic (aiokafka producer, acks=all, idempotent — add ``?idempotent=0``
for brokers without idempotent producers, e.g. Tansu; the message key is the
document id, the value the JSON event or, with --format avro, the schemaless
Avro encoding of `log.changes.AVRO_SCHEMA`; header ``tape.offset``). The topic
must exist (or the broker must create topics on first use).

--from: a bare number is a log offset (the first record to export); also
offset:N, ts:N (commit ts in ns), an ISO-8601 time, or `end` (only new records,
with --follow). Default: the beginning.

--state FILE makes the export resumable: after the events of a batch of
records are durably written (file fsynced, or every Kafka message
acknowledged by all in-sync replicas) the next offset is saved atomically to
FILE. A restarted exporter with the same --state continues from there; --from
then only applies when FILE does not exist yet. Delivery is at-least-once:
events of the batch in flight at a crash are sent again (every event carries
``source.offset``, so a consumer can skip offsets it has already processed).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any, BinaryIO

from rich.console import Console

from history.errors import RestoreError, StreamError
from history.points import parse_point, resolve_point
from history.sinks import FORMATS, AvroSink, JsonlSink, KafkaSink, Sink
from history.sources import open_source
from history.stream import StreamState, StreamStats, run_stream, start_offset
from log.changes import DOC_FORMATS, TableFilter
from log.errors import LogError
from ops.errors import CliError
from ops.help import HelpFormatter


STREAM_HELP = """\
Write one change event per written document (op, before, after, table, id, commit
time, log offset), as JSON lines or Avro, to stdout, a file or a Kafka topic.

  tape stream --data DATA_DIR                          # everything so far, to stdout
  tape stream --data DATA_DIR --from end --follow      # only new commits, as they happen
  tape stream --data DATA_DIR --out changes.jsonl --state pos.json --follow   # resumable
  tape stream --data DATA_DIR --to kafka://host:9092/topic --state pos.json --follow

--from / --until: a log offset (a bare number or offset:N), ts:N (commit time in
ns), an ISO-8601 time, or end. With --state FILE the next offset is saved after
each durably written batch, and a restart continues from there (at-least-once:
every event carries its source offset).
"""


def register(subparsers: Any) -> None:
    """Add the `stream` sub-command (called by ops.cli)."""
    p = subparsers.add_parser("stream", help="export change events (CDC) to stdout, a file or Kafka",
                              description=STREAM_HELP, formatter_class=HelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="a data directory (its log is read as a follower: a server may run)")
    src.add_argument("--log", help="a log directory, file://PATH, kafka://host:port/topic or a discarded-*.avro file")
    p.add_argument("--from", dest="start", help="offset (bare number), offset:N, ts:N, ISO-8601 time or end")
    p.add_argument("--until", help="last offset/time to export (same forms as --from)")
    p.add_argument("--table", action="append", help="only this table (repeatable; default: every non-system table)")
    p.add_argument("--include-system", action="store_true", help="also tables starting with _ (e.g. _requests)")
    p.add_argument("--format", choices=FORMATS, default="jsonl", help="jsonl (default) or avro")
    p.add_argument("--doc-format", choices=DOC_FORMATS, default="json",
                   help="documents as plain JSON (default; the storage encoding) or Convex JSON")
    p.add_argument("--follow", "-f", action="store_true", help="keep running and export new commits as they happen")
    p.add_argument("--out", help="write to this file (default: stdout); appended to when resuming with --state")
    p.add_argument("--to", dest="kafka", help="publish to kafka://host:port[,host:port]/topic instead")
    p.add_argument("--state", help="position file for resumable, gap-free exports")
    p.add_argument("--quiet", "-q", action="store_true", help="no summary on stderr")
    p.set_defaults(func=cmd_stream)


def cmd_stream(args: argparse.Namespace) -> None:
    """Run `tape stream` (see the module docstring)."""
    if args.kafka and args.out:
        raise CliError("use either --out FILE or --to kafka://..., not both")
    try:
        stats = asyncio.run(_stream_main(args))
    except (StreamError, RestoreError) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(str(exc)) from None
    if not args.quiet:
        err = Console(stderr=True, highlight=False)
        err.print(f"exported {stats.events:,} event(s) from {stats.records:,} record(s) in {stats.seconds:.2f}s "
                  f"({stats.events_per_second:,.0f} events/s); next offset {stats.next_offset}")


async def _stream_main(args: argparse.Namespace) -> StreamStats:
    source_name = str(Path(args.data) / "log") if args.data else args.log
    try:
        source = await open_source(args.data or args.log)
    except LogError as exc:
        raise StreamError(str(exc)) from None
    log_ = source.log
    state = StreamState(args.state) if args.state else None
    sink: Sink | None = None
    try:
        saved = state.load() if state else None
        if saved is not None:
            start = saved["next_offset"]
            if start > log_.next_offset():
                raise StreamError(f"{args.state} says to resume at offset {start}, but the log ends at offset "
                                  f"{log_.next_offset() - 1} (was it restored in place?); move the state file "
                                  "away to start over")
        else:
            start = await start_offset(log_, args.start)
        until = None
        if args.until is not None:
            until = await resolve_point(log_, parse_point(args.until, bare="offset"), strict_offset=False)
        tables = TableFilter(args.table, args.include_system)
        resuming = saved is not None
        if args.kafka:
            sink = KafkaSink(args.kafka, tables, args.doc_format, args.format)
        else:
            if args.out:
                mode = "ab" if resuming else "wb"
                if args.format == "avro" and resuming and os.path.exists(args.out):
                    mode = "a+b"
                out: BinaryIO = open(args.out, mode)
            else:
                out = sys.stdout.buffer
            sync = state is not None and args.out is not None
            if args.format == "avro":
                sink = AvroSink(out, tables, args.doc_format, sync=sync, append=mode == "a+b" if args.out else False)
            else:
                sink = JsonlSink(out, tables, args.doc_format, sync=sync)
        await sink.open()
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        stopped = False

        def stop() -> None:
            nonlocal stopped
            stopped = True
            if task is not None:
                task.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        stats = StreamStats()
        try:
            return await run_stream(log_, start, sink, follow=args.follow, until=until, state=state,
                                    state_extra={"source": source_name}, stats=stats)
        except asyncio.CancelledError:
            if not stopped:
                raise
            return stats
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
    finally:
        if sink is not None:
            try:
                await sink.close()
            finally:
                out_file = getattr(sink, "out", None)
                if out_file is not None and out_file is not sys.stdout.buffer:
                    out_file.close()
        await source.close()


__all__ = ["register"]
