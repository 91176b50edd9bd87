"""Errors of the history operations: each message says why and what to do."""
from __future__ import annotations


class RestoreError(Exception):
    """A restore that cannot be done as asked (the message says why and what to do)."""


class StreamError(Exception):
    """The export cannot run as asked."""


class SnapshotError(Exception):
    """An export or import that cannot be done as asked."""


__all__ = ["RestoreError", "SnapshotError", "StreamError"]
