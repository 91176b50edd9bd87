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
# Estimated memory of one cached range beyond its keys' and ids' bytes: the (lo, hi, reverse) tuple and two
# bytes objects, the tuple, the dict slot (sys.getsizeof on CPython 3.11) -- and per (key, id) pair, its
# tuple and the bytes/str headers.
RANGE_OVERHEAD = 280
PAIR_OVERHEAD = 170
DEFAULT_BUDGET = 64 << 20


class ScanCache:
    """Index scans by (table, lo, hi, reverse), valid until `invalidate(table)`.

    Bounded by an estimate of the memory it holds (`budget_bytes`): it is emptied when a new range
    would take it past the budget.
    """

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET) -> None:
        self._tables: dict[str, dict[tuple[bytes, bytes, bool], tuple[bytes | str, ...]]] = {}
        self._table_bytes: dict[str, int] = {}
        self.budget_bytes = budget_bytes
        self.bytes = 0  # estimated memory held
        self.hits = 0
        self.misses = 0
        self.clears = 0  # times the budget emptied it

    def scan(self, projection: DocumentReader, table: str, lo: bytes, hi: bytes, reverse: bool) -> Iterator[Pair]:
        """`projection.scan(lo, hi, reverse)`, from the cache when this range was walked before."""
        ranges = self._tables.get(table)
        if ranges is not None:
            hit = ranges.get((lo, hi, reverse))
            if hit is not None:
                self.hits += 1
                return zip(hit[0::2], hit[1::2])
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
            size = (RANGE_OVERHEAD + len(key[0]) + len(key[1])
                    + sum(PAIR_OVERHEAD + len(k) + len(i) for k, i in seen))
            if self.bytes + size > self.budget_bytes:
                self.clear()
                self.clears += 1
            ranges = self._tables.setdefault(table, {})
            if key not in ranges:
                # Flat (key, id, key, id, ...): a tuple of bytes and str only leaves the collector's tracking
                # at its first pass, so a full cache costs later collections nothing (a list, or a tuple of
                # pair tuples, stays tracked: ~50,000 objects in every young collection on a busy writer).
                ranges[key] = tuple(x for pair in seen for x in pair)
                self._table_bytes[table] = self._table_bytes.get(table, 0) + size
                self.bytes += size

    def invalidate(self, tables: Iterable[str]) -> None:
        """Forget every scan of `tables` (an applied batch changed index keys there)."""
        for table in tables:
            if self._tables.pop(table, None) is not None:
                self.bytes -= self._table_bytes.pop(table, 0)

    def clear(self) -> None:
        """Forget everything."""
        self._tables.clear()
        self._table_bytes.clear()
        self.bytes = 0
