"""Read views of a projection frozen at one applied offset, for queries that run off the event loop.

A query moved to a worker thread must see one consistent state while the
projection goes on applying new records. RocksDB snapshots would do, but
rocksdict 0.3.29's snapshot iterators ignore the snapshot (point reads honour
it, range scans do not), so the view is rebuilt from the log's own records
instead: while any view is open, every applied batch is also kept in a
`SnapshotJournal`, *before* it is written. A view at offset S reads the live
projection and then undoes what batches after S changed:

* `get(id)`: the live document, unless a batch after S wrote it; then the
  ``prev`` image of the first such write, which is the document as of S.
* `scan(lo, hi)`: the live scan without the entries of documents written
  after S, merged with those documents' index keys as of S.

Reading the live state first and the journal second makes this exact: any
batch the live read reflects is already in the journal.
"""
from __future__ import annotations

import heapq
import threading
from typing import Any, Iterable, Iterator, Sequence

from values import decode_doc
from log.record import Record

from .types import Bound, DocumentReader

_Touched = dict[str, tuple[str, "bytes | None"]]  # document id -> (table, its encoding as of the view)


class SnapshotJournal:
    """Applied batches kept while read views need them (nothing is kept while none is open)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batches: list[tuple[int, list[Record]]] = []  # (offset of the batch's first record, records)
        self.version = 0  # bumped by every recorded batch: views cache what they derived per version
        self._open: dict[int, int] = {}  # view id -> its offset
        self._next_view = 0

    def record(self, records: list[Record]) -> None:
        """Keep `records` for the open views (call before applying them to the projection)."""
        if self._open and records:
            with self._lock:
                self._batches.append((records[0].offset, list(records)))
                self.version += 1

    def open(self, live: DocumentReader) -> "ProjectionSnapshot":
        """A view of `live` as of its current applied offset (call on the thread that applies)."""
        with self._lock:
            view = self._next_view
            self._next_view += 1
            self._open[view] = live.applied_offset
        return ProjectionSnapshot(live, self, view, live.applied_offset, live.applied_ts)

    def close(self, view: int) -> None:
        with self._lock:
            self._open.pop(view, None)
            if not self._open:
                self._batches.clear()
                return
            oldest = min(self._open.values())
            keep = 0
            while keep < len(self._batches) and self._batches[keep][1][-1].offset <= oldest:
                keep += 1
            del self._batches[:keep]

    def records_after(self, offset: int) -> list[Record]:
        """The kept records with an offset above `offset` (complete while a view at `offset` is open)."""
        with self._lock:
            batches = list(self._batches)
        return [r for _first, records in batches for r in records if r.offset > offset]

    def touched_after(self, offset: int) -> _Touched:
        """Every document written after `offset`, with its encoding as of `offset` (None: it did not exist)."""
        with self._lock:
            batches = list(self._batches)
        touched: _Touched = {}
        for _first, records in batches:
            for record in records:
                if record.offset <= offset:
                    continue
                for write in record.writes:
                    if write.id not in touched:
                        touched[write.id] = (write.table, write.prev)
        return touched


class ProjectionSnapshot:
    """Implements `projections.types.SnapshotReader`: the live projection as of one offset."""

    def __init__(self, live: DocumentReader, journal: SnapshotJournal, view: int, offset: int, ts: int) -> None:
        self._live = live
        self._journal = journal
        self._view = view
        self._offset = offset
        self._ts = ts
        self._closed = False
        self._memo: tuple[int, _Touched] = (-1, {})

    def _touched(self) -> _Touched:
        version = self._journal.version
        if self._memo[0] != version:
            self._memo = (version, self._journal.touched_after(self._offset))
        return self._memo[1]

    @property
    def applied_offset(self) -> int:
        return self._offset

    @property
    def applied_ts(self) -> int:
        return self._ts

    def get(self, doc_id: str) -> bytes | None:
        raw = self._live.get(doc_id)
        touched = self._touched().get(doc_id)
        return raw if touched is None else touched[1]

    def scan(self, lo: bytes, hi: bytes, reverse: bool = False) -> Iterator[tuple[bytes, str]]:
        live = self._live.scan(lo, hi, reverse)  # the live iterator's state is fixed here...
        touched = self._touched()  # ...so the journal now covers all it shows
        if not touched:
            return live
        restored: list[tuple[bytes, str]] = []
        for doc_id, (table, raw) in touched.items():
            if raw is None:
                continue
            for _index, key in self._live.index_keys(table, decode_doc(raw)):
                if lo <= key < hi:
                    restored.append((key, doc_id))
        restored.sort(reverse=reverse)
        kept = (pair for pair in live if pair[1] not in touched)
        return heapq.merge(kept, restored, reverse=reverse)

    def doc_key(self, doc_id: str, table: str | None = None) -> bytes:
        return self._live.doc_key(doc_id, table)

    def index_keys(self, table: str, doc: dict[str, Any]) -> list[tuple[str, bytes]]:
        return self._live.index_keys(table, doc)

    def index_prefix(self, table: str, index: str) -> bytes:
        return self._live.index_prefix(table, index)

    def index_range(self, table: str, index: str, eq: Sequence[Any] = (), lower: Bound | None = None,
                    upper: Bound | None = None) -> tuple[bytes, bytes]:
        return self._live.index_range(table, index, list(eq), lower, upper)

    def search_spec(self, table: str, index: str) -> Any:
        return self._live.search_spec(table, index)  # type: ignore[attr-defined]

    def search_candidates(self, table: str, index: str, query: Any, limit: int, extra: Any = None) -> Any:
        """The live index's candidates; documents written after this view's offset are re-checked too."""
        def written_after() -> list[str]:  # read after the live searcher is taken (see projections.search)
            ids = [i for i, (t, _raw) in self._touched_now().items() if t == table]
            return ids + list(extra()) if extra is not None else ids
        return self._live.search_candidates(table, index, query, limit, written_after)  # type: ignore[attr-defined]

    def _touched_now(self) -> _Touched:
        return self._journal.touched_after(self._offset)

    def iter_documents(self, table: str | None = None) -> Iterable[bytes]:
        raise NotImplementedError("a read view serves queries' reads only")

    def close(self) -> None:
        """Release the view (the journal drops batches no open view needs)."""
        if not self._closed:
            self._closed = True
            self._journal.close(self._view)
