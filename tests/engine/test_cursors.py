"""Pagination cursors are opaque and tamper-evident; query journals are checked the same way."""
from __future__ import annotations

import base64

import pytest

from engine.cursors import CursorSealer, InvalidCursor


def test_seal_is_deterministic_opaque_and_scoped() -> None:
    sealer = CursorSealer.from_text("tape_admin_secret-for-tests")
    key = b"\x00messages\x00by_rank\x00" + bytes(range(20))
    cursor = sealer.seal(key, b"scope-a")
    assert cursor == sealer.seal(key, b"scope-a")  # a re-run that ends at the same row sends the same bytes
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    assert b"messages" not in raw and b"by_rank" not in raw and key not in raw
    assert sealer.open(cursor, b"scope-a", "paginationOpts.cursor") == key
    with pytest.raises(InvalidCursor, match=r"InvalidCursor: paginationOpts.cursor .* not a cursor of this query"):
        sealer.open(cursor, b"scope-b", "paginationOpts.cursor")  # another query's range or order
    with pytest.raises(InvalidCursor, match="InvalidCursor"):
        CursorSealer.from_text("another deployment's key").open(cursor, b"scope-a", "paginationOpts.cursor")


@pytest.mark.parametrize("position", [0, 5, -1])
def test_any_changed_character_is_refused(position: int) -> None:
    sealer = CursorSealer.from_text("tape_admin_secret-for-tests")
    cursor = sealer.seal(b"some index key", b"scope")
    flipped = "A" if cursor[position] != "A" else "B"
    tampered = cursor[:position] + flipped + (cursor[position + 1:] if position != -1 else "")
    with pytest.raises(InvalidCursor, match="paginationOpts.endCursor"):
        sealer.open(tampered, b"scope", "paginationOpts.endCursor")


@pytest.mark.parametrize("bad", ["", "not base64 !!", 42, None, "AAAA"])
def test_malformed_cursors_are_refused_with_the_field_name(bad: object) -> None:
    with pytest.raises(InvalidCursor, match="InvalidCursor: paginationOpts.cursor"):
        CursorSealer.ephemeral().open(bad, b"scope", "paginationOpts.cursor")


async def test_query_cursor_checks(make_runtime) -> None:  # type: ignore[no-untyped-def]
    rt = await make_runtime("feed")
    await rt.run_mutation("feed:seed", {"count": 5})
    first = rt.evaluate_query("feed:list", {"paginationOpts": {"numItems": 2, "cursor": None}}).value
    cursor = first["continueCursor"]
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    assert b"messages" not in raw and b"by_rank" not in raw
    tampered = cursor[:-3] + ("x" if cursor[-3] != "x" else "y") + cursor[-2:]
    for args, field in (({"paginationOpts": {"numItems": 2, "cursor": tampered}}, "paginationOpts.cursor"),
                        ({"paginationOpts": {"numItems": 2, "cursor": None, "endCursor": tampered}},
                         "paginationOpts.endCursor")):
        error = rt.evaluate_query("feed:list", args).error
        assert error is not None and str(error).startswith(f"InvalidCursor: {field}")
    # a filtered query over the same index range and order takes the same cursors
    other = rt.evaluate_query("feed:by_author", {"paginationOpts": {"numItems": 2, "cursor": cursor},
                                                 "author": "ann"})
    assert other.error is None
    # a tampered journal (sent back by a client on Add) is refused too
    error = rt.evaluate_query("feed:list", {"paginationOpts": {"numItems": 2, "cursor": None}},
                              journal=tampered).error
    assert error is not None and str(error).startswith("InvalidCursor: the query journal")
