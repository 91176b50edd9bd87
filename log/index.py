"""The in-memory view of a FileLog: its durable segments and a sparse offset/ts index."""
from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(slots=True)
class SegmentView:
    """A segment as readers see it: `size` bytes of durable frames, offsets base..end-1."""

    base: int
    path: Path
    size: int
    end: int


@dataclass(slots=True)
class IndexArrays:
    """Sparse index entries as three parallel int64 arrays (as a seal stores them)."""

    off: array
    ts: array
    pos: array


@dataclass(slots=True)
class Growth:
    """Growth of one segment (or a new one) found by a scan or made by a commit.

    `index` holds the new sparse entries (offset, ts, file position), as a
    list of tuples or `IndexArrays`, or None for a full sealed segment whose
    entries are loaded when first needed (`LogIndex.loader`); then
    `first_ts` is its first ts.
    `last_index_pos` is the position of the segment's latest entry.
    """

    base: int
    path: Path
    size: int
    end: int
    last_ts: int
    last_index_pos: int
    index: list[tuple[int, int, int]] | IndexArrays | None
    new: bool
    first_ts: int = 0


_NO_TS = (1 << 63) - 1  # first ts of a segment without frames (only ever the last one)


def _empty() -> IndexArrays:
    return IndexArrays(array("q"), array("q"), array("q"))


def _no_loader(seg: SegmentView) -> IndexArrays:
    raise RuntimeError(f"{seg.path}: no loader for its index entries")


class LogIndex:
    """Durable segments plus a sparse index: an entry for every segment's first
    frame and then one per `index_bytes` or so, each (offset, ts, position).

    Entries are kept per segment; a sealed segment's are loaded from its seal
    (by `loader`) the first time a lookup needs them, so opening a long log
    does not read them all. Timestamps increase with offsets, so both can be
    binary searched. An instance is mutated only on the event loop thread (or
    before it is published); a truncation builds a new one. Loading entries
    only fills an empty slot with the same values, so it is safe from any thread.
    """

    def __init__(self, loader: Callable[[SegmentView], IndexArrays] = _no_loader) -> None:
        self.segs: list[SegmentView] = []
        self.bases: list[int] = []
        self.first_ts = array("q")
        self.entries: list[IndexArrays | None] = []
        self.loader = loader
        self.next_offset = 0
        self.last_ts = 0
        self.last_index_pos = -1

    def apply(self, g: Growth) -> None:
        """Take in the growth described by `g`."""
        if g.new:
            self.segs.append(SegmentView(g.base, g.path, g.size, g.end))
            self.bases.append(g.base)
            self.first_ts.append(g.first_ts if g.index is None else _NO_TS)
            self.entries.append(None if g.index is None else _empty())
        else:
            ix = self.segment(len(self.segs) - 1)  # (loaded before the view grows past the seal)
            seg = self.segs[-1]
            seg.size = g.size
            seg.end = g.end
        if isinstance(g.index, IndexArrays):
            ix = self.segment(len(self.segs) - 1)
            if not ix.off and g.index.ts:
                self.first_ts[-1] = g.index.ts[0]
            ix.off.extend(g.index.off)
            ix.ts.extend(g.index.ts)
            ix.pos.extend(g.index.pos)
        elif g.index:
            ix = self.segment(len(self.segs) - 1)
            if not ix.off:
                self.first_ts[-1] = g.index[0][1]
            for off, ts, pos in g.index:
                ix.off.append(off)
                ix.ts.append(ts)
                ix.pos.append(pos)
        self.next_offset = g.end
        self.last_ts = g.last_ts
        self.last_index_pos = g.last_index_pos

    def segment(self, i: int) -> IndexArrays:
        """The index entries of `segs[i]`, loaded on first use."""
        ix = self.entries[i]
        if ix is None:
            ix = self.loader(self.segs[i])
            self.entries[i] = ix
        return ix

    def segment_entries(self, i: int) -> list[tuple[int, int, int]]:
        """The index entries (offset, ts, position) of segment `segs[i]`."""
        ix = self.segment(i)
        return list(zip(ix.off, ix.ts, ix.pos))

    def seg_index(self, offset: int) -> int:
        """Index in `segs` of the segment holding `offset`."""
        return bisect_right(self.bases, offset) - 1

    def locate(self, offset: int) -> tuple[int, int]:
        """(segment index, file position) of the index entry at or before `offset`."""
        i = self.seg_index(offset)
        ix = self.segment(i)
        k = bisect_right(ix.off, offset) - 1
        return (i, 0) if k < 0 else (i, ix.pos[k])

    def locate_ts(self, ts: int) -> tuple[int, int] | None:
        """(segment index, file position) of the last entry whose ts is below `ts`; None if none is."""
        i = bisect_left(self.first_ts, ts) - 1
        if i < 0:
            return None
        ix = self.segment(i)
        k = bisect_left(ix.ts, ts) - 1
        return (i, 0) if k < 0 else (i, ix.pos[k])

    def without_prefix(self, k: int) -> LogIndex:
        """A new index without the first `k` segments (removed by retention); the rest is shared."""
        new = LogIndex(self.loader)
        new.segs, new.bases = self.segs[k:], self.bases[k:]
        new.first_ts, new.entries = self.first_ts[k:], self.entries[k:]
        new.next_offset, new.last_ts, new.last_index_pos = self.next_offset, self.last_ts, self.last_index_pos
        return new

    def cut(self, n: int, pos: int, last_ts: int) -> LogIndex:
        """A new index holding offsets < `n`, whose frame (if any) starts at `pos`."""
        i = self.seg_index(n)
        new = LogIndex(self.loader)
        new.segs = [SegmentView(s.base, s.path, s.size, s.end) for s in self.segs[:i + 1]]
        new.segs[-1].size, new.segs[-1].end = pos, n
        new.bases = self.bases[:i + 1]
        new.first_ts = self.first_ts[:i + 1]
        new.entries = self.entries[:i]  # full segments before the cut: shared, they never change
        if n == self.segs[i].base:  # nothing of segment i is kept: do not load its entries
            ix, k = _empty(), 0
        else:
            ix = self.segment(i)
            k = bisect_left(ix.off, n)
        new.entries.append(IndexArrays(ix.off[:k], ix.ts[:k], ix.pos[:k]))
        if not k:
            new.first_ts[-1] = _NO_TS
        new.next_offset, new.last_ts = n, last_ts
        new.last_index_pos = ix.pos[k - 1] if k else -1
        return new
