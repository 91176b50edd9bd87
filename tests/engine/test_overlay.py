"""`engine.overlay.Overlay`: pending writes merged into projection scans, per table."""
from __future__ import annotations

from engine.overlay import Overlay


def test_a_table_without_moved_keys_scans_the_projection_as_it_is() -> None:
    overlay = Overlay()
    base = iter([(b"b\x01", "b1")])
    assert overlay.merge_scan(base, b"b", b"c", False, "b") is base
    overlay.put("a1", "a", b"{}", [("by_x", b"a\x01")])  # an insert into table a
    base = iter([(b"b\x01", "b1")])
    assert overlay.merge_scan(base, b"b", b"c", False, "b") is base  # table b: untouched
    merged = overlay.merge_scan(iter([(b"a\x00", "a0")]), b"a", b"b", False, "a")
    assert list(merged) == [(b"a\x00", "a0"), (b"a\x01", "a1")]


def test_moved_keys_hide_the_projection_keys_until_rolled_back() -> None:
    overlay = Overlay()
    mark = overlay.mark()
    overlay.put("a0", "a", b"{}", [("by_x", b"a\x05")])  # a0 moves from a\x00 to a\x05
    merged = overlay.merge_scan(iter([(b"a\x00", "a0"), (b"a\x03", "a3")]), b"a", b"b", False, "a")
    assert list(merged) == [(b"a\x03", "a3"), (b"a\x05", "a0")]
    overlay.put("a0", "a", b"{}", None)  # a patch keeping the pending keys
    assert "a" in overlay._hiding and overlay._hiding["a"] == 1
    overlay.rollback(mark)
    base = iter([(b"a\x00", "a0")])
    assert overlay.merge_scan(base, b"a", b"b", False, "a") is base and not overlay._hiding
