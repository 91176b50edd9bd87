"""Frame codec: round trips, agreement with fastavro, damage detection, versions."""
from __future__ import annotations

import io
import struct
import zlib

import pytest
from fastavro import schemaless_reader, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from log import codec
from log.errors import LogCorruptError, LogFormatError
from log.record import Record, Write

INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
TEXT = st.text(max_size=80)
BLOB = st.one_of(st.none(), st.binary(max_size=300))

writes_st = st.builds(Write, table=TEXT, id=TEXT, doc=BLOB, prev=BLOB)
records_st = st.builds(
    Record,
    writes=st.lists(writes_st, max_size=5),
    offset=st.integers(min_value=0, max_value=(1 << 63) - 1),
    ts=INT64,
    session_id=st.one_of(st.none(), TEXT),
    request_id=st.one_of(st.none(), INT64),
    function=st.one_of(st.none(), TEXT),
    result=BLOB,
    extra=st.dictionaries(TEXT, TEXT, max_size=4),
)


def sample(offset: int = 7, ts: int = 1_700_000_000_123_456_789) -> Record:
    return Record(
        writes=[
            Write("messages", "m1", b'{"body":"hi"}', None),
            Write("users", "u\u00e9", None, b'{"name":"x"}'),
            Write("t" * 70, "i" * 200, b"d" * 5000, b"p" * 64),
        ],
        offset=offset,
        ts=ts,
        session_id="sess-1",
        request_id=42,
        function="messages:send",
        result=b"null",
        extra={"k": "v", "schema": "2"},
    )


def test_round_trip_all_fields() -> None:
    rec = sample()
    assert codec.decode(codec.encode(rec)) == rec


def test_round_trip_minimal_record() -> None:
    rec = Record(writes=[], offset=0, ts=1)
    out = codec.decode(codec.encode(rec))
    assert out == rec
    assert out.session_id is None and out.request_id is None and out.extra == {}


def test_frame_header_layout() -> None:
    rec = sample(offset=123, ts=456)
    frame = codec.encode(rec)
    magic, version, length, offset, ts, crc = codec.HEADER.unpack_from(frame, 0)
    assert magic == codec.MAGIC
    assert version == codec.CURRENT_VERSION
    assert length == len(frame) - codec.HEADER_SIZE
    assert (offset, ts) == (123, 456)
    assert crc == zlib.crc32(frame[codec.HEADER_SIZE:], zlib.crc32(frame[:24]))


def test_body_is_plain_avro_of_the_registered_schema() -> None:
    """Payload + offset/ts prefix equals fastavro's encoding of the whole record."""
    rec = sample(offset=300, ts=-5)
    out = io.BytesIO()
    schemaless_writer(out, codec.CURRENT_SCHEMA, {
        "offset": rec.offset, "ts": rec.ts,
        "writes": [{"table": w.table, "id": w.id, "doc": w.doc, "prev": w.prev} for w in rec.writes],
        "session_id": rec.session_id, "request_id": rec.request_id, "function": rec.function,
        "result": rec.result, "extra": rec.extra,
    })
    assert codec.encode(rec)[codec.HEADER_SIZE:] == out.getvalue()


@settings(max_examples=300, deadline=None)
@given(records_st)
def test_property_round_trip(rec: Record) -> None:
    frame = codec.encode(rec)
    assert codec.decode(frame) == rec
    # the specialised decoder agrees with fastavro's generic reader
    assert codec.generic_decode_body(codec.CURRENT_VERSION, frame[codec.HEADER_SIZE:]) == rec


@settings(max_examples=100, deadline=None)
@given(st.lists(records_st, min_size=1, max_size=8), st.data())
def test_property_decode_frames_ranges(recs: list[Record], data: st.DataObject) -> None:
    for i, rec in enumerate(recs):
        rec.offset = i
    buf = b"".join(codec.encode(r) for r in recs)
    start = data.draw(st.integers(0, len(recs)))
    stop = data.draw(st.integers(start, len(recs) + 1))
    limit = data.draw(st.integers(1, 10))
    out, pos, done = codec.decode_frames(buf, 0, len(buf), start, stop, limit)
    want = recs[start:min(stop, len(recs))][:limit]
    assert out == want
    if done:  # stopped by the limit or by a frame at/after `stop`
        assert len(out) == limit or codec.HEADER.unpack_from(buf, pos)[3] >= stop
    else:  # ran out of data
        assert pos == len(buf)


def test_decode_frames_stops_at_partial_frame() -> None:
    frames = [codec.encode(sample(offset=i)) for i in range(3)]
    buf = b"".join(frames)
    cut = len(buf) - 10
    out, pos, done = codec.decode_frames(buf, 0, cut, 0, 100, 100)
    assert [r.offset for r in out] == [0, 1]
    assert pos == len(frames[0]) + len(frames[1])
    assert not done


def test_crc_mismatch_is_corruption() -> None:
    frame = bytearray(codec.encode(sample()))
    frame[codec.HEADER_SIZE + 20] ^= 0x01
    with pytest.raises(LogCorruptError, match="CRC"):
        codec.decode(bytes(frame))


def test_header_damage_is_caught_by_crc() -> None:
    frame = bytearray(codec.encode(sample(offset=5)))
    frame[8] ^= 0x01  # the offset field of the header
    with pytest.raises(LogCorruptError, match="CRC"):
        codec.decode(bytes(frame))


def test_short_frame_is_torn() -> None:
    frame = codec.encode(sample())
    for cut in (3, codec.HEADER_SIZE, len(frame) - 1):
        with pytest.raises(codec.FrameError) as info:
            codec.decode(frame[:cut])
        assert info.value.torn


def test_bad_magic() -> None:
    frame = b"XX" + codec.encode(sample())[2:]
    with pytest.raises(LogCorruptError, match="magic"):
        codec.decode(frame)


def _frame_with_version(version: int, body: bytes, offset: int = 0, ts: int = 1) -> bytes:
    prefix = struct.pack("<2sHIqq", codec.MAGIC, version, len(body), offset, ts)
    return prefix + struct.pack("<I", zlib.crc32(body, zlib.crc32(prefix))) + body


def test_unknown_schema_version_is_a_format_error() -> None:
    body = codec.encode(Record([], 0, 1))[codec.HEADER_SIZE:]
    frame = _frame_with_version(99, body)
    with pytest.raises(LogFormatError, match="version 99"):
        codec.decode(frame)
    with pytest.raises(LogFormatError):
        codec.decode_frames(frame, 0, len(frame), 0, 10, 10)


def test_registry_holds_version_one_from_its_schema_file() -> None:
    entry = codec.SCHEMAS[1]
    assert entry.version == 1
    names = [f["name"] for f in entry.schema["fields"]]
    assert names == ["offset", "ts", "writes", "session_id", "request_id", "function", "result", "extra"]
    assert codec.load_schema(1) == entry.schema


def test_old_versions_stay_readable_through_a_registered_generic_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registered version without a fast decoder is read with fastavro."""
    schema = codec.load_schema(1)
    monkeypatch.setitem(codec.SCHEMAS, 7, codec.SchemaVersion(7, schema, codec._generic_decoder(schema)))
    rec = sample(offset=3, ts=9)
    body = codec.encode(rec)[codec.HEADER_SIZE:]
    assert codec.decode(_frame_with_version(7, body, 3, 9)) == rec


def test_body_disagreeing_with_header_is_rejected() -> None:
    body = codec.encode(sample(offset=3, ts=9))[codec.HEADER_SIZE:]
    with pytest.raises(LogCorruptError):
        codec.decode(_frame_with_version(1, body, 300, 9))


def test_encode_payload_rejects_wrong_types() -> None:
    with pytest.raises(ValueError):
        codec.encode_payload(Record([Write("t", "id", "not bytes")]))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        codec.encode_payload(Record([Write("t", 5, None)]))  # type: ignore[arg-type]


# ------------------------------------------------ decode_frame_writes (the replay path)


def flat(recs: list[Record]) -> list[tuple]:
    return [(r.offset, w.table, w.id.encode(), w.doc, w.prev) for r in recs for w in r.writes]


@settings(max_examples=150, deadline=None)
@given(st.lists(records_st, min_size=1, max_size=8), st.data())
def test_property_decode_frame_writes_agrees_with_decode_frames(recs: list[Record], data: st.DataObject) -> None:
    for i, rec in enumerate(recs):
        rec.offset = i
    buf = b"".join(codec.encode(r) for r in recs)
    start = data.draw(st.integers(0, len(recs)))
    stop = data.draw(st.integers(start, len(recs) + 1))
    limit = data.draw(st.integers(1, 10))
    cut = data.draw(st.integers(0, len(buf)))  # the read buffer may end inside a frame
    want, want_pos, want_done = codec.decode_frames(buf, 0, cut, start, stop, limit)
    out: list[tuple] = [("already", "there")]
    n, last_off, last_ts, pos, done = codec.decode_frame_writes(buf, 0, cut, start, stop, limit, out)
    assert out[1:] == flat(want)
    assert (n, pos, done) == (len(want), want_pos, want_done)
    assert (last_off, last_ts) == ((want[-1].offset, want[-1].ts) if want else (-1, 0))


def test_decode_frame_writes_of_wide_records() -> None:
    """Long lengths and counts (multi-byte varints), tails it has seen before and not."""
    recs = [sample(offset=i) for i in range(3)]
    recs.append(Record([Write("t" * 70, "\u00e9" * 100, b"d" * 70, b"p" * 9000)] * 70, 3, 5, "s" * 100, -(1 << 40),
                       "f" * 64, b"r" * 200, {f"k{i}": "v" * 70 for i in range(70)}))
    recs.append(Record([], 4, 6, extra={"a": "b"}))
    recs.append(sample(offset=5))
    buf = b"".join(codec.encode(r) for r in recs)
    out: list[tuple] = []
    assert codec.decode_frame_writes(buf, 0, len(buf), 0, 100, 100, out) == (6, 5, recs[5].ts, len(buf), False)
    assert out == flat(recs)


def test_decode_frame_writes_checks_frames() -> None:
    good = codec.encode(sample(offset=0))
    bad = bytearray(codec.encode(sample(offset=1)))
    bad[codec.HEADER_SIZE + 20] ^= 0x01
    buf = good + bytes(bad)
    with pytest.raises(codec.FrameError, match="CRC") as info:
        codec.decode_frame_writes(buf, 0, len(buf), 0, 10, 10, [])
    assert info.value.pos == len(good)
    # frames skipped (below `start`) are not checked; as in decode_frames
    assert codec.decode_frame_writes(buf, 0, len(buf), 2, 10, 10, [])[:3] == (0, -1, 0)
    with pytest.raises(LogCorruptError, match="magic"):
        codec.decode_frame_writes(b"XX" + good[2:], 0, len(good), 0, 10, 10, [])
    body = codec.encode(Record([], 0, 1))[codec.HEADER_SIZE:]
    with pytest.raises(LogFormatError, match="version 99"):
        frame = _frame_with_version(99, body)
        codec.decode_frame_writes(frame, 0, len(frame), 0, 10, 10, [])
    # a body that does not parse, or does not fill its frame, is corruption
    for broken in (body[:-1], body + b"\x00", body[:2] + b"\x02\x7f" + body[3:]):
        frame = _frame_with_version(1, broken)
        with pytest.raises(codec.FrameError):
            codec.decode(frame)
        with pytest.raises(codec.FrameError):
            codec.decode_frame_writes(frame, 0, len(frame), 0, 10, 10, [])
    with pytest.raises(LogCorruptError):  # a body disagreeing with its header
        frame = _frame_with_version(1, codec.encode(sample(offset=3, ts=9))[codec.HEADER_SIZE:], 300, 9)
        codec.decode_frame_writes(frame, 0, len(frame), 0, 1000, 10, [])


def test_decode_frame_writes_reads_other_versions_generically(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = codec.load_schema(1)
    monkeypatch.setitem(codec.SCHEMAS, 7, codec.SchemaVersion(7, schema, codec._generic_decoder(schema)))
    rec = sample(offset=3, ts=9)
    frame = _frame_with_version(7, codec.encode(rec)[codec.HEADER_SIZE:], 3, 9)
    out: list[tuple] = []
    assert codec.decode_frame_writes(frame, 0, len(frame), 0, 10, 10, out) == (1, 3, 9, len(frame), False)
    assert out == flat([rec])


# ------------------------------------------------ the hand-written encoder vs fastavro

# Wider than `records_st`: lengths and counts past 63 (multi-byte varints),
# all of unicode (but surrogates, which UTF-8 cannot hold), empty strings.
WIDE_TEXT = st.one_of(st.text(max_size=8), st.text(min_size=60, max_size=300))
WIDE_BLOB = st.one_of(st.none(), st.just(b""), st.binary(max_size=80), st.binary(min_size=5000, max_size=20000))
wide_writes_st = st.builds(Write, table=WIDE_TEXT, id=WIDE_TEXT, doc=WIDE_BLOB, prev=WIDE_BLOB)
wide_records_st = st.builds(
    Record,
    writes=st.one_of(st.lists(wide_writes_st, max_size=4), st.lists(wide_writes_st, min_size=63, max_size=70)),
    offset=st.integers(min_value=0, max_value=(1 << 63) - 1),
    ts=INT64,
    session_id=st.one_of(st.none(), WIDE_TEXT),
    request_id=st.one_of(st.none(), st.integers(-70, 70), INT64),
    function=st.one_of(st.none(), WIDE_TEXT),
    result=WIDE_BLOB,
    extra=st.one_of(st.dictionaries(WIDE_TEXT, WIDE_TEXT, max_size=4),
                    st.dictionaries(st.text(max_size=10), st.text(max_size=3), min_size=64, max_size=80)),
)


@settings(max_examples=300, deadline=None)
@given(wide_records_st)
def test_property_encoder_matches_fastavro_byte_for_byte(rec: Record) -> None:
    payload = codec.encode_payload(rec)
    assert payload == codec.encode_payload_reference(rec)
    # fastavro's reader decodes what the hand-written encoder wrote
    assert schemaless_reader(io.BytesIO(payload), codec._PAYLOAD_SCHEMA, None) == {
        "writes": [{"table": w.table, "id": w.id, "doc": w.doc, "prev": w.prev} for w in rec.writes],
        "session_id": rec.session_id, "request_id": rec.request_id, "function": rec.function,
        "result": rec.result, "extra": rec.extra,
    }
    frame = codec.encode(rec)
    assert codec.generic_decode_body(codec.CURRENT_VERSION, frame[codec.HEADER_SIZE:]) == rec
    assert codec.decode(frame) == rec


class _Text(str):
    pass


@pytest.mark.codec_fallback
@pytest.mark.parametrize("rec", [
    Record([Write("t", "i", bytearray(b"x"), None)]),
    Record([Write(_Text("t"), "i", None, None)]),
    Record(tuple([Write("t", "i", b"", b"")])),  # type: ignore[arg-type]
    Record([], request_id=True),
    Record([], request_id=1 << 63),
    Record([], request_id=-(1 << 63) - 1),
    Record([], request_id=1.0),  # type: ignore[arg-type]
    Record([Write("t", "\ud800", None)]),
    Record([Write("t", "i", memoryview(b"x"))]),  # type: ignore[arg-type]
    Record([], extra={"a": 1}),  # type: ignore[dict-item]
    Record([], extra=None),  # type: ignore[arg-type]
    Record([], session_id=b"s"),  # type: ignore[arg-type]
    Record([], result="r"),  # type: ignore[arg-type]
])
def test_odd_inputs_are_encoded_or_refused_exactly_like_fastavro(rec: Record) -> None:
    try:
        want: object = codec.encode_payload_reference(rec)
    except ValueError:
        with pytest.raises(ValueError):
            codec.encode_payload(rec)
    else:
        assert codec.encode_payload(rec) == want


def test_plain_records_take_the_fast_encoder() -> None:
    """Records of plain types never fall back to fastavro, and encode as it would (speed is `tape bench`'s)."""
    recs = [Record([Write("messages", f"m{i}", b"x" * (i % 300), b"p" if i % 2 else None)] * (i % 4),
                   session_id="s" if i % 3 else None, request_id=i - 500 if i % 5 else None,
                   function="messages:send", result=b"null" if i % 7 else None, extra={"k": str(i)} if i % 11 else {})
            for i in range(2000)]
    before = codec.fallback_count()
    payloads = [codec.encode_payload(rec) for rec in recs]
    assert codec.fallback_count() == before
    assert payloads == [codec.encode_payload_reference(rec) for rec in recs]


@pytest.mark.codec_fallback
def test_a_fallback_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    before = codec.fallback_count()
    odd = Record([Write("t", "i", bytearray(b"x"), None)])
    with caplog.at_level("WARNING", logger="tape.log"):
        assert codec.encode_payload(odd) == codec.encode_payload_reference(odd)
        assert codec.encode_payload(odd) == codec.encode_payload_reference(odd)
    assert codec.fallback_count() == before + 2
    warned = [r for r in caplog.records if "fast record encoder declined" in r.getMessage()]
    assert len(warned) == (1 if before == 0 else 0)
    with pytest.raises(ValueError):  # refused by both encoders: not a fallback
        codec.encode_payload(Record([Write("t", "i", "not bytes")]))  # type: ignore[arg-type]
    assert codec.fallback_count() == before + 2


def test_current_frames_take_the_fast_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Version-1 bodies never go through fastavro's reader, and decode as it does (speed is `tape bench`'s)."""
    recs = [Record([Write("messages", f"m{i}", b"x" * (i % 300), b"p" if i % 2 else None)] * (i % 4),
                   i, 10**18 + i, session_id="s", request_id=i, function="f", result=b"1", extra={"k": "v"})
            for i in range(2000)]
    frames = b"".join(codec.encode(rec) for rec in recs)
    generic = [codec.generic_decode_body(codec.CURRENT_VERSION, codec.encode(rec)[codec.HEADER_SIZE:]) for rec in recs]

    def no_generic_reader(*args: object, **kwargs: object) -> object:
        raise AssertionError("the generic reader was used")

    monkeypatch.setattr(codec, "schemaless_reader", no_generic_reader)
    out, pos, done = codec.decode_frames(frames, 0, len(frames), 0, 1 << 62, 1 << 30)
    assert (pos, done) == (len(frames), False)
    assert out == generic == recs
    flat_writes: list = []
    assert codec.decode_frame_writes(frames, 0, len(frames), 0, 1 << 62, 1 << 30, flat_writes)[0] == len(recs)
    assert flat_writes == flat(recs)
