"""Where retention puts the segments it removes from a FileLog: the `SegmentArchive` interface.

`FileLog.drop_prefix` hands every full segment it removes to an archive's
`put` (which must have stored it durably when it returns) before the log
forgets it. `DirectoryArchive`, the default, keeps them in a directory laid
out like a FileLog (FORMAT, optional START, ``*.seg`` and ``*.seg.seal``), so
the archive opens read-only as a FileLog and `ArchivedLog` reads archive and
live log as one. Object storage would be another `SegmentArchive` (not built).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Protocol, runtime_checkable

from log.directory import FORMAT_FILE, Start, check_format, fsync_dir, read_start, write_start
from log.errors import LogError
from log.seal import read_seal, seal_path
from log.segment import list_segments

PART_SUFFIX = ".part"


@runtime_checkable
class SegmentArchive(Protocol):
    """Durable storage for the full segments retention removes from a FileLog."""

    def put(self, segment: Path, base: int, end: int, prev_ts: int) -> None:
        """Store segment file `segment` (offsets base..end-1; `prev_ts` = ts of record base-1) durably.

        Storing a segment that is already there again is harmless.
        """

    def describe(self) -> str:
        """Where the archive is, for messages."""


def _copy_durably(src: Path, dest: Path) -> None:
    """Copy (or hard-link) `src` to `dest` via a ``.part`` file, fsynced before the rename."""
    part = dest.with_name(dest.name + PART_SUFFIX)
    try:
        part.unlink()
    except FileNotFoundError:
        pass
    try:
        os.link(src, part)  # same file system: the data is already durable
    except OSError:
        shutil.copyfile(src, part)
        fd = os.open(part, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(part, dest)


class DirectoryArchive:
    """A `SegmentArchive` in a local directory, itself a read-only FileLog directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def describe(self) -> str:
        """The archive directory."""
        return str(self.directory)

    def exists(self) -> bool:
        """Whether anything was archived yet."""
        return self.directory.is_dir() and bool(list_segments(self.directory))

    def span(self) -> tuple[int, int] | None:
        """(first offset, first offset past the archive) of what is archived, None if nothing is."""
        if not self.directory.is_dir():
            return None
        segs = list_segments(self.directory)
        if not segs:
            return None
        start = read_start(self.directory)
        first = start.first_offset if start.first_offset > 0 else segs[0][0]
        return first, self._end_of(segs[-1][1], segs[-1][0])

    @staticmethod
    @staticmethod
    def _end_of(path: Path, base: int) -> int:
        seal, _why = read_seal(path, head_only=True)
        return seal.end if seal is not None else base  # archived segments are always sealed

    def put(self, segment: Path, base: int, end: int, prev_ts: int) -> None:
        """Copy the segment (and its seal) in; the archive must be contiguous with what it holds."""
        self.directory.mkdir(parents=True, exist_ok=True)
        segs = list_segments(self.directory)
        check_format(self.directory, True, bool(segs))
        target = self.directory / segment.name
        if segs:
            span = self.span()
            assert span is not None
            if base > span[1] or base < span[0]:
                raise LogError(f"the segment archive {self.directory} holds offsets {span[0]}..{span[1] - 1}; "
                               f"segment {segment.name} (offsets {base}..{end - 1}) would leave a gap")
        elif base > 0:
            write_start(self.directory, Start(base, prev_ts))
        seal = seal_path(segment)
        if seal.exists():
            _copy_durably(seal, seal_path(target))
        _copy_durably(segment, target)
        fsync_dir(self.directory)


def has_format(directory: Path) -> bool:
    """Whether `directory` looks like a FileLog directory (a FORMAT file)."""
    return (directory / FORMAT_FILE).exists()


__all__ = ["DirectoryArchive", "SegmentArchive", "has_format"]
