"""The commit-log interface shared by the embedded FileLog and a Kafka-backed log.

`Log` is what every log provides. The optional fast readers a log may add
(`ReadsFlatWrites` for replay, `ReadsChanges` for change export) are named
here as protocols, so callers test for a capability with ``isinstance``
instead of probing attribute names.
"""
from __future__ import annotations

import abc
from types import TracebackType
from typing import Any, AsyncIterator, Callable, Protocol, runtime_checkable

from log.record import Record


class Log(abc.ABC):
    """A durable, totally ordered log of committed transactions.

    Offsets are dense from 0; timestamps (ns since the epoch) are strictly
    increasing, also across restarts. Readers only ever see durable records.
    """

    @abc.abstractmethod
    async def open(self) -> None:
        """Open (and if needed create or recover) the log."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending appends and release every resource; idempotent."""

    @abc.abstractmethod
    async def append(self, records: list[Record]) -> None:
        """Append `records` atomically and durably.

        Sets each record's `offset` and `ts` and returns once they are
        durable. A record that arrives with a ts above the previous record's
        keeps it (the engine picks commit timestamps before appending); any
        other gets max(now, previous ts + 1) from the wall clock (ns). Raises
        LogWriteError if nothing was appended (then no offset or ts was
        consumed and the records are left untouched).
        """

    @abc.abstractmethod
    def next_offset(self) -> int:
        """The offset the next append gets: the number of durable records."""

    @abc.abstractmethod
    def last_ts(self) -> int:
        """The ts of the last durable record (0 when the log is empty)."""

    def first_offset(self) -> int:
        """The first offset the log still holds (0 unless retention removed a prefix)."""
        return 0

    @abc.abstractmethod
    def read(self, start: int, end: int | None = None, batch: int = 4096) -> AsyncIterator[list[Record]]:
        """Yield records with start <= offset < end (None: the current end) in batches."""

    @abc.abstractmethod
    def tail(self, start: int, batch: int = 4096) -> AsyncIterator[list[Record]]:
        """Like `read` from `start`, but never ends: waits for new records."""

    @abc.abstractmethod
    async def offset_for_timestamp(self, ts: int) -> int:
        """The first offset whose ts >= `ts` (`next_offset()` if there is none)."""

    @abc.abstractmethod
    async def truncate(self, next_offset: int) -> None:
        """Durably drop every record with offset >= `next_offset`."""

    async def __aenter__(self) -> "Log":
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


@runtime_checkable
class ReadsFlatWrites(Protocol):
    """A log that can yield batches of flattened writes for replay, without building `Record`s."""

    def read_writes(
        self, start: int, end: int | None = None, batch: int = 4096,
    ) -> AsyncIterator[tuple[Any, int, int, int]]:
        """Yield (writes, record count, last offset, last ts) per batch (see `FileLog.read_writes`)."""
        ...


@runtime_checkable
class ReadsChanges(Protocol):
    """A log that can yield batches of changes encoded where they are decoded (change export)."""

    def read_changes(
        self, start: int, end: int | None = None, batch: int = 4096,
        encode: Callable[[list[Any], list[Any]], Any] | None = None,
    ) -> AsyncIterator[tuple[Any, int, int]]:
        """Yield (encoded batch, record count, last offset) per batch (see `FileLog.read_changes`)."""
        ...
