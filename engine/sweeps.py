"""Periodic housekeeping sweeps (expired `_requests` memos, finished scheduled jobs).

Each sweep runs at start-up and then every retention / 24, at most hourly, so
nothing outlives its retention by more than about 4 %. A failed sweep is logged
and retried at the next one.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from projections.types import DocumentReader

EXPIRY_INTERVAL_MAX = 3600.0  # seconds between expiry sweeps at most (retention / 24 when shorter)


def expiry_interval(retention_seconds: float) -> float:
    """Seconds between expiry sweeps: retention / 24, at most an hour."""
    return max(min(retention_seconds / 24.0, EXPIRY_INTERVAL_MAX), 0.01)


async def sweep_periodically(sweep: Callable[[], Awaitable[int]], retention: Callable[[], float | None],
                             what: str, logger: logging.Logger) -> None:
    """Run `sweep` now and then every `expiry_interval(retention())` seconds, until `retention()` is None."""
    while True:
        seconds = retention()
        if seconds is None:
            return
        try:
            await sweep()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # retried at the next sweep
            logger.warning("%s failed (%s: %s); retrying in %gs", what, type(exc).__name__, exc,
                           expiry_interval(seconds))
        await asyncio.sleep(expiry_interval(seconds))


def expired_in_creation_order(projection: DocumentReader, table: str, cutoff_ms: float, start: bytes | None,
                              limit: int, expired: Callable[[bytes], bool | None]) -> tuple[list[str], bytes | None]:
    """Up to `limit` ids of `table`'s documents created before `cutoff_ms` that `expired(raw)` says are expired,
    walking the by_creation_time index from `start`; and where to continue (None: done).

    `expired` answers True (expired), False (kept) or None (stop: every later document is newer). At
    most 4 × `limit` documents are read per call, so a sweep of mostly kept documents still yields.
    """
    lo, hi = projection.index_range(table, "by_creation_time", upper=(cutoff_ms, True))
    if start is not None:
        lo = max(lo, start)
    ids: list[str] = []
    visited = 0
    for key, doc_id in projection.scan(lo, hi):
        raw = projection.get(doc_id)
        if raw is not None:
            verdict = expired(raw)
            if verdict is None:
                return ids, None
            if verdict:
                ids.append(doc_id)
        visited += 1
        if len(ids) >= limit or visited >= 4 * limit:
            return ids, key + b"\x00"  # index keys are prefix-free: every later key sorts after this
    return ids, None


__all__ = ["EXPIRY_INTERVAL_MAX", "expired_in_creation_order", "expiry_interval", "sweep_periodically"]
