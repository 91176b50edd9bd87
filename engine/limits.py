"""Per-transaction limits, enforced with clear errors."""
from __future__ import annotations

from dataclasses import dataclass


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


DEFAULT_LIMITS = Limits()
