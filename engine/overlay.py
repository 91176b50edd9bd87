"""Uncommitted writes of a mutation batch, layered over the projection.

Serial execution runs each mutation against the latest durable state plus
the writes of earlier mutations in the same batch. The overlay holds those
writes (encoded documents and their index keys, kept sorted so index scans
can merge them with the projection's own scan) and an undo journal so a
mutation that raises leaves no trace.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Iterator

Keys = list[tuple[str, bytes]]


@dataclass(slots=True)
class Entry:
    table: str
    doc: bytes | None
    keys: Keys


@dataclass
class Overlay:
    """Latest pending state per document id, plus a sorted list of live index keys."""

    entries: dict[str, Entry] = field(default_factory=dict)
    sorted_keys: list[tuple[bytes, str]] = field(default_factory=list)
    _journal: list[tuple[str, Entry | None]] = field(default_factory=list)

    def get(self, doc_id: str) -> Entry | None:
        return self.entries.get(doc_id)

    def put(self, doc_id: str, table: str, doc: bytes | None, keys: Keys) -> None:
        """Record the new state of a document (doc None = deleted) with its index keys."""
        old = self.entries.get(doc_id)
        self._journal.append((doc_id, old))
        self._set(doc_id, Entry(table, doc, keys if doc is not None else []))

    def _set(self, doc_id: str, entry: Entry | None) -> None:
        old = self.entries.get(doc_id)
        if old is not None:
            for _, key in old.keys:
                i = bisect.bisect_left(self.sorted_keys, (key, doc_id))
                if i < len(self.sorted_keys) and self.sorted_keys[i] == (key, doc_id):
                    del self.sorted_keys[i]
        if entry is None:
            self.entries.pop(doc_id, None)
            return
        self.entries[doc_id] = entry
        for _, key in entry.keys:
            bisect.insort(self.sorted_keys, (key, doc_id))

    def mark(self) -> int:
        """A savepoint: the journal length, to pass to `rollback`."""
        return len(self._journal)

    def rollback(self, mark: int) -> None:
        """Undo every put after `mark` (the failing mutation's writes)."""
        while len(self._journal) > mark:
            doc_id, old = self._journal.pop()
            self._set(doc_id, old)

    def release(self) -> None:
        """Forget the undo journal (the batch's writes are committed)."""
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
                   reverse: bool) -> Iterator[tuple[bytes, str]]:
        """Merge a projection scan with overlay keys; overlaid ids hide their projection keys."""
        extra = self.keys_in(lo, hi, reverse) if self.sorted_keys else []
        entries = self.entries
        if not entries:
            yield from base
            return
        pos = 0
        for key, doc_id in base:
            if doc_id in entries:
                continue
            while pos < len(extra) and ((extra[pos][0] < key) if not reverse else (extra[pos][0] > key)):
                yield extra[pos]
                pos += 1
            yield key, doc_id
        yield from extra[pos:]
