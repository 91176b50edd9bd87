"""The durable commit log: the `Log` interface, the embedded FileLog and `open_log`."""
from __future__ import annotations

import importlib
from typing import Any

from log.base import Log
from log.errors import LogClosedError, LogCorruptError, LogError, LogFormatError, LogTrimmedError, LogWriteError
from log.file_log import FileLog
from log.record import Record, Write


def open_log(url_or_path: str, **options: Any) -> Log:
    """Make (not yet open) the log named by `url_or_path`.

    A plain path or ``file://path`` gives a FileLog (``options`` go to its
    constructor); ``kafka://...`` gives ``log.kafka_log.KafkaLog(url, **options)``.
    """
    if url_or_path.startswith("kafka://"):
        try:
            module = importlib.import_module("log.kafka_log")
        except ModuleNotFoundError as exc:
            if exc.name not in ("log.kafka_log", "log"):
                raise LogError(f"the Kafka log needs a missing module: {exc.name}") from exc
            raise LogError(
                f"cannot open {url_or_path}: the Kafka-backed log (log.kafka_log) "
                "is not available in this build") from exc
        kafka_log = getattr(module, "KafkaLog", None)
        if kafka_log is None:
            raise LogError("log.kafka_log does not define KafkaLog")
        return kafka_log(url_or_path, **options)  # type: ignore[no-any-return]
    if url_or_path.startswith("file://"):
        return FileLog(url_or_path[len("file://"):], **options)
    if "://" in url_or_path:
        raise LogError(f"unsupported log URL {url_or_path!r} (use a path, file://path or kafka://...)")
    return FileLog(url_or_path, **options)


__all__ = [
    "FileLog",
    "Log",
    "LogClosedError",
    "LogCorruptError",
    "LogError",
    "LogFormatError",
    "LogTrimmedError",
    "LogWriteError",
    "Record",
    "Write",
    "open_log",
]
