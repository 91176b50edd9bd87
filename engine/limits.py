"""Per-transaction limits, enforced with clear errors."""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Limits:
    """Bounds on one function execution (defaults follow Convex's documented limits)."""

    max_doc_bytes: int = 1 << 20
    max_writes: int = 8192
    max_reads: int = 16384
    max_depth: int = 64
    max_seconds: float = 1.0
    max_action_seconds: float = 600.0
    max_args_bytes: int = 8 << 20
    #: how long a mutation's (session, request id) answer is kept for exactly-once retries; a repeat
    #: arriving later runs the mutation again. None keeps the answers forever.
    request_retention_seconds: float | None = 24 * 3600.0
    request_expiry_batch: int = 1000  # most `_requests` deletes in one `_system:expire_requests` record
    #: how long a finished `_scheduled_functions` job is kept (Convex: 7 days); None keeps them forever
    job_retention_seconds: float | None = 7 * 24 * 3600.0
    max_concurrent_actions: int = 16  # actions running at once (each on its own worker thread)
    loop_slice_seconds: float = 0.02  # user code on the event loop longer than this moves to a worker thread
    query_workers: int = 4           # threads running slow queries against snapshots
    #: memory the committer's caches may hold (estimated bytes, entries and their overhead included):
    #: committed documents it read or wrote, and small index scans; each is emptied when over its budget
    document_cache_bytes: int = 96 << 20
    scan_cache_bytes: int = 64 << 20  # ~140,000 index lookups: a lookup per account of 100,000 stays cached


def cache_budgets(limits: Limits, total_bytes: int) -> Limits:
    """`limits` with `total_bytes` split between the writer's caches (3/5 documents, 2/5 scans)."""
    return replace(limits, document_cache_bytes=total_bytes * 3 // 5, scan_cache_bytes=total_bytes * 2 // 5)


DEFAULT_LIMITS = Limits()
