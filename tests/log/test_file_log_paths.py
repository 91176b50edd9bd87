"""FileLog on a path it cannot use: a LogError naming the path, not an OSError traceback."""
from __future__ import annotations

from pathlib import Path

import pytest

from log.errors import LogError
from log.file_log import FileLog
from log.record import Record, Write


async def test_a_file_where_the_log_directory_should_be(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_text("not a log")
    with pytest.raises(LogError, match="is a file, but a FileLog is a directory"):
        await FileLog(path).open()


async def test_a_directory_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(LogError, match="cannot create the log directory"):
        await FileLog(tmp_path / "file" / "log").open()


async def test_on_sync_sees_every_fsync(tmp_path: Path) -> None:
    seen: list[float] = []
    log = FileLog(tmp_path / "log")
    log.on_sync = seen.append
    await log.open()
    try:
        await log.append([Record([Write("t", "id1", b"doc")])])
    finally:
        await log.close()
    assert len(seen) == 1 and 0 <= seen[0] < 5
