"""Record <-> frame codec: our own self-checking framing around an Avro body.

A frame is a fixed 28-byte little-endian header followed by the body::

    magic      2s   b"TL"
    version    u16  schema version of the body (see `SCHEMAS`)
    length     u32  body length in bytes
    offset     i64  the record's offset (copied from the body for fast scans)
    ts         i64  the record's commit timestamp (likewise)
    crc        u32  CRC32 of the first 24 header bytes followed by the body

The body is the Avro binary encoding of the record under the schema of that
version. Because an Avro record is the plain concatenation of its fields, and
`offset`/`ts` are the first two fields, the rest of the body (the *payload*)
can be encoded before the log assigns offset and timestamp: `encode_payload`
at append time, `frame_from_payload` at commit time.

Encoding and decoding the current version use a hand-written encoder and
decoder specialised to its schema (several times faster than fastavro's
generic writer and reader, which stay as the reference: tests check the
encoder's output is byte-identical to ``schemaless_writer``'s and the decoder
agrees with ``schemaless_reader``); older versions stay readable through
fastavro's generic reader with their registered schema.
"""
from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from log.errors import LogCorruptError, LogFormatError
from log.record import Record, Write

MAGIC = b"TL"
CURRENT_VERSION = 1
HEADER = struct.Struct("<2sHIqqI")
HEADER_SIZE = HEADER.size
_PREFIX = struct.Struct("<2sHIqq")
_CRC = struct.Struct("<I")
MAX_BODY = 1 << 30
_SCHEMA_DIR = Path(__file__).with_name("schemas")

logger = logging.getLogger("tape.log")

Buffer = bytes | bytearray | memoryview
BodyDecoder = Callable[[bytes, int, int, int, int], Record]


class FrameError(LogCorruptError):
    """A frame failed its checks at byte `pos` of the buffer.

    `torn` is True when the data merely ends before the frame does (what a
    crash in the middle of a write leaves behind).
    """

    def __init__(self, message: str, pos: int, torn: bool = False) -> None:
        super().__init__(message)
        self.pos = pos
        self.torn = torn


class UnknownSchemaError(LogFormatError):
    """A frame is intact but names a schema version this build cannot read."""

    def __init__(self, version: int, pos: int) -> None:
        known = ", ".join(str(v) for v in sorted(SCHEMAS))
        super().__init__(
            f"frame at byte {pos} uses record schema version {version}; "
            f"this build reads versions {known} (written by a newer Tape?)"
        )
        self.version = version
        self.pos = pos


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One registered record schema: its parsed Avro form and body decoder."""

    version: int
    schema: dict[str, Any]
    decode_body: BodyDecoder


def load_schema(version: int) -> dict[str, Any]:
    """Parse `schemas/record_v<version>.avsc` (raises LogFormatError if absent)."""
    path = _SCHEMA_DIR / f"record_v{version}.avsc"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise LogFormatError(f"no record schema file {path}") from exc
    return _parsed(raw)


def _parsed(raw: dict[str, Any]) -> dict[str, Any]:
    schema = parse_schema(raw)
    if not isinstance(schema, dict):
        raise LogFormatError("a record schema must be an Avro record")
    return schema


def _payload_schema() -> dict[str, Any]:
    """The current schema without its leading `offset` and `ts` fields."""
    raw = json.loads((_SCHEMA_DIR / f"record_v{CURRENT_VERSION}.avsc").read_text("utf-8"))
    names = [f["name"] for f in raw["fields"][:2]]
    if names != ["offset", "ts"]:
        raise LogFormatError("record schema must start with the offset and ts fields")
    raw["name"] = "RecordPayload"
    raw["fields"] = raw["fields"][2:]
    return _parsed(raw)


# ---------------------------------------------------------------- varints


def _zigzag(value: int) -> bytes:
    """Avro long encoding: zigzag, then little-endian base-128 varint."""
    n = (value << 1) ^ (value >> 63)
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _long(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode an Avro long at `pos`; returns (value, next position)."""
    b = buf[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


# _SMALL_LONG[b]: the long a varint of the single byte b encodes (None: b does not end the varint)
_SMALL_LONG = [(b >> 1) ^ -(b & 1) for b in range(128)] + [None] * 128
# _VARINT_LEN[n.bit_length()]: the bytes taken by the varint of (zigzagged) n
_VARINT_LEN = [(bits + 6) // 7 or 1 for bits in range(65)]
_VARINT_LEN1 = _VARINT_LEN[1:]  # _VARINT_LEN1[n.bit_length()]: the same for the long n >= 0 (zigzagged: 2n)


# ---------------------------------------------------------------- decoding


def _varint_len(value: int) -> int:
    """Bytes taken by the Avro encoding of long `value`."""
    return ((((value << 1) ^ (value >> 63)).bit_length() + 6) // 7) or 1


def _decode_v1(buf: bytes, pos: int, end: int, offset: int, ts: int) -> Record:
    """Decode a version-1 body occupying buf[pos:end] (specialised, no dicts).

    `offset` and `ts` come from the CRC-checked frame header; the body's own
    copies are skipped rather than decoded. Short lengths (< 64) take the
    one-byte fast path; anything longer goes through `_long`.
    """
    try:
        vlen1 = _VARINT_LEN1
        pos += vlen1[offset.bit_length()] if offset >= 0 else _varint_len(offset)
        if buf[pos - 1] & 0x80:
            raise FrameError("record body offset disagrees with the frame header", pos)
        pos += vlen1[ts.bit_length()] if ts >= 0 else _varint_len(ts)
        if buf[pos - 1] & 0x80:
            raise FrameError("record body ts disagrees with the frame header", pos)
        writes: list[Write] = []
        b = buf[pos]
        if b < 0x80:
            count = (b >> 1) ^ -(b & 1)
            pos += 1
        else:
            count, pos = _long(buf, pos)
        while count:
            if count < 0:  # a block that carries its byte size: skip the size
                count = -count
                _, pos = _long(buf, pos)
            for _ in range(count):
                b = buf[pos]
                if b < 0x80:
                    n = b >> 1
                    pos += 1
                else:
                    n, pos = _long(buf, pos)
                table = buf[pos:pos + n].decode()
                pos += n
                b = buf[pos]
                if b < 0x80:
                    n = b >> 1
                    pos += 1
                else:
                    n, pos = _long(buf, pos)
                ident = buf[pos:pos + n].decode()
                pos += n
                if buf[pos]:
                    b = buf[pos + 1]
                    if b < 0x80:
                        n = b >> 1
                        pos += 2
                    elif buf[pos + 2] < 0x80:  # a two-byte length (inlined)
                        n = ((b & 0x7F) | (buf[pos + 2] << 7)) >> 1
                        pos += 3
                    else:
                        n, pos = _long(buf, pos + 1)
                    doc: bytes | None = buf[pos:pos + n]
                    pos += n
                else:
                    doc = None
                    pos += 1
                if buf[pos]:
                    b = buf[pos + 1]
                    if b < 0x80:
                        n = b >> 1
                        pos += 2
                    elif buf[pos + 2] < 0x80:
                        n = ((b & 0x7F) | (buf[pos + 2] << 7)) >> 1
                        pos += 3
                    else:
                        n, pos = _long(buf, pos + 1)
                    prev: bytes | None = buf[pos:pos + n]
                    pos += n
                else:
                    prev = None
                    pos += 1
                writes.append(Write(table, ident, doc, prev))
            b = buf[pos]
            if b < 0x80:
                count = (b >> 1) ^ -(b & 1)
                pos += 1
            else:
                count, pos = _long(buf, pos)
        if buf[pos]:
            b = buf[pos + 1]
            if b < 0x80:
                n = b >> 1
                pos += 2
            else:
                n, pos = _long(buf, pos + 1)
            session_id: str | None = buf[pos:pos + n].decode()
            pos += n
        else:
            session_id = None
            pos += 1
        if buf[pos]:
            b = buf[pos + 1]
            if b < 0x80:
                request_id: int | None = (b >> 1) ^ -(b & 1)
                pos += 2
            else:
                request_id, pos = _long(buf, pos + 1)
        else:
            request_id = None
            pos += 1
        if buf[pos]:
            b = buf[pos + 1]
            if b < 0x80:
                n = b >> 1
                pos += 2
            else:
                n, pos = _long(buf, pos + 1)
            function: str | None = buf[pos:pos + n].decode()
            pos += n
        else:
            function = None
            pos += 1
        if buf[pos]:
            b = buf[pos + 1]
            if b < 0x80:
                n = b >> 1
                pos += 2
            else:
                n, pos = _long(buf, pos + 1)
            result: bytes | None = buf[pos:pos + n]
            pos += n
        else:
            result = None
            pos += 1
        extra: dict[str, str] = {}
        if buf[pos]:
            count, pos = _long(buf, pos)
            while count:
                if count < 0:
                    count = -count
                    _, pos = _long(buf, pos)
                for _ in range(count):
                    n, pos = _long(buf, pos)
                    key = buf[pos:pos + n].decode()
                    pos += n
                    n, pos = _long(buf, pos)
                    extra[key] = buf[pos:pos + n].decode()
                    pos += n
                count, pos = _long(buf, pos)
        else:
            pos += 1
    except (IndexError, UnicodeDecodeError) as exc:
        raise FrameError(f"undecodable record body: {exc}", pos) from exc
    if pos != end:
        raise FrameError(f"record body has {end - pos} stray trailing bytes", pos)
    return Record(writes, offset, ts, session_id, request_id, function, result, extra)


def record_from_dict(data: dict[str, Any]) -> Record:
    """Build a Record from a generically decoded Avro dict (any schema version)."""
    return Record(
        writes=[Write(w["table"], w["id"], w.get("doc"), w.get("prev")) for w in data["writes"]],
        offset=data["offset"],
        ts=data["ts"],
        session_id=data.get("session_id"),
        request_id=data.get("request_id"),
        function=data.get("function"),
        result=data.get("result"),
        extra=dict(data.get("extra") or {}),
    )


def _generic_decoder(schema: dict[str, Any]) -> BodyDecoder:
    """A body decoder for any registered schema via fastavro's generic reader."""

    def decode(buf: bytes, pos: int, end: int, offset: int, ts: int) -> Record:
        try:
            data = schemaless_reader(io.BytesIO(buf[pos:end]), schema, None)
        except Exception as exc:  # fastavro raises assorted errors on bad input
            raise FrameError(f"undecodable record body: {exc!r}", pos) from exc
        rec = record_from_dict(data)  # type: ignore[arg-type]
        if rec.offset != offset or rec.ts != ts:
            raise FrameError("record body offset/ts disagree with the frame header", pos)
        return rec

    return decode


def _build_registry() -> dict[int, SchemaVersion]:
    v1 = load_schema(1)
    return {1: SchemaVersion(1, v1, _decode_v1)}


SCHEMAS: dict[int, SchemaVersion] = _build_registry()
CURRENT_SCHEMA: dict[str, Any] = SCHEMAS[CURRENT_VERSION].schema
_PAYLOAD_SCHEMA = _payload_schema()


def generic_decode_body(version: int, body: bytes) -> Record:
    """Decode a body with fastavro's generic reader (reference implementation)."""
    try:
        schema = SCHEMAS[version].schema
    except KeyError:
        raise UnknownSchemaError(version, 0) from None
    data = schemaless_reader(io.BytesIO(body), schema, None)
    return record_from_dict(data)  # type: ignore[arg-type]


# ---------------------------------------------------------------- encoding


def encode_payload(record: Record) -> bytes:
    """Avro-encode everything in `record` except `offset` and `ts`.

    Hand-written for the current schema (the hot path: every commit pays it
    on the writer): the same bytes as fastavro's ``schemaless_writer``
    (`encode_payload_reference`), which tests check. Anything but the plain
    types (``str``, ``bytes``, ``int`` within int64, a ``dict`` of ``str``,
    a ``list`` of writes) goes through the reference writer, so odd inputs
    are encoded, or refused, exactly as fastavro does.

    Raises ValueError/TypeError when a field has the wrong type, so a bad
    record fails its own append and nobody else's. A record the hand-written
    encoder declines but the reference encodes is a *fallback*: counted (see
    `fallback_count`) and, the first time, logged at WARNING, as every
    record the engine builds is of the plain types.
    """
    try:
        return _encode_payload_v1(record)
    except Exception as exc:  # _NotPlain, or e.g. a write without a `table`: let fastavro decide
        payload = encode_payload_reference(record)  # (raises ValueError for a record it refuses too)
        _note_fallback(record, exc)
        return payload


_fallbacks = 0


def fallback_count() -> int:
    """How many records `encode_payload` has encoded through the reference encoder in this process.

    Those are records its hand-written fast path declined (fields of other
    than the plain types, or a fast-path bug) that fastavro's generic writer
    encoded; records that both refuse are not counted.
    """
    return _fallbacks


def _note_fallback(record: Record, exc: Exception) -> None:
    """Count one fallback of `encode_payload`; log the first at WARNING."""
    global _fallbacks
    _fallbacks += 1
    if _fallbacks == 1:
        reason = "a field of a type it does not handle" if isinstance(exc, _NotPlain) else repr(exc)
        logger.warning(
            "log codec: the fast record encoder declined a record (%s; function %r), which the generic "
            "encoder then wrote; further fallbacks are only counted (log.codec.fallback_count)",
            reason, record.function)


class _NotPlain(Exception):
    """A field is not of a plain type `_encode_payload_v1` handles itself."""


# _SMALL[n]: the one-byte Avro encoding of 0 <= n < 64 (lengths and counts).
_SMALL = [bytes((n << 1,)) for n in range(64)]
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


def _encode_payload_v1(record: Record) -> bytes:
    """The v1 payload of `record`; raises `_NotPlain` for values to leave to fastavro."""
    small = _SMALL
    out = bytearray()
    writes = record.writes
    if type(writes) is not list:
        raise _NotPlain
    n = len(writes)
    if n:
        out += small[n] if n < 64 else _zigzag(n)
        for w in writes:
            table = w.table
            ident = w.id
            doc = w.doc
            prev = w.prev
            if type(table) is not str or type(ident) is not str:
                raise _NotPlain
            try:
                raw = table.encode()
                n = len(raw)
                out += small[n] if n < 64 else _zigzag(n)
                out += raw
                raw = ident.encode()
            except UnicodeEncodeError:
                raise _NotPlain from None
            n = len(raw)
            out += small[n] if n < 64 else _zigzag(n)
            out += raw
            if doc is None:
                out.append(0)
            elif type(doc) is bytes:
                n = len(doc)
                out.append(2)
                out += small[n] if n < 64 else _zigzag(n)
                out += doc
            else:
                raise _NotPlain
            if prev is None:
                out.append(0)
            elif type(prev) is bytes:
                n = len(prev)
                out.append(2)
                out += small[n] if n < 64 else _zigzag(n)
                out += prev
            else:
                raise _NotPlain
    out.append(0)  # end of the writes array (or the whole of an empty one)
    value = record.session_id
    if value is None:
        out.append(0)
    elif type(value) is str:
        try:
            raw = value.encode()
        except UnicodeEncodeError:
            raise _NotPlain from None
        n = len(raw)
        out.append(2)
        out += small[n] if n < 64 else _zigzag(n)
        out += raw
    else:
        raise _NotPlain
    value = record.request_id
    if value is None:
        out.append(0)
    elif type(value) is int and _INT64_MIN <= value <= _INT64_MAX:
        out.append(2)
        out += small[value] if 0 <= value < 64 else _zigzag(value)
    else:
        raise _NotPlain
    value = record.function
    if value is None:
        out.append(0)
    elif type(value) is str:
        try:
            raw = value.encode()
        except UnicodeEncodeError:
            raise _NotPlain from None
        n = len(raw)
        out.append(2)
        out += small[n] if n < 64 else _zigzag(n)
        out += raw
    else:
        raise _NotPlain
    value = record.result
    if value is None:
        out.append(0)
    elif type(value) is bytes:
        n = len(value)
        out.append(2)
        out += small[n] if n < 64 else _zigzag(n)
        out += value
    else:
        raise _NotPlain
    extra = record.extra
    if type(extra) is not dict:
        raise _NotPlain
    if extra:
        n = len(extra)
        out += small[n] if n < 64 else _zigzag(n)
        try:
            for key, value in extra.items():
                if type(key) is not str or type(value) is not str:
                    raise _NotPlain
                raw = key.encode()
                n = len(raw)
                out += small[n] if n < 64 else _zigzag(n)
                out += raw
                raw = value.encode()
                n = len(raw)
                out += small[n] if n < 64 else _zigzag(n)
                out += raw
        except UnicodeEncodeError:
            raise _NotPlain from None
    out.append(0)  # end of the extra map
    return bytes(out)


def encode_payload_reference(record: Record) -> bytes:
    """`encode_payload` through fastavro's generic ``schemaless_writer`` (the reference)."""
    data = {
        "writes": [
            {"table": w.table, "id": w.id, "doc": w.doc, "prev": w.prev}
            for w in record.writes
        ],
        "session_id": record.session_id,
        "request_id": record.request_id,
        "function": record.function,
        "result": record.result,
        "extra": record.extra,
    }
    out = io.BytesIO()
    try:
        schemaless_writer(out, _PAYLOAD_SCHEMA, data)
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise ValueError(f"record cannot be encoded: {exc}") from exc
    return out.getvalue()


def frame_from_payload(payload: bytes, offset: int, ts: int) -> bytes:
    """Complete an `encode_payload` result into a frame for `offset`/`ts`."""
    head = _zigzag(offset) + _zigzag(ts)
    prefix = _PREFIX.pack(MAGIC, CURRENT_VERSION, len(head) + len(payload), offset, ts)
    crc = zlib.crc32(payload, zlib.crc32(head, zlib.crc32(prefix)))
    return b"".join((prefix, _CRC.pack(crc), head, payload))


def encode(record: Record) -> bytes:
    """Encode `record` (with its offset and ts already set) as one frame."""
    return frame_from_payload(encode_payload(record), record.offset, record.ts)


# ---------------------------------------------------------------- frames


def check_frame(buf: bytes, pos: int, end: int) -> tuple[int, int, int, int]:
    """Verify the frame at buf[pos:] (not reading past `end`) without decoding it.

    Returns (schema version, offset, ts, position after the frame). Raises
    FrameError (torn=True if the frame is cut short by `end`) or
    UnknownSchemaError for an intact frame of an unknown version.
    """
    if end - pos < HEADER_SIZE:
        raise FrameError(f"short frame header ({end - pos} of {HEADER_SIZE} bytes)", pos, True)
    magic, version, length, offset, ts, crc = HEADER.unpack_from(buf, pos)
    if magic != MAGIC:
        raise FrameError(f"bad frame magic {magic!r}", pos)
    if length > MAX_BODY:
        raise FrameError(f"implausible frame body length {length}", pos)
    body = pos + HEADER_SIZE
    stop = body + length
    if stop > end:
        raise FrameError(f"short frame body ({end - body} of {length} bytes)", pos, True)
    view = memoryview(buf)
    if zlib.crc32(view[body:stop], zlib.crc32(view[pos:pos + 24])) != crc:
        raise FrameError("frame CRC mismatch", pos)
    if version not in SCHEMAS:
        raise UnknownSchemaError(version, pos)
    return version, offset, ts, stop


def decode_frames(
    buf: bytes, pos: int, end: int, start: int, stop: int, limit: int
) -> tuple[list[Record], int, bool]:
    """Decode consecutive frames from buf[pos:end].

    Skips (without decoding) frames whose offset is below `start`; ends before
    the first frame with offset >= `stop`, after `limit` records, or when the
    next frame does not fit before `end` (a frame cut by the read buffer).
    Returns (records, position of the first frame not consumed, done) where
    `done` is True when `stop` or `limit` was reached. Raises FrameError for
    a damaged frame.
    """
    out: list[Record] = []
    append = out.append
    unpack = HEADER.unpack_from
    crc32 = zlib.crc32
    hsize = HEADER_SIZE
    schemas = SCHEMAS
    while pos + hsize <= end:
        magic, version, length, offset, ts, crc = unpack(buf, pos)
        if magic != MAGIC:
            raise FrameError(f"bad frame magic {magic!r}", pos)
        if offset >= stop:
            return out, pos, True
        body = pos + hsize
        nxt = body + length
        if nxt > end:
            break
        if offset >= start:
            data = buf[body:nxt]  # (positions in a body of its own are mostly small, cached ints)
            if crc32(data, crc32(buf[pos:pos + 24])) != crc:
                raise FrameError("frame CRC mismatch", pos)
            entry = schemas.get(version)
            if entry is None:
                raise UnknownSchemaError(version, pos)
            try:
                rec = entry.decode_body(data, 0, length, offset, ts)
            except FrameError as exc:
                raise FrameError(str(exc), pos) from exc
            append(rec)
            if len(out) >= limit:
                return out, nxt, True
        pos = nxt
    return out, pos, False


FlatWrite = tuple[int, str, bytes, "bytes | None", "bytes | None"]
"""One write as `decode_frame_writes` collects it: (record offset, table, id as UTF-8, doc, prev)."""

FlatRecord = tuple[int, int, "str | None", int]
"""One record as `decode_frame_writes` may note it: (offset, ts, function, end of its writes in the write list)."""


def decode_frame_writes(
    buf: bytes, pos: int, end: int, start: int, stop: int, limit: int, out: list[FlatWrite],
    records: list[FlatRecord] | None = None,
) -> tuple[int, int, int, int, bool]:
    """`decode_frames`, keeping only the writes: appends one `FlatWrite` per write to `out`.

    For replaying the log into a projection, which needs nothing else of a
    record: no `Record`/`Write` objects are built, the document id stays
    bytes, and the rest of a version-1 body is only walked over (checking
    its structure, as the CRC already vouches for its content). Frames are
    checked exactly as by `decode_frames`, and the same positions and
    `start`/`stop`/`limit` rules apply. Returns (records consumed, offset and
    ts of the last one (-1 and 0 if none), position of the first frame not
    consumed, done). With `records`, also appends a `FlatRecord` per record
    (for exporting changes, which need each record's ts and function too).
    """
    append = out.append
    noting = records is not None
    unpack = HEADER.unpack_from
    crc32 = zlib.crc32
    long_ = _long
    hsize = HEADER_SIZE
    tables: dict[bytes, str] = {}
    table = ""
    table_enc: bytes | tuple[()] = ()  # an empty tuple of prefixes matches nothing
    good_tails: dict[bytes, str | None] = {}  # tail -> its function (when `noting`)
    function: str | None = None
    vlen = _VARINT_LEN
    small_long = _SMALL_LONG
    vlen1 = _VARINT_LEN1
    count = 0
    last_off = -1
    last_ts = 0
    while pos + hsize <= end:
        magic, version, length, offset, ts, crc = unpack(buf, pos)
        if magic != MAGIC:
            raise FrameError(f"bad frame magic {magic!r}", pos)
        if offset >= stop:
            return count, last_off, last_ts, pos, True
        body = pos + hsize
        nxt = body + length
        if nxt > end:
            break
        if offset >= start:
            data = buf[body:nxt]  # (positions in a body of its own are mostly small, cached ints)
            if crc32(data, crc32(buf[pos:pos + 24])) != crc:
                raise FrameError("frame CRC mismatch", pos)
            if version != 1:
                function = _flat_writes(buf, pos, body, nxt, version, offset, ts, out)
            else:
                try:
                    # The body's own offset and ts (the header's, if their lengths agree).
                    if offset >= 0:
                        p = vlen1[offset.bit_length()]
                    else:
                        p = vlen[((offset << 1) ^ (offset >> 63)).bit_length()]
                    if data[p - 1] & 0x80:
                        raise FrameError("record body offset disagrees with the frame header", pos)
                    p += vlen1[ts.bit_length()] if ts >= 0 else vlen[((ts << 1) ^ (ts >> 63)).bit_length()]
                    if data[p - 1] & 0x80:
                        raise FrameError("record body ts disagrees with the frame header", pos)
                    n_items = small_long[data[p]]
                    if n_items is not None:
                        p += 1
                    else:
                        n_items, p = long_(data, p)
                    while n_items:
                        if n_items < 0:  # a block that carries its byte size: skip the size
                            n_items = -n_items
                            _, p = long_(data, p)
                        while n_items:
                            n_items -= 1
                            if data.startswith(table_enc, p):  # the table of the write before
                                p += len(table_enc)
                            else:
                                b = data[p]
                                if b < 0x80:
                                    q = p + 1
                                    n = b >> 1
                                else:
                                    n, q = long_(data, p)
                                raw = data[q:q + n]
                                table = tables.get(raw)
                                if table is None:
                                    table = tables[raw] = raw.decode()
                                table_enc = data[p:q + n]  # its length and name, as encoded
                                p = q + n
                            b = data[p]
                            if b < 0x80:
                                q = p + 1 + (b >> 1)
                                ident = data[p + 1:q]
                            else:
                                n, p = long_(data, p)
                                q = p + n
                                ident = data[p:q]
                            if not ident.isascii():
                                ident.decode()  # only to check it is UTF-8
                            # doc and prev: a union index, then a length of one or two bytes (inlined) or more
                            if data[q]:
                                b = data[q + 1]
                                if b < 0x80:
                                    p = q + 2 + (b >> 1)
                                    doc: bytes | None = data[q + 2:p]
                                elif data[q + 2] < 0x80:
                                    p = q + 3 + (((b & 0x7F) | (data[q + 2] << 7)) >> 1)
                                    doc = data[q + 3:p]
                                else:
                                    n, q = long_(data, q + 1)
                                    p = q + n
                                    doc = data[q:p]
                            else:
                                doc = None
                                p = q + 1
                            if data[p]:
                                b = data[p + 1]
                                if b < 0x80:
                                    q = p + 2 + (b >> 1)
                                    append((offset, table, ident, doc, data[p + 2:q]))
                                elif data[p + 2] < 0x80:
                                    q = p + 3 + (((b & 0x7F) | (data[p + 2] << 7)) >> 1)
                                    append((offset, table, ident, doc, data[p + 3:q]))
                                else:
                                    n, p = long_(data, p + 1)
                                    q = p + n
                                    append((offset, table, ident, doc, data[p:q]))
                                p = q
                            else:
                                append((offset, table, ident, doc, None))
                                p += 1
                        n_items = small_long[data[p]]
                        if n_items is not None:
                            p += 1
                        else:
                            n_items, p = long_(data, p)
                    # session_id, request_id, function, result and extra: walked over,
                    # or recognised as a tail already seen intact in this buffer
                    tail = data[p:length]
                    function = good_tails.get(tail, _NOT_SEEN)  # type: ignore[arg-type]
                    if function is not _NOT_SEEN:
                        p = length
                    else:
                        if data[p]:
                            b = data[p + 1]
                            if b < 0x80:
                                p += 2 + (b >> 1)
                            else:
                                n, p = long_(data, p + 1)
                                p += n
                        else:
                            p += 1
                        if data[p]:
                            _, p = long_(data, p + 1)
                        else:
                            p += 1
                        if data[p]:  # function
                            b = data[p + 1]
                            if b < 0x80:
                                q = p + 2
                                p = q + (b >> 1)
                            else:
                                n, q = long_(data, p + 1)
                                p = q + n
                            function = data[q:p].decode() if noting else None
                        else:
                            function = None
                            p += 1
                        if data[p]:
                            b = data[p + 1]
                            if b < 0x80:
                                p += 2 + (b >> 1)
                            else:
                                n, p = long_(data, p + 1)
                                p += n
                        else:
                            p += 1
                        if data[p]:  # extra: a map of string -> string
                            n_items, p = long_(data, p)
                            while n_items:
                                if n_items < 0:
                                    n_items = -n_items
                                    _, p = long_(data, p)
                                for _ in range(n_items):
                                    n, p = long_(data, p)
                                    p += n
                                    n, p = long_(data, p)
                                    p += n
                                n_items, p = long_(data, p)
                        else:
                            p += 1
                        if p == length and len(good_tails) < 64:
                            good_tails[tail] = function
                except (IndexError, UnicodeDecodeError) as exc:
                    raise FrameError(f"undecodable record body: {exc}", pos) from exc
                if p != length:
                    raise FrameError(f"record body has {length - p} stray trailing bytes", pos)
            if noting:
                records.append((offset, ts, function, len(out)))  # type: ignore[union-attr]
            count += 1
            last_off = offset
            last_ts = ts
            if count >= limit:
                return count, last_off, last_ts, nxt, True
        pos = nxt
    return count, last_off, last_ts, pos, False


def _flat_writes(
    buf: bytes, pos: int, body: int, end: int, version: int, offset: int, ts: int, out: list[FlatWrite]
) -> str | None:
    """`decode_frame_writes` for a body of another schema version: decode it, flatten; returns its function."""
    entry = SCHEMAS.get(version)
    if entry is None:
        raise UnknownSchemaError(version, pos)
    try:
        rec = entry.decode_body(buf, body, end, offset, ts)
        out.extend([(offset, w.table, w.id.encode(), w.doc, w.prev) for w in rec.writes])
    except FrameError as exc:
        raise FrameError(str(exc), pos) from exc
    return rec.function


_NOT_SEEN: Any = object()


def decode(frame: bytes) -> Record:
    """Decode one complete frame (raises LogCorruptError / LogFormatError)."""
    version, offset, ts, stop = check_frame(frame, 0, len(frame))
    if stop != len(frame):
        raise FrameError(f"{len(frame) - stop} stray bytes after the frame", stop)
    return SCHEMAS[version].decode_body(frame, HEADER_SIZE, stop, offset, ts)
