"""Sources of history: a data directory, a log directory, a log URL or a record archive, opened read-only.

A FileLog is opened as a follower, so the source may be a live deployment's
data directory. A data directory also offers its checkpoints and its index
catalog (`read_catalog`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rocksdict import AccessType, Options, Rdict

from history.archive import ArchiveLog
from history.errors import RestoreError
from history.retention import default_archive
from log import FileLog, LogError, open_log
from log.archived_log import ArchivedLog
from log.segment import list_segments
from projections.checkpoints import list_checkpoints
from projections.layout import META_CATALOG


@dataclass
class Source:
    """An opened restore source: its log, and the data directory if there is one (for checkpoints)."""

    log: Any
    data_dir: Path | None
    description: str
    log_dir: Path | None = None  # a FileLog directory (enables the fast byte copy)
    archive_dir: Path | None = None  # its segment archive, read before it (see history.retention)

    async def close(self) -> None:
        """Close the source's log."""
        await self.log.close()


def is_data_dir(path: Path) -> bool:
    """Whether `path` is a Tape data directory (it holds a FileLog in ``log/``)."""
    return (path / "log").is_dir() and ((path / "log" / "FORMAT").exists() or bool(list_segments(path / "log")))


async def open_source(source: str) -> Source:
    """Open SOURCE read-only: a data directory, a FileLog directory (or file://), a kafka:// URL or an archive file."""
    if source.startswith("kafka://"):
        log_ = open_log(source)
        try:
            await log_.open()
        except LogError as exc:
            raise RestoreError(f"cannot open {source}: {exc}") from None
        return Source(log_, None, source)
    path = Path(source[len("file://"):] if source.startswith("file://") else source)
    if path.is_file():
        archive = ArchiveLog(path)
        await archive.open()
        return Source(archive, None, f"archive {path}")
    if not path.exists():
        raise RestoreError(f"{path} does not exist")
    if is_data_dir(path):
        data_dir, log_dir = path, path / "log"
    elif (path / "FORMAT").exists() or list_segments(path):
        data_dir, log_dir = None, path
        if path.name == "log" and is_data_dir(path.parent):
            data_dir = path.parent
    else:
        raise RestoreError(f"{path} is neither a Tape data directory nor a log directory")
    file_log = FileLog(log_dir, read_only=True)
    try:
        await file_log.open()
    except LogError as exc:
        raise RestoreError(f"cannot open the log {log_dir}: {exc}") from None
    what = f"data directory {data_dir}" if data_dir else f"log {log_dir}"
    archive = default_archive(data_dir) if data_dir is not None else None
    if archive is not None and file_log.first_offset() > 0 and archive.exists():
        joined = ArchivedLog(archive.directory, file_log)
        try:
            await joined.open()
        except LogError as exc:
            await file_log.close()
            raise RestoreError(f"cannot open the segment archive {archive.directory}: {exc}") from None
        return Source(joined, data_dir, f"{what} (with its segment archive)", log_dir, archive.directory)
    return Source(file_log, data_dir, what, log_dir)


def read_catalog(data_dir: Path | None) -> dict[str, Any] | None:
    """The index catalog of a data directory: from its newest checkpoint, else its projection (read-only)."""
    if data_dir is None:
        return None
    found = list_checkpoints(data_dir)
    if found:
        return found[-1].indexes
    proj = data_dir / "projection"
    if not proj.is_dir():
        return None
    try:
        db = Rdict(str(proj), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            raw = db.get(META_CATALOG)
        finally:
            db.close()
        return orjson.loads(raw) if raw else None
    except Exception:
        return None


__all__ = ["Source", "is_data_dir", "open_source", "read_catalog"]
