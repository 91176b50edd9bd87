"""Read sets: the exact index key ranges a function execution read."""
from __future__ import annotations

from dataclasses import dataclass, field


def key_successor(key: bytes) -> bytes:
    """The smallest key strictly greater than `key` (so `[lo, successor(k))` includes k)."""
    return key + b"\x00"


@dataclass(slots=True)
class ReadSet:
    """Half-open byte ranges `[lo, hi)` in the projection's global key space.

    Index keys carry their table/index prefix, so one key space covers every
    index; a point `get` is the one-key range of the document's by_id key.
    """

    ranges: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: the index prefix each range lies in (parallel to `ranges`; b"" for document points)
    buckets: list[bytes] = field(default_factory=list)

    def add(self, lo: bytes, hi: bytes, bucket: bytes = b"") -> None:
        if lo < hi:
            self.ranges.append((lo, hi))
            self.buckets.append(bucket)

    def add_point(self, key: bytes) -> None:
        self.ranges.append((key, key + b"\x00"))
        self.buckets.append(b"")

    def __len__(self) -> int:
        return len(self.ranges)

    def contains(self, key: bytes) -> bool:
        """True when `key` lies inside any recorded range (linear; the gateway keeps an index)."""
        return any(lo <= key < hi for lo, hi in self.ranges)

    def merged(self) -> list[tuple[bytes, bytes]]:
        """Ranges sorted and with overlaps merged."""
        out: list[tuple[bytes, bytes]] = []
        for lo, hi in sorted(self.ranges):
            if out and lo <= out[-1][1]:
                if hi > out[-1][1]:
                    out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))
        return out
