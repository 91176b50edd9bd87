"""Where change events go: JSON lines (a file or stdout), an Avro container file, or a Kafka topic.

A sink takes batches of log records, writes the change events of the
documents they wrote (`log.changes`) and, on `commit`, makes what it wrote
durable (a file fsynced, or every Kafka message acknowledged).
"""
from __future__ import annotations

import asyncio
import functools
import io
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from fastavro import parse_schema, schemaless_writer
from fastavro.write import Writer as AvroWriter

from history.errors import StreamError
from log.changes import AVRO_SCHEMA, TableFilter, avro_events, encode_changes, jsonl_chunk, jsonl_flat_chunk
from log.codec import FlatRecord, FlatWrite
from log.record import Record

FORMATS = ("jsonl", "avro")


class Sink:
    """Where events go. `write` takes a batch of records, `commit` makes what was written durable."""

    durable = False

    async def open(self) -> None:
        """Connect or prepare (the default does nothing)."""

    async def write(self, records: list[Record]) -> int:
        """Write the events of `records`; returns how many events."""
        raise NotImplementedError

    async def commit(self) -> None:
        """Make everything written so far durable (the default does nothing)."""

    async def close(self) -> None:
        """Commit and release the sink (the default does nothing)."""


class JsonlSink(Sink):
    """JSON lines to a binary stream (a file or stdout)."""

    def __init__(self, out: BinaryIO, tables: TableFilter, doc_format: str, *, sync: bool = False) -> None:
        self.out = out
        self.tables = tables
        self.doc_format = doc_format
        self.sync = sync
        self.durable = sync

    async def write(self, records: list[Record]) -> int:
        """Write one JSON line per event of `records`; returns how many."""
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
        """Flush the stream (and fsync it when `sync`)."""
        self.out.flush()
        if self.sync:
            os.fsync(self.out.fileno())

    async def close(self) -> None:
        """Commit; the caller closes the stream."""
        await self.commit()


class AvroSink(Sink):
    """An Avro object container file of `AVRO_SCHEMA` events (appended to when it exists)."""

    def __init__(self, out: BinaryIO, tables: TableFilter, doc_format: str, *, sync: bool = False,
                 append: bool = False) -> None:
        self.out = out
        self.tables = tables
        self.doc_format = doc_format
        self.sync = sync
        self.durable = sync
        schema = parse_schema(AVRO_SCHEMA)
        meta = {"tape.kind": "change-events", "tape.doc_format": doc_format}
        self.writer = AvroWriter(out, schema, codec="deflate", metadata=None if append else meta)

    async def write(self, records: list[Record]) -> int:
        """Add one Avro record per event of `records`; returns how many."""
        n = 0
        write = self.writer.write
        for event in avro_events(records, self.tables, self.doc_format):
            write(event)
            n += 1
        return n

    async def commit(self) -> None:
        """Write out the pending block and flush the stream (and fsync it when `sync`)."""
        self.writer.flush()
        self.out.flush()
        if self.sync:
            os.fsync(self.out.fileno())

    async def close(self) -> None:
        """Commit; the caller closes the stream."""
        await self.commit()


@dataclass
class KafkaTarget:
    """A parsed ``kafka://host:port[,host:port]/topic[?client_id=...]`` URL."""

    servers: list[str]
    topic: str
    options: dict[str, str]


def parse_kafka_url(url: str) -> KafkaTarget:
    """Parse a ``kafka://`` target URL (StreamError if it does not name exactly one topic)."""
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
    # aiokafka is imported only when events go to Kafka: it is heavy (~70 ms), and every other
    # `tape` command (and the server) would otherwise pay for it at start-up.
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
            self._schema = parse_schema(AVRO_SCHEMA)

    async def open(self) -> None:
        """Start the producer (StreamError if the brokers cannot be reached)."""
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
        """Send one message per event of `records` (acks are awaited on `commit`); returns how many."""
        send = self.producer.send
        topic = self.target.topic
        n = 0
        if self.fmt == "avro":
            content = b"application/avro; schema=tape.cdc.v1.ChangeEvent"
            for event in avro_events(records, self.tables, self.doc_format):
                buf = io.BytesIO()
                schemaless_writer(buf, self._schema, event)
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
        """Wait until every message sent so far is acknowledged."""
        pending, self.pending = self.pending, []
        if pending:
            await asyncio.gather(*pending)  # raises if any message was not acknowledged

    async def close(self) -> None:
        """Commit, then stop the producer."""
        try:
            await self.commit()
        finally:
            if self.producer is not None:
                await self.producer.stop()


__all__ = [
    "AvroSink",
    "FORMATS",
    "JsonlSink",
    "KafkaSink",
    "KafkaTarget",
    "ProducerFactory",
    "Sink",
    "parse_kafka_url",
]
