"""Server-side WebSocket framing and the wire bytes of Transitions, built once and reused.

A sync session writes frames straight to its transport: a server frame is
an unmasked header plus the payload, so a frame built once can be written
to any number of sockets. `transition_payload` assembles a Transition from
pre-serialised modifications; `version_json` caches the JSON of the few
distinct ``{querySet, ts, identity}`` versions in use at any moment.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import orjson

from gateway.protocol import encode_ts

TEXT = 0x81  # FIN + text opcode

QUERY_UPDATED = b'{"type":"QueryUpdated","queryId":%d,"value":%s,"logLines":[],"journal":null}'
"""A ``QueryUpdated`` modification: ``QUERY_UPDATED % (query id, the value's Convex JSON)``."""

QUERY_UPDATED_FULL = b'{"type":"QueryUpdated","queryId":%d,"value":%s,"logLines":%s,"journal":%s}'
"""With log lines and a journal: ``% (query id, value JSON, the lines as a JSON array, journal JSON)``."""


def query_updated_bytes(query_id: int, value_json: bytes, journal: str | None = None,
                        log_lines_json: bytes = b"[]") -> bytes:
    """The ``QueryUpdated`` modification bytes, with the function's log lines (a JSON array) and the
    query's journal (a paginated page's end) when there are any."""
    if journal is None and log_lines_json == b"[]":
        return QUERY_UPDATED % (query_id, value_json)
    return QUERY_UPDATED_FULL % (query_id, value_json, log_lines_json, orjson.dumps(journal))


def text_frame(payload: bytes) -> bytes:
    """One complete, unmasked server text frame carrying `payload`."""
    n = len(payload)
    if n < 126:
        return bytes((TEXT, n)) + payload
    if n < 1 << 16:
        return bytes((TEXT, 126)) + n.to_bytes(2, "big") + payload
    return bytes((TEXT, 127)) + n.to_bytes(8, "big") + payload


@lru_cache(maxsize=4096)
def version_json(query_set: int, ts: int, identity: int) -> bytes:
    """The wire JSON of a StateVersion ``{querySet, ts: encoded u64, identity}``."""
    return b'{"querySet":%d,"ts":"%s","identity":%d}' % (query_set, encode_ts(ts).encode("ascii"), identity)


def transition_payload(start: tuple[int, int, int], end: tuple[int, int, int], modifications: Sequence[bytes]) -> bytes:
    """A Transition message from version `start` to `end` (``(querySet, ts, identity)`` tuples)."""
    return b"".join((b'{"type":"Transition","startVersion":', version_json(*start),
                     b',"endVersion":', version_json(*end),
                     b',"modifications":[', b",".join(modifications), b"]}"))
