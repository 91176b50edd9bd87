"""The unit of the commit log: one committed transaction = one `Record`."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Write:
    """One document written by a transaction.

    `doc` and `prev` are documents encoded with `values.encode_doc`
    (the storage encoding); `doc is None` marks a delete and `prev is None`
    an insert. Keeping `prev` lets change-data-capture emit before/after
    images without reading any other state.
    """

    table: str
    id: str
    doc: bytes | None
    prev: bytes | None = None
    #: in memory only (never encoded): the writer knows this update leaves every index key
    #: of the document as `prev` had it, so applying it only replaces the stored document
    same_index_keys: bool = field(default=False, compare=False, repr=False)


@dataclass(slots=True)
class Record:
    """A committed transaction.

    `offset` and `ts` are assigned by the log when the record is appended
    (offset dense from 0; ts unique, strictly increasing nanoseconds since the
    epoch). `session_id`/`request_id` identify the client request that made the
    commit so a retried mutation is answered from the log instead of being
    applied twice; `result` is its encoded return value.
    """

    writes: list[Write]
    offset: int = -1
    ts: int = 0
    session_id: str | None = None
    request_id: int | None = None
    function: str | None = None
    result: bytes | None = None
    extra: dict[str, str] = field(default_factory=dict)
