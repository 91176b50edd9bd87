"""Errors raised by commit-log implementations. Each names the file and offset involved."""
from __future__ import annotations


class LogError(Exception):
    """Base class for commit-log errors."""


class LogCorruptError(LogError):
    """The log holds damaged data that is not an incomplete tail (never silently skipped)."""


class LogFormatError(LogError):
    """The data directory was written by an unknown (e.g. newer) format version."""


class LogWriteError(LogError):
    """An append failed (disk full, I/O error, broker unreachable); nothing of it is visible."""


class LogClosedError(LogError):
    """The log was used after close()."""


class LogOutcomeUnknown(LogWriteError):
    """An append was sent but not acknowledged in time: its records may or may not be in the log.

    The log keeps them *in doubt* and settles the doubt once its store answers
    again (`KafkaLog.settle`: they are then committed exactly once).
    """


class LogTrimmedError(LogError):
    """An offset before the first one the log still holds (removed by retention, or deleted by Kafka)."""
