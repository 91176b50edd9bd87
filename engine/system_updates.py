"""Markers for the committer's system updates (`Committer.system_update`) beyond "change this document".

An update is ``(table, id or None, change)`` where ``change(current doc or None)``
returns the new document or None (write nothing). Besides that:

* a change may return `REMOVE` to delete the document it was given;
* `InsertAt(fields)` as the change inserts at the update's chosen id, once.
"""
from __future__ import annotations

from typing import Any

REMOVE: Any = object()
"""A system update's change returns this to delete the document it was given."""


class InsertAt:
    """A system update's change that inserts `fields` at the update's chosen id, only if no document has it.

    ``(table, doc_id, InsertAt(fields))``: a second insert at the same id writes nothing (the caller sees
    the id missing from the answer), so a pre-allocated id is used at most once.
    """

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __call__(self, doc: dict[str, Any] | None) -> dict[str, Any] | None:
        return dict(self.fields) if doc is None else None
