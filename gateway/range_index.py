"""Which subscriptions does a written key invalidate? An index of read-set ranges.

Point ranges (a `get` by id) live in a dict keyed by the exact key, so a
write to one document costs O(1) however many subscriptions exist. Other
ranges are bucketed by the index they scan, so a write is only compared with
ranges of the indexes it actually touches.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Iterable


class RangeIndex:
    """Maps owners (e.g. shared queries) to half-open byte ranges and answers stabbing queries."""

    def __init__(self) -> None:
        self._points: dict[bytes, set[Hashable]] = defaultdict(set)
        self._buckets: dict[bytes, dict[Hashable, list[tuple[bytes, bytes]]]] = defaultdict(dict)
        self._owned: dict[Hashable, tuple[list[bytes], list[bytes]]] = {}

    def __len__(self) -> int:
        return len(self._owned)

    def set(self, owner: Hashable, ranges: Iterable[tuple[bytes, bytes]], buckets: Iterable[bytes]) -> None:
        """Replace `owner`'s ranges."""
        self.remove(owner)
        points: list[bytes] = []
        used: list[bytes] = []
        for (lo, hi), bucket in zip(ranges, buckets):
            if len(hi) == len(lo) + 1 and hi[-1] == 0 and hi.startswith(lo):
                self._points[lo].add(owner)
                points.append(lo)
            else:
                per_owner = self._buckets[bucket]
                if owner not in per_owner:
                    per_owner[owner] = []
                    used.append(bucket)
                per_owner[owner].append((lo, hi))
        self._owned[owner] = (points, used)

    def remove(self, owner: Hashable) -> None:
        owned = self._owned.pop(owner, None)
        if owned is None:
            return
        points, used = owned
        for key in points:
            owners = self._points.get(key)
            if owners is not None:
                owners.discard(owner)
                if not owners:
                    del self._points[key]
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
