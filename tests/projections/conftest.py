"""Helpers for the projection tests: a document/record builder and an in-memory log."""
from __future__ import annotations

from typing import Any, AsyncIterator

import pytest

from values import decode_doc, encode_doc, new_id
from log.record import Record, Write


class History:
    """Builds log records the way the committer does (with `prev`), tracking current documents."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.docs: dict[str, bytes] = {}
        self.tables: dict[str, str] = {}
        self._clock = 1_700_000_000_000.0
        self._ts = 1_000

    def _record(self, writes: list[Write]) -> Record:
        self._ts += 7
        rec = Record(writes=writes, offset=len(self.records), ts=self._ts)
        self.records.append(rec)
        return rec

    def insert_write(self, table: str, fields: dict[str, Any], doc_id: str | None = None) -> Write:
        doc_id = doc_id or new_id(table)
        self._clock += 1.0
        raw = encode_doc({"_id": doc_id, "_creationTime": self._clock, **fields})
        self.docs[doc_id] = raw
        self.tables[doc_id] = table
        return Write(table, doc_id, raw, None)

    def update_write(self, doc_id: str, fields: dict[str, Any], with_prev: bool = True) -> Write:
        prev = self.docs[doc_id]
        old = decode_doc(prev)
        raw = encode_doc({"_id": doc_id, "_creationTime": old["_creationTime"], **fields})
        self.docs[doc_id] = raw
        return Write(self.tables[doc_id], doc_id, raw, prev if with_prev else None)

    def delete_write(self, doc_id: str, with_prev: bool = True) -> Write:
        prev = self.docs.pop(doc_id)
        return Write(self.tables[doc_id], doc_id, None, prev if with_prev else None)

    def insert(self, table: str, **fields: Any) -> str:
        w = self.insert_write(table, fields)
        self._record([w])
        return w.id

    def update(self, doc_id: str, with_prev: bool = True, **fields: Any) -> None:
        self._record([self.update_write(doc_id, fields, with_prev)])

    def delete(self, doc_id: str, with_prev: bool = True) -> None:
        self._record([self.delete_write(doc_id, with_prev)])

    def commit(self, *writes: Write) -> Record:
        return self._record(list(writes))


class MemoryLog:
    """The slice of the log interface the projection uses: ``read(start, end, batch)``."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.reads: list[tuple[int, int | None]] = []

    def next_offset(self) -> int:
        return len(self.records)

    async def read(self, start: int, end: int | None = None, batch: int = 4096) -> AsyncIterator[list[Record]]:
        self.reads.append((start, end))
        stop = len(self.records) if end is None else min(end, len(self.records))
        for i in range(start, stop, batch):
            yield self.records[i:min(i + batch, stop)]


@pytest.fixture
def history() -> History:
    return History()


@pytest.fixture
def make_log() -> type[MemoryLog]:
    return MemoryLog
