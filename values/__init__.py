"""The value model at the bottom of every layer: Convex values, their storage and wire encodings, and document ids.

Nothing here imports any other Tape package; the log, projections, engine and
gateway all build on it.
"""
from values.ids import new_id, table_of
from values.model import (
    INT64_MAX, INT64_MIN, MAX_ARRAY_LEN, MAX_DEPTH, MAX_DOC_BYTES, MAX_DOC_DEPTH, MAX_OBJECT_FIELDS,
    ConvexValueError, check_document, check_value, compact, decode_doc,
    decode_value, encode_doc, encode_value, from_wire, to_wire, wire_dumps,
)

__all__ = [
    "INT64_MAX", "INT64_MIN", "MAX_ARRAY_LEN", "MAX_DEPTH", "MAX_DOC_BYTES", "MAX_DOC_DEPTH", "MAX_OBJECT_FIELDS",
    "ConvexValueError", "check_document", "check_value", "compact",
    "decode_doc", "decode_value", "encode_doc", "encode_value", "from_wire", "new_id", "table_of",
    "to_wire", "wire_dumps",
]
