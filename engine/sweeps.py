"""Periodic housekeeping sweeps (expired `_requests` memos, finished scheduled jobs).

Each sweep runs at start-up and then every retention / 24, at most hourly, so
nothing outlives its retention by more than about 4 %. A failed sweep is logged
and retried at the next one.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

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


__all__ = ["EXPIRY_INTERVAL_MAX", "expiry_interval", "sweep_periodically"]
