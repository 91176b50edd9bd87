"""Uncommitted writes, layered over the projection.

Serial execution runs each mutation against the latest state plus the
writes of every earlier mutation that is executed but not yet applied to the
projection (the same batch, or a batch still being made durable). The
overlay holds those writes (encoded documents and their index keys, kept
sorted so index scans can merge them with the projection's own scan), tagged
with the batch that wrote them, and an undo journal so a mutation that
raises — or a batch whose append fails — leaves no trace.

A write that leaves a document's index keys as the projection has them (a
patch of unindexed fields — most writes) stores no keys at all (`keys` is
None): scans then keep the projection's keys for that document and only read
its content from the overlay, so the sorted key list is not touched.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Iterable, Iterator

Keys = list[tuple[str, bytes]]


@dataclass(slots=True)
class Entry:
    """A pending document state: `keys` None means "the same index keys as in the projection"."""

    table: str
    doc: bytes | None
    keys: Keys | None
    batch: int = 0


@dataclass
class Overlay:
    """Latest pending state per document id, plus a sorted list of live index keys."""

    entries: dict[str, Entry] = field(default_factory=dict)
    sorted_keys: list[tuple[bytes, str]] = field(default_factory=list)
    _journal: list[tuple[str, Entry | None]] = field(default_factory=list)
    _journal_base: int = 0
    # per table: entries whose own keys replace the projection's (keys not None); a scan of a table with
    # none is the projection's scan as it is (inserts into one table leave scans of the others alone)
    _hiding: dict[str, int] = field(default_factory=dict)

    def get(self, doc_id: str) -> Entry | None:
        return self.entries.get(doc_id)

    def put(self, doc_id: str, table: str, doc: bytes | None, keys: Keys | None, batch: int = 0) -> None:
        """Record the new state of a document (doc None = deleted) with its index keys.

        `keys` None says the write keeps the document's index keys unchanged
        (from the projection's, or from its pending entry's if it has one).
        """
        old = self.entries.get(doc_id)
        self._journal.append((doc_id, old))
        if doc is None:
            keys = []
        elif keys is None and old is not None:
            keys = old.keys
        self._set(doc_id, Entry(table, doc, keys, batch))

    def _set(self, doc_id: str, entry: Entry | None) -> None:
        old = self.entries.get(doc_id)
        if old is not None and entry is not None and (old.keys is entry.keys or old.keys == entry.keys):
            self.entries[doc_id] = entry  # same index keys: the sorted list stays as it is
            return
        hiding = self._hiding
        if old is not None and old.keys is not None:
            left = hiding[old.table] - 1
            if left:
                hiding[old.table] = left
            else:
                del hiding[old.table]
        if entry is not None and entry.keys is not None:
            hiding[entry.table] = hiding.get(entry.table, 0) + 1
        sorted_keys = self.sorted_keys
        if old is not None and old.keys:
            for _, key in old.keys:
                i = bisect.bisect_left(sorted_keys, (key, doc_id))
                if i < len(sorted_keys) and sorted_keys[i] == (key, doc_id):
                    del sorted_keys[i]
        if entry is None:
            self.entries.pop(doc_id, None)
            return
        self.entries[doc_id] = entry
        if entry.keys:
            for _, key in entry.keys:
                bisect.insort(sorted_keys, (key, doc_id))

    def mark(self) -> int:
        """A savepoint, to pass to `rollback` (or `trim`)."""
        return self._journal_base + len(self._journal)

    def rollback(self, mark: int) -> None:
        """Undo every put after `mark`."""
        keep = max(mark - self._journal_base, 0)
        while len(self._journal) > keep:
            doc_id, old = self._journal.pop()
            self._set(doc_id, old)

    def trim(self, mark: int) -> None:
        """Forget the journal up to `mark` (those writes can no longer be undone)."""
        drop = mark - self._journal_base
        if drop > 0:
            del self._journal[:drop]
            self._journal_base = mark

    def forget(self, doc_ids: Iterable[str], batch: int) -> None:
        """Drop entries still holding `batch`'s writes: the projection has them now."""
        for doc_id in doc_ids:
            entry = self.entries.get(doc_id)
            if entry is not None and entry.batch == batch:
                self._set(doc_id, None)

    def clear(self) -> None:
        """Forget everything (nothing is pending)."""
        self.entries.clear()
        self.sorted_keys.clear()
        self._hiding.clear()
        self._journal_base += len(self._journal)
        self._journal.clear()

    def keys_in(self, lo: bytes, hi: bytes, reverse: bool) -> list[tuple[bytes, str]]:
        """Overlay index keys in `[lo, hi)`, in scan order."""
        i = bisect.bisect_left(self.sorted_keys, (lo, ""))
        j = bisect.bisect_left(self.sorted_keys, (hi, ""))
        found = self.sorted_keys[i:j]
        if reverse:
            found.reverse()
        return found

    def merge_scan(self, base: Iterator[tuple[bytes, str]], lo: bytes, hi: bytes,
                   reverse: bool, table: str) -> Iterator[tuple[bytes, str]]:
        """Merge a projection scan of `table` with overlay keys; overlaid ids with keys hide their projection keys."""
        if table not in self._hiding:
            return base  # no pending write moved an index key of `table`: the projection's keys are current
        return self._merged(base, lo, hi, reverse)

    def _merged(self, base: Iterator[tuple[bytes, str]], lo: bytes, hi: bytes,
                reverse: bool) -> Iterator[tuple[bytes, str]]:
        entries = self.entries
        extra = self.keys_in(lo, hi, reverse) if self.sorted_keys else []
        pos = 0
        get = entries.get
        for key, doc_id in base:
            entry = get(doc_id)
            if entry is not None and entry.keys is not None:
                continue
            while pos < len(extra) and ((extra[pos][0] < key) if not reverse else (extra[pos][0] > key)):
                yield extra[pos]
                pos += 1
            yield key, doc_id
        yield from extra[pos:]
