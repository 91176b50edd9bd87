"""RangeIndex answers exactly which owners' ranges contain a key (checked against brute force)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.range_index import RangeIndex
from projections.keys import prefix_successor

keys = st.binary(min_size=1, max_size=4).filter(lambda b: b.rstrip(b"\xff") != b"")


def as_range(kind: str, a: bytes, b: bytes) -> tuple[bytes, bytes]:
    if kind == "point":
        return a, a + b"\x00"
    if kind == "prefix":
        return a, prefix_successor(a)
    lo, hi = sorted((a, b))
    return lo, hi + b"\x01"


ranges = st.lists(st.tuples(st.sampled_from(["point", "prefix", "span"]), keys, keys), max_size=4)


@settings(max_examples=200, deadline=None)
@given(owners=st.lists(ranges, max_size=12), removed=st.sets(st.integers(0, 11)), probes=st.lists(keys, max_size=20))
def test_matches_brute_force(owners, removed, probes) -> None:  # type: ignore[no-untyped-def]
    index = RangeIndex()
    table: dict[int, list[tuple[bytes, bytes]]] = {}
    for i, spec in enumerate(owners):
        rs = [as_range(*r) for r in spec]
        index.set(i, rs, [b""] * len(rs))
        table[i] = rs
    for i in removed:
        index.remove(i)
        table.pop(i, None)
    for key in probes:
        found: set[int] = set()
        index.owners_of(key, b"", found)  # type: ignore[arg-type]
        expected = {i for i, rs in table.items() if any(lo <= key < hi for lo, hi in rs)}
        assert found == expected


def test_replacing_ranges_forgets_the_old_ones() -> None:
    index = RangeIndex()
    index.set("q", [(b"ab", prefix_successor(b"ab"))], [b""])
    index.set("q", [(b"x", b"x\x00")], [b""])
    out: set[str] = set()
    index.owners_of(b"abc", b"", out)  # type: ignore[arg-type]
    assert out == set()
    index.owners_of(b"x", b"", out)  # type: ignore[arg-type]
    assert out == {"q"}
