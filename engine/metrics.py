"""What a running deployment measures about itself, kept as plain counts (gateway.metrics exports them).

Observing is on the hot path (every function call, every commit batch), so a
histogram here is a list of bucket counts and a sum, and the Prometheus text
is built only when `/metrics` is scraped. Buckets follow Prometheus' ``le``
rule (a value goes in the first bucket whose upper bound is >= it; the last
bucket is +Inf).

No lock: an observation is ``counts[i] += 1; sum += value`` with no call in
between, and CPython (with the GIL, as Tape runs) switches threads and runs
signal handlers only at calls and backward jumps, so no other thread can
interleave there (`tests/engine/test_metrics.py` checks that nothing is
lost across threads). A scrape copies the counts in one C call; the sum may
be one observation ahead of them, which Prometheus tolerates.

The instances below are per process: one Tape process serves one deployment.
"""
from __future__ import annotations

import threading
from bisect import bisect_left
from time import monotonic
from typing import Iterator

SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
                 1.0, 2.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0)

# Outcomes of one function call, the `outcome` label of FUNCTION_SECONDS.
SUCCESS, APP_ERROR, ERROR, TIMEOUT = "success", "app_error", "error", "timeout"


class Histogram:
    """Bucket counts, a sum and a count of observed values (thread-safe)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        i = bisect_left(self.bounds, value)
        self.counts[i] += 1  # (no call between these two lines: see the module docstring)
        self.sum += value

    def snapshot(self) -> tuple[list[tuple[float, int]], float, int]:
        """(cumulative (upper bound, count) pairs ending with +Inf, sum, count)."""
        counts, total = list(self.counts), self.sum
        cumulative, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), counts):
            running += n
            cumulative.append((bound, running))
        return cumulative, total, running


class LabeledHistogram:
    """One `Histogram` per tuple of label values (few distinct tuples: e.g. function path x outcome)."""

    def __init__(self, labels: tuple[str, ...], bounds: tuple[float, ...]) -> None:
        self.labels = labels
        self.bounds = bounds
        self._series: dict[tuple[str, ...], Histogram] = {}
        self._lock = threading.Lock()

    def observe(self, values: tuple[str, ...], value: float) -> None:
        series = self._series.get(values)
        if series is None:
            with self._lock:
                series = self._series.setdefault(values, Histogram(self.bounds))
        i = bisect_left(self.bounds, value)  # (Histogram.observe, inlined: this runs for every function call)
        series.counts[i] += 1
        series.sum += value

    def items(self) -> Iterator[tuple[tuple[str, ...], Histogram]]:
        with self._lock:
            return iter(list(self._series.items()))


#: How long each query, mutation and action ran (its handler only: not queueing, not the fsync), by path
#: and outcome (success, app_error: it threw AppError; error: any other failure; timeout: it outran its bound).
FUNCTION_SECONDS = LabeledHistogram(("path", "outcome"), SECONDS_BUCKETS)
#: Records per group commit the committer appended.
COMMIT_BATCH_RECORDS = Histogram(BATCH_BUCKETS)
#: Seconds each fsync (fdatasync) of the FileLog writer took.
FSYNC_SECONDS = Histogram(FSYNC_BUCKETS)
#: Seconds between a scheduled job's scheduledTime and the moment the scheduler started it.
SCHEDULER_LATENESS_SECONDS = Histogram(LATENESS_BUCKETS)


def observe_function(path: str, outcome: str, started: float) -> None:
    """Record one call of `path` that began at `started` (time.monotonic()) and ended now."""
    FUNCTION_SECONDS.observe((path, outcome), monotonic() - started)


__all__ = ["APP_ERROR", "COMMIT_BATCH_RECORDS", "ERROR", "FSYNC_SECONDS", "FUNCTION_SECONDS", "Histogram",
           "LabeledHistogram", "SCHEDULER_LATENESS_SECONDS", "SUCCESS", "TIMEOUT", "observe_function"]
