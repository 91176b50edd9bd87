"""The seams of the projection layer, named as protocols.

The engine reads through a `DocumentReader` (a transaction's view) and owns
a `ProjectionStore` (the reader plus the write path). `projections.store.Projection`
implements both on RocksDB; time travel's past projections are the same
class opened on a checkpoint.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence

from log.record import Record

Bound = tuple[Any, bool]
"""An index range bound: (value or tuple prefix, inclusive)."""


class DocumentReader(Protocol):
    """What a query or mutation reads: documents by id and ordered index keys."""

    @property
    def applied_offset(self) -> int:
        """Offset of the last applied log record (-1 when none)."""
        ...

    @property
    def applied_ts(self) -> int:
        """Commit timestamp (ns) of the last applied record (0 when none)."""
        ...

    def get(self, doc_id: str) -> bytes | None:
        """The stored encoding of document `doc_id`, or None."""
        ...

    def scan(self, lo: bytes, hi: bytes, reverse: bool = False) -> Iterator[tuple[bytes, str]]:
        """(index key, document id) for keys in [lo, hi), in key order or reversed."""
        ...

    def doc_key(self, doc_id: str, table: str | None = None) -> bytes:
        """The by_id index key of `doc_id`."""
        ...

    def index_keys(self, table: str, doc: dict[str, Any]) -> list[tuple[str, bytes]]:
        """Every (index name, key) `doc` occupies in `table`."""
        ...

    def index_prefix(self, table: str, index: str) -> bytes:
        """The key prefix shared by every entry of `index` on `table`."""
        ...

    def index_range(self, table: str, index: str, eq: Sequence[Any] = (), lower: Bound | None = None,
                    upper: Bound | None = None) -> tuple[bytes, bytes]:
        """The half-open key range [lo, hi) of an index range expression."""
        ...

    def iter_documents(self, table: str | None = None) -> Iterator[bytes]:
        """Stored encodings of every document of `table` (or of all tables)."""
        ...


class SnapshotReader(DocumentReader, Protocol):
    """A `DocumentReader` frozen at one applied offset, readable from any thread; close it when done."""

    def close(self) -> None:
        """Release the snapshot."""
        ...


class ProjectionStore(DocumentReader, Protocol):
    """A `DocumentReader` the engine also applies committed records to."""

    def apply(self, records: Iterable[Record]) -> None:
        """Apply durable records, in log order, atomically with their offset."""
        ...

    def set_indexes(self, indexes: Mapping[str, Mapping[str, list[str]]]) -> None:
        """Install a new index catalog (backfilling added indexes)."""
        ...

    def close(self) -> None:
        """Release the store; idempotent."""
        ...
