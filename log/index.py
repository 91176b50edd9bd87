"""The in-memory view of a FileLog: its durable segments and a sparse offset/ts index."""
from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True)
class SegmentView:
    """A segment as readers see it: `size` bytes of durable frames, offsets base..end-1."""

    base: int
    path: Path
    size: int
    end: int


@dataclass(slots=True)
class Growth:
    """Growth of one segment (or a new one) found by a scan or made by a commit.

    `index` holds the new sparse entries (offset, ts, file position);
    `last_index_pos` is the position of the segment's latest entry.
    """

    base: int
    path: Path
    size: int
    end: int
    last_ts: int
    last_index_pos: int
    index: list[tuple[int, int, int]]
    new: bool


class LogIndex:
    """Durable segments plus a sparse index: an entry for every segment's first
    frame and then one per `index_bytes` or so, each (offset, ts, position).

    Timestamps increase with offsets, so both can be binary searched. An
    instance is mutated only on the event loop thread (or before it is
    published); a truncation builds a new one.
    """

    def __init__(self) -> None:
        self.segs: list[SegmentView] = []
        self.bases: list[int] = []
        self.ix_off = array("q")
        self.ix_ts = array("q")
        self.ix_pos = array("q")
        self.next_offset = 0
        self.last_ts = 0
        self.last_index_pos = -1

    def apply(self, g: Growth) -> None:
        """Take in the growth described by `g`."""
        if g.new:
            self.segs.append(SegmentView(g.base, g.path, g.size, g.end))
            self.bases.append(g.base)
        else:
            seg = self.segs[-1]
            seg.size = g.size
            seg.end = g.end
        for off, ts, pos in g.index:
            self.ix_off.append(off)
            self.ix_ts.append(ts)
            self.ix_pos.append(pos)
        self.next_offset = g.end
        self.last_ts = g.last_ts
        self.last_index_pos = g.last_index_pos

    def seg_index(self, offset: int) -> int:
        """Index in `segs` of the segment holding `offset`."""
        return bisect_right(self.bases, offset) - 1

    def locate(self, offset: int) -> tuple[int, int]:
        """(segment index, file position) of the index entry at or before `offset`."""
        k = bisect_right(self.ix_off, offset) - 1
        i = self.seg_index(offset)
        if k < 0 or self.ix_off[k] < self.segs[i].base:
            return i, 0
        return i, self.ix_pos[k]

    def ts_entry(self, ts: int) -> int:
        """Index of the last entry whose ts is below `ts` (-1 if none)."""
        return bisect_left(self.ix_ts, ts) - 1

    def cut(self, n: int, pos: int, last_ts: int) -> LogIndex:
        """A new index holding offsets < `n`, whose frame (if any) starts at `pos`."""
        i = self.seg_index(n)
        new = LogIndex()
        new.segs = [SegmentView(s.base, s.path, s.size, s.end) for s in self.segs[:i + 1]]
        new.segs[-1].size, new.segs[-1].end = pos, n
        new.bases = self.bases[:i + 1]
        k = bisect_left(self.ix_off, n)
        new.ix_off, new.ix_ts, new.ix_pos = self.ix_off[:k], self.ix_ts[:k], self.ix_pos[:k]
        new.next_offset, new.last_ts = n, last_ts
        new.last_index_pos = new.ix_pos[-1] if k and new.ix_off[-1] >= new.segs[-1].base else -1
        return new
