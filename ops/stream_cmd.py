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
import functools
import io
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from log.changes import (
    AVRO_SCHEMA,
    DOC_FORMATS,
    TableFilter,
    avro_events,
    encode_changes,
    jsonl_chunk,
    jsonl_flat_chunk,
)
from log.codec import FlatRecord, FlatWrite
from log.record import Record

FORMATS = ("jsonl", "avro")


class StreamError(Exception):
    """The export cannot run as asked."""


# ----------------------------------------------------------------- position state


class StreamState:
    """The exporter's own position: ``{"next_offset": N, ...}`` in a small JSON file, replaced atomically."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any] | None:
        try:
            state = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise StreamError(f"{self.path}: unreadable state file ({exc})") from None
        if type(state) is not dict or type(state.get("next_offset")) is not int:
            raise StreamError(f"{self.path}: not a tape stream state file")
        return state

    def save(self, next_offset: int, **extra: Any) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        body = orjson.dumps({"next_offset": next_offset, "updated_ns": time.time_ns(), **extra})
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent if str(self.path.parent) else ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ----------------------------------------------------------------- sinks


class Sink:
    """Where events go. `write` takes a batch of records, `commit` makes what was written durable."""

    durable = False

    async def open(self) -> None:
        pass

    async def write(self, records: list[Record]) -> int:
        raise NotImplementedError

    async def commit(self) -> None:
        pass

    async def close(self) -> None:
        pass


class JsonlSink(Sink):
    """JSON lines to a binary stream (a file or stdout)."""

    def __init__(self, out: BinaryIO, tables: TableFilter, doc_format: str, *, sync: bool = False) -> None:
        self.out = out
        self.tables = tables
        self.doc_format = doc_format
        self.sync = sync
        self.durable = sync

    async def write(self, records: list[Record]) -> int:
        chunk, n = jsonl_chunk(records, self.tables, self.doc_format)
        if chunk:
            self.out.write(chunk)
        return n

    def flat_encoder(self) -> Callable[[list[FlatWrite], list[FlatRecord]], tuple[bytes, int]]:
        """What turns a batch of flattened records into (lines, events) for `write_encoded`.

        It may run in another process (`FileLog.read_changes`): it only closes over plain settings.
        """
        return functools.partial(jsonl_flat_chunk, tables=self.tables, doc_format=self.doc_format)

    async def write_encoded(self, encoded: tuple[bytes, int]) -> int:
        """Write the events a `flat_encoder()` made; returns how many."""
        chunk, n = encoded
        if chunk:
            self.out.write(chunk)
        return n

    async def commit(self) -> None:
        self.out.flush()
        if self.sync:
            os.fsync(self.out.fileno())

    async def close(self) -> None:
        await self.commit()


class AvroSink(Sink):
    """An Avro object container file of `AVRO_SCHEMA` events (appended to when it exists)."""

    def __init__(self, out: BinaryIO, tables: TableFilter, doc_format: str, *, sync: bool = False,
                 append: bool = False) -> None:
        from fastavro import parse_schema
        from fastavro.write import Writer
        self.out = out
        self.tables = tables
        self.doc_format = doc_format
        self.sync = sync
        self.durable = sync
        schema = parse_schema(AVRO_SCHEMA)
        meta = {"tape.kind": "change-events", "tape.doc_format": doc_format}
        self.writer = Writer(out, schema, codec="deflate", metadata=None if append else meta)

    async def write(self, records: list[Record]) -> int:
        n = 0
        write = self.writer.write
        for event in avro_events(records, self.tables, self.doc_format):
            write(event)
            n += 1
        return n

    async def commit(self) -> None:
        self.writer.flush()
        self.out.flush()
        if self.sync:
            os.fsync(self.out.fileno())

    async def close(self) -> None:
        await self.commit()


@dataclass
class KafkaTarget:
    """A parsed ``kafka://host:port[,host:port]/topic[?client_id=...]`` URL."""

    servers: list[str]
    topic: str
    options: dict[str, str]


def parse_kafka_url(url: str) -> KafkaTarget:
    parts = urlsplit(url)
    if parts.scheme != "kafka" or not parts.netloc:
        raise StreamError(f"{url!r}: expected kafka://host:port[,host:port]/topic")
    topic = unquote(parts.path.lstrip("/"))
    if not topic or "/" in topic:
        raise StreamError(f"{url!r}: name exactly one topic after the host, e.g. kafka://localhost:9092/tape.changes")
    servers = [s for s in parts.netloc.split(",") if s]
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return KafkaTarget(servers, topic, options)


def _default_producer(target: KafkaTarget) -> Any:
    from aiokafka import AIOKafkaProducer
    return AIOKafkaProducer(
        bootstrap_servers=target.servers,
        client_id=target.options.get("client_id", "tape-stream"),
        acks="all",
        enable_idempotence=target.options.get("idempotent", "1") not in ("0", "false", "no"),
        linger_ms=int(target.options.get("linger_ms", "5")),
        max_batch_size=int(target.options.get("max_batch_size", str(1 << 20))),
        max_request_size=int(target.options.get("max_request_size", str(8 << 20))),
    )


ProducerFactory = Callable[[KafkaTarget], Any]


class KafkaSink(Sink):
    """Publishes each event as one Kafka message (key: document id) and waits for every ack on `commit`."""

    durable = True

    def __init__(self, url: str, tables: TableFilter, doc_format: str, fmt: str = "jsonl",
                 producer_factory: ProducerFactory | None = None) -> None:
        self.target = parse_kafka_url(url)
        self.tables = tables
        self.doc_format = doc_format
        self.fmt = fmt
        self.factory = producer_factory or _default_producer
        self.producer: Any = None
        self.pending: list[asyncio.Future[Any]] = []
        if fmt == "avro":
            from fastavro import parse_schema, schemaless_writer
            self._schema = parse_schema(AVRO_SCHEMA)
            self._schemaless_writer = schemaless_writer

    async def open(self) -> None:
        self.producer = self.factory(self.target)
        try:
            await self.producer.start()
        except Exception as exc:
            producer, self.producer = self.producer, None
            try:
                await producer.stop()
            except Exception:
                pass
            raise StreamError(f"cannot connect to Kafka at {','.join(self.target.servers)}: {exc}") from None

    async def write(self, records: list[Record]) -> int:
        send = self.producer.send
        topic = self.target.topic
        n = 0
        if self.fmt == "avro":
            content = b"application/avro; schema=tape.cdc.v1.ChangeEvent"
            for event in avro_events(records, self.tables, self.doc_format):
                buf = io.BytesIO()
                self._schemaless_writer(buf, self._schema, event)
                src = event["source"]
                headers = [("tape.offset", str(src["offset"]).encode()), ("content-type", content)]
                self.pending.append(await send(topic, value=buf.getvalue(), key=src["id"].encode(), headers=headers))
                n += 1
        else:
            content = b"application/json"
            for doc_id, offset, value in encode_changes(records, self.tables, self.doc_format):
                headers = [("tape.offset", str(offset).encode()), ("content-type", content)]
                self.pending.append(await send(topic, value=value, key=doc_id.encode(), headers=headers))
                n += 1
        return n

    async def commit(self) -> None:
        pending, self.pending = self.pending, []
        if pending:
            await asyncio.gather(*pending)  # raises if any message was not acknowledged

    async def close(self) -> None:
        try:
            await self.commit()
        finally:
            if self.producer is not None:
                await self.producer.stop()


# ----------------------------------------------------------------- the export loop


@dataclass
class StreamStats:
    records: int = 0
    events: int = 0
    seconds: float = 0.0
    next_offset: int = 0

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def run_stream(
    log_: Any,
    start: int,
    sink: Sink,
    *,
    follow: bool = False,
    until: int | None = None,
    state: StreamState | None = None,
    batch: int = 4096,
    on_batch: Callable[[StreamStats], Any] | None = None,
    state_extra: dict[str, Any] | None = None,
    stats: StreamStats | None = None,
) -> StreamStats:
    """Export the events of records from `start` (through `until`, inclusive) to `sink`.

    Without `follow` it stops at the end of the log as it is when called; with
    `follow` it waits for new records until cancelled. After each batch the
    sink commits and `state` records the next offset.
    """
    stats = stats if stats is not None else StreamStats()
    stats.next_offset = start
    began = time.perf_counter()
    end = None if follow else log_.next_offset()
    if until is not None:
        end = until + 1 if end is None else min(end, until + 1)
    if end is not None and start >= end:
        stats.seconds = time.perf_counter() - began
        return stats
    read_changes = getattr(log_, "read_changes", None)
    flat_encoder = getattr(sink, "flat_encoder", None)
    if end is not None and read_changes is not None and flat_encoder is not None:
        # The fast path: records decoded flat and encoded where they are read (see `FileLog.read_changes`).
        changes = read_changes(start, end, batch, flat_encoder())
        try:
            async for encoded, count, last_offset in changes:
                stats.events += await sink.write_encoded(encoded)
                stats.records += count
                if await _batch_done(sink, stats, last_offset + 1, began, state, state_extra, on_batch, end):
                    break
        finally:
            await changes.aclose()
            stats.seconds = time.perf_counter() - began
        return stats
    batches = log_.tail(start, batch) if end is None else log_.read(start, end, batch)
    try:
        async for records in batches:
            if end is not None and records[-1].offset >= end:
                records = [r for r in records if r.offset < end]
                if not records:
                    break
            stats.events += await sink.write(records)
            stats.records += len(records)
            if await _batch_done(sink, stats, records[-1].offset + 1, began, state, state_extra, on_batch, end):
                break
    finally:
        aclose = getattr(batches, "aclose", None)
        if aclose is not None:
            await aclose()
        stats.seconds = time.perf_counter() - began
    return stats


async def _batch_done(
    sink: Sink, stats: StreamStats, next_offset: int, began: float, state: StreamState | None,
    state_extra: dict[str, Any] | None, on_batch: Callable[[StreamStats], Any] | None, end: int | None,
) -> bool:
    """After a batch was written: commit the sink, save the state, report; returns whether `end` is reached."""
    await sink.commit()
    stats.next_offset = next_offset
    if state is not None:
        state.save(stats.next_offset, **(state_extra or {}))
    stats.seconds = time.perf_counter() - began
    if on_batch is not None:
        on_batch(stats)
    return end is not None and stats.next_offset >= end


async def start_offset(log_: Any, text: str | None) -> int:
    """The first offset to export for --from TEXT (bare number = offset)."""
    from ops.restore import parse_point
    if text is None:
        return 0
    point = parse_point(text, bare="offset")
    if point.kind == "end":
        return log_.next_offset()
    if point.kind == "offset":
        assert point.value is not None
        return max(point.value, 0)
    assert point.value is not None
    return await log_.offset_for_timestamp(point.value)


# ----------------------------------------------------------------- CLI


def register(subparsers: Any) -> None:
    """Add the `stream` sub-command (called by ops.cli)."""
    p = subparsers.add_parser("stream", help="export change events (CDC) to stdout, a file or Kafka",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    from ops.cli import CliError
    from ops.restore import RestoreError
    if args.kafka and args.out:
        raise CliError("use either --out FILE or --to kafka://..., not both")
    try:
        stats = asyncio.run(_stream_main(args))
    except (StreamError, RestoreError) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(str(exc)) from None
    if not args.quiet:
        from rich.console import Console
        err = Console(stderr=True, highlight=False)
        err.print(f"exported {stats.events:,} event(s) from {stats.records:,} record(s) in {stats.seconds:.2f}s "
                  f"({stats.events_per_second:,.0f} events/s); next offset {stats.next_offset}")


async def _stream_main(args: argparse.Namespace) -> StreamStats:
    from log.errors import LogError
    from ops.restore import open_source, parse_point, resolve_point
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


__all__ = [
    "AvroSink",
    "JsonlSink",
    "KafkaSink",
    "KafkaTarget",
    "Sink",
    "StreamError",
    "StreamState",
    "StreamStats",
    "parse_kafka_url",
    "register",
    "run_stream",
    "start_offset",
]
