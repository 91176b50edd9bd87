"""Which subscriptions does a written key invalidate? An index of read-set ranges.

Three kinds of range, each found without scanning every subscription:

* points (`[k, k+00)`, a `get` by id): a dict keyed by the exact key;
* prefix ranges (`[p, successor(p))`, e.g. an index read with `eq(...)` on
  its fields): a dict keyed by the prefix, probed with each prefix length in
  use, so a write costs O(distinct prefix lengths), not O(subscriptions);
* any other range (bounded scans, `take(n)` that stopped early): kept per
  index bucket and compared only with keys written to that index.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Iterable

from projections.keys import prefix_successor


def _is_prefix_range(lo: bytes, hi: bytes) -> bool:
    try:
        return prefix_successor(lo) == hi
    except ValueError:
        return False


class RangeIndex:
    """Maps owners (e.g. shared queries) to half-open byte ranges and answers stabbing queries."""

    def __init__(self) -> None:
        self._points: dict[bytes, set[Hashable]] = defaultdict(set)
        self._prefixes: dict[bytes, set[Hashable]] = defaultdict(set)
        self._prefix_lengths: dict[int, int] = defaultdict(int)  # length -> number of prefixes of it
        self._buckets: dict[bytes, dict[Hashable, list[tuple[bytes, bytes]]]] = defaultdict(dict)
        self._owned: dict[Hashable, tuple[list[bytes], list[bytes], list[bytes]]] = {}

    def __len__(self) -> int:
        return len(self._owned)

    def set(self, owner: Hashable, ranges: Iterable[tuple[bytes, bytes]], buckets: Iterable[bytes]) -> None:
        """Replace `owner`'s ranges."""
        self.remove(owner)
        points: list[bytes] = []
        prefixes: list[bytes] = []
        used: list[bytes] = []
        for (lo, hi), bucket in zip(ranges, buckets):
            if len(hi) == len(lo) + 1 and hi[-1] == 0 and hi.startswith(lo):
                owners = self._points[lo]
                if owner not in owners:
                    owners.add(owner)
                    points.append(lo)
            elif _is_prefix_range(lo, hi):
                owners = self._prefixes[lo]
                if owner not in owners:
                    if not owners:
                        self._prefix_lengths[len(lo)] += 1
                    owners.add(owner)
                    prefixes.append(lo)
            else:
                per_owner = self._buckets[bucket]
                if owner not in per_owner:
                    per_owner[owner] = []
                    used.append(bucket)
                per_owner[owner].append((lo, hi))
        self._owned[owner] = (points, prefixes, used)

    def remove(self, owner: Hashable) -> None:
        owned = self._owned.pop(owner, None)
        if owned is None:
            return
        points, prefixes, used = owned
        for key in points:
            owners = self._points.get(key)
            if owners is not None:
                owners.discard(owner)
                if not owners:
                    del self._points[key]
        for prefix in prefixes:
            owners = self._prefixes.get(prefix)
            if owners is not None:
                owners.discard(owner)
                if not owners:
                    del self._prefixes[prefix]
                    self._prefix_lengths[len(prefix)] -= 1
                    if not self._prefix_lengths[len(prefix)]:
                        del self._prefix_lengths[len(prefix)]
        for bucket in used:
            per_owner = self._buckets.get(bucket)
            if per_owner is not None:
                per_owner.pop(owner, None)
                if not per_owner:
                    del self._buckets[bucket]

    def owners_of(self, key: bytes, bucket: bytes, out: set[Hashable]) -> None:
        """Add to `out` every owner with a range containing `key` (`bucket`: the key's index prefix)."""
        owners = self._points.get(key)
        if owners:
            out.update(owners)
        if self._prefixes:
            prefixes = self._prefixes
            for length in self._prefix_lengths:
                if length <= len(key):
                    owners = prefixes.get(key[:length])
                    if owners:
                        out.update(owners)
        for where in (bucket, b""):
            per_owner = self._buckets.get(where)
            if not per_owner:
                continue
            for owner, ranges in per_owner.items():
                if owner in out:
                    continue
                for lo, hi in ranges:
                    if lo <= key < hi:
                        out.add(owner)
                        break
