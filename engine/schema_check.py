"""Remembering that a projection's documents were checked against a schema, so a start need not re-check them.

`Runtime.install_app` validates every stored document against the app's schema.
That is linear in the data, so it is done once per (projection, schema): a
marker file in the projection directory (`projections.checkpoints.SCHEMA_MARKER`)
holds the fingerprint of the schema the documents were last checked against.
Every later write is validated by the committer against the schema it runs, so
the marker stays true while the schema is unchanged; a different schema
(another fingerprint) checks everything again. Checkpoints carry the marker
(a replica bootstrapped from one starts without the scan); a projection built
by replaying records after a checkpoint drops it (`history.build`).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from engine.schema import Schema
from projections.checkpoints import SCHEMA_MARKER


def schema_fingerprint(schema: Schema) -> str:
    """SHA-256 of what the schema checks: every table's validator (described) and strictness."""
    h = hashlib.sha256(b"tape.schema.v1\0strict=%d\0" % schema.strict)
    for name in sorted(schema.tables):
        validator = schema.tables[name].validator
        h.update(name.encode() + b"\0" + (validator.describe() if validator is not None else "-").encode() + b"\0")
    return h.hexdigest()


def checked_fingerprint(projection_dir: str | os.PathLike[str]) -> str | None:
    """The fingerprint the projection's documents were last checked against (None: never, or unknown)."""
    try:
        return (Path(projection_dir) / SCHEMA_MARKER).read_text().strip() or None
    except OSError:
        return None


def mark_checked(projection_dir: str | os.PathLike[str], fingerprint: str) -> None:
    """Record that every document was just checked against `fingerprint` (written atomically)."""
    path = Path(projection_dir) / SCHEMA_MARKER
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(fingerprint + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__ = ["checked_fingerprint", "mark_checked", "schema_fingerprint"]
