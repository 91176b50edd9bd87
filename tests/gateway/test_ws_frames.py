"""Server frames and prebuilt Transition bytes match what aiohttp and the protocol builders produce."""
from __future__ import annotations

import orjson
import pytest

from gateway import protocol as p
from gateway.ws_frames import text_frame, transition_payload, version_json


def _parse(frame: bytes) -> bytes:
    assert frame[0] == 0x81  # FIN + text, no RSV bits
    n = frame[1]
    assert not n & 0x80  # servers never mask
    if n == 126:
        n, head = int.from_bytes(frame[2:4], "big"), 4
    elif n == 127:
        n, head = int.from_bytes(frame[2:10], "big"), 10
    else:
        head = 2
    assert len(frame) == head + n
    return frame[head:]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_lengths(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert _parse(text_frame(payload)) == payload


def test_transition_payload_matches_the_protocol_builder() -> None:
    start, end = (1, 0, 0), (2, 1_700_000_000_123_456_789, 1)
    mods = [p.query_updated(0, {"a": 1}), p.query_removed(3)]
    built = transition_payload(start, end, [orjson.dumps(m) for m in mods])
    expected = p.transition_message(p.StateVersion(*start), p.StateVersion(*end), mods)
    assert orjson.loads(built) == expected
    assert version_json(*end) == orjson.dumps(p.StateVersion(*end).to_json())
    assert orjson.loads(transition_payload(end, end, [])) == p.transition_message(
        p.StateVersion(*end), p.StateVersion(*end), [])
