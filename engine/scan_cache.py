"""The writer's cache of small projection index scans.

Mutations look documents up by index far more often than they change index
keys: a transfer reads two accounts by owner and patches their balances. The
committer keeps the result of every small, fully walked projection scan (the
(index key, document id) pairs of a range, not the documents) and drops a
table's entries whenever an applied batch changed any index key in that
table. A patch of unindexed fields changes no index key, so lookups of the
documents it touches stay cached across batches.

The cache holds projection state only: the overlay of not yet applied writes
is merged on top of it exactly as on top of a live scan.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from projections.types import DocumentReader

Pair = tuple[bytes, str]

_MAX_PAIRS = 4  # scans returning more are not kept
_MAX_RANGES = 1 << 17  # the cache is emptied when it holds more ranges (~40 MB at most)


class ScanCache:
    """Index scans by (table, lo, hi, reverse), valid until `invalidate(table)`."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[tuple[bytes, bytes, bool], list[Pair]]] = {}
        self._ranges = 0
        self.hits = 0
        self.misses = 0

    def scan(self, projection: DocumentReader, table: str, lo: bytes, hi: bytes, reverse: bool) -> Iterator[Pair]:
        """`projection.scan(lo, hi, reverse)`, from the cache when this range was walked before."""
        ranges = self._tables.get(table)
        if ranges is not None:
            hit = ranges.get((lo, hi, reverse))
            if hit is not None:
                self.hits += 1
                return iter(hit)
        self.misses += 1
        return self._recording(projection.scan(lo, hi, reverse), table, (lo, hi, reverse))

    def _recording(self, base: Iterator[Pair], table: str, key: tuple[bytes, bytes, bool]) -> Iterator[Pair]:
        seen: list[Pair] = []
        for pair in base:
            if len(seen) <= _MAX_PAIRS:
                seen.append(pair)
            yield pair
        # Only reached when the caller walked the whole range.
        if len(seen) <= _MAX_PAIRS:
            if self._ranges >= _MAX_RANGES:
                self.clear()
            self._tables.setdefault(table, {})[key] = seen
            self._ranges += 1

    def invalidate(self, tables: Iterable[str]) -> None:
        """Forget every scan of `tables` (an applied batch changed index keys there)."""
        for table in tables:
            dropped = self._tables.pop(table, None)
            if dropped is not None:
                self._ranges -= len(dropped)

    def clear(self) -> None:
        """Forget everything."""
        self._tables.clear()
        self._ranges = 0
