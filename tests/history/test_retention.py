"""The retention window (history.retention): what is removed, and restores at its edge, inside and outside."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from engine.app import App
from engine.committer import EXPIRE_REQUESTS_FUNCTION, REQUESTS_TABLE
from engine.limits import DEFAULT_LIMITS, Limits
from engine.runtime import Runtime
from history.errors import RestoreError, StreamError
from history.points import Point
from history.restore import restore_to_dir
from history.retention import (RetentionPolicy, apply_retention, default_archive, format_duration,
                               parse_duration)
from history.sources import open_source
from history.stream import start_offset
from log.file_log import FileLog
from log.segment import list_segments
from ops.doctor_cmd import check_projection
from projections.checkpoints import take_checkpoint
from projections.store import Projection

APPS = Path(__file__).resolve().parents[1] / "apps"


class Deployment:
    """A runtime on a FileLog with small segments, writing to one list."""

    def __init__(self, data: Path, limits: Limits = DEFAULT_LIMITS) -> None:
        self.data = data
        self.limits = limits
        self.app = App.load(APPS / "kitchen")
        self.log = FileLog(data / "log", segment_bytes=1500)
        self.projection: Projection | None = None
        self.rt: Runtime | None = None
        self.list_id = ""

    async def start(self) -> None:
        await self.log.open()
        self.projection = Projection(self.data / "projection", self.app.schema.index_catalog())
        self.rt = Runtime(self.app, self.log, self.projection, self.limits)
        await self.rt.start()
        self.list_id = (await self.rt.run_mutation("lists:create", {"name": "l"})).value

    async def write(self, n: int) -> None:
        assert self.rt is not None
        for i in range(n):
            await self.rt.run_mutation("lists:add", {"list_id": self.list_id, "text": f"item {i}"})

    def checkpoint(self) -> Any:
        assert self.projection is not None
        self.projection.flush()
        return take_checkpoint(self.projection, self.data)

    async def stop(self) -> None:
        if self.rt is not None:
            await self.rt.stop()
        if self.projection is not None:
            self.projection.close()
        await self.log.close()


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    d = Deployment(tmp_path / "data")
    await d.start()
    yield d
    await d.stop()


def test_durations() -> None:
    assert parse_duration("30d") == 30 * 86400 and parse_duration("250ms") == 0.25 and parse_duration("7") == 7
    assert format_duration(30 * 86400) == "30d"
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


async def restored_digest(source: Path, point: Point, dest: Path) -> tuple[str | None, int]:
    report = await restore_to_dir(str(source), point, dest)
    rep = check_projection(dest / "projection")
    return rep.digest, report.upto


async def test_retention_moves_only_covered_segments_and_restores_within_the_window(
        deployment: Deployment, tmp_path: Path) -> None:
    d = deployment
    await d.write(40)
    first_cp = d.checkpoint()
    await d.write(40)
    edge_cp = d.checkpoint()
    await d.write(40)
    end = d.log.next_offset()
    inside = edge_cp.offset + 17
    before_window = edge_cp.offset - 9
    # reference states from the full log
    ref = {p: await restored_digest(d.data, Point("offset", p), tmp_path / f"ref-{p}")
           for p in (before_window, edge_cp.offset, inside)}

    # no checkpoint at or before the window start: nothing is removed
    policy = RetentionPolicy(60.0, default_archive(d.data))
    result = await apply_retention(d.log, d.data, policy, now_ns=first_cp.ts - 1 + int(60e9))
    assert result.removed_records == 0 and result.covering_checkpoint is None

    # window starts between the two checkpoints: only segments wholly at or before edge_cp go
    result = await apply_retention(d.log, d.data, policy, now_ns=edge_cp.ts + 5 + int(60e9))
    assert result.covering_checkpoint == edge_cp.offset
    first = d.log.first_offset()
    assert 0 < first <= edge_cp.offset + 1
    live = list_segments(d.data / "log")
    assert live[0][0] == first
    archived = list_segments(d.data / "log-archive")
    assert archived[0][0] == 0 and archived[-1][0] < first  # moved, in order, nothing past the checkpoint
    assert d.log.next_offset() == end

    # at the window edge and inside: exact (same digest as from the full log)
    for p in (edge_cp.offset, inside):
        assert await restored_digest(d.data, Point("offset", p), tmp_path / f"after-{p}") == ref[p]
    # outside, but the archive is there: still exact
    assert await restored_digest(d.data, Point("offset", before_window), tmp_path / "from-archive") == \
        ref[before_window]

    # without the archive, a point before the window is refused with an error naming the window
    shutil.rmtree(d.data / "log-archive")
    with pytest.raises(RestoreError, match=rf"offset {before_window} is outside the retention window.*"
                                           rf"before offset {first}.*oldest point that can be rebuilt is "
                                           rf"offset {edge_cp.offset}"):
        await restore_to_dir(str(d.data), Point("offset", before_window), tmp_path / "refused")
    with pytest.raises(RestoreError, match="outside the retention window"):
        await restore_to_dir(str(d.data), Point("ts", first_cp.ts), tmp_path / "refused-ts")
    assert await restored_digest(d.data, Point("offset", inside), tmp_path / "again") == ref[inside]

    source = await open_source(str(d.data))
    try:
        with pytest.raises(StreamError, match=f"--from offset 3 is outside the retention window"):
            await start_offset(source.log, "offset:3")
        assert await start_offset(source.log, None) == first  # default: the oldest record still held
        assert await start_offset(source.log, f"offset:{first}") == first
    finally:
        await source.close()


async def test_retention_without_archive_deletes(deployment: Deployment) -> None:
    d = deployment
    await d.write(60)
    cp = d.checkpoint()
    await d.write(10)
    result = await apply_retention(d.log, d.data, RetentionPolicy(1.0, None), now_ns=cp.ts + int(1e9) + 1)
    assert result.removed_records > 0
    assert not (d.data / "log-archive").exists()
    assert list_segments(d.data / "log")[0][0] == d.log.first_offset()


async def test_request_expiry_inside_the_window_restores_exactly(tmp_path: Path) -> None:
    """`_requests` housekeeping is logged (`_system:expire_requests`), so restores on both sides of it are exact."""
    d = Deployment(tmp_path / "data", dataclasses.replace(DEFAULT_LIMITS, request_retention_seconds=3600.0))
    await d.start()
    try:
        assert d.rt is not None and d.projection is not None
        await d.write(40)
        cp = d.checkpoint()
        last = None
        for i in range(20):
            last = await d.rt.run_mutation("lists:add", {"list_id": d.list_id, "text": f"r{i}"},
                                           session_id="s", request_id=i)
        before_expiry = d.log.next_offset() - 1
        assert d.projection.count(REQUESTS_TABLE) == 20
        assert last is not None
        assert await d.rt.committer.expire_requests(now_ns=last.ts + 3601 * 10**9) == 20
        after_expiry = d.log.next_offset() - 1
        functions = [r.function async for b in d.log.read(before_expiry + 1) for r in b]
        assert functions and set(functions) == {EXPIRE_REQUESTS_FUNCTION}
        await d.write(5)
        ref = {p: await restored_digest(d.data, Point("offset", p), tmp_path / f"ref-{p}")
               for p in (before_expiry, after_expiry)}
        result = await apply_retention(d.log, d.data, RetentionPolicy(1.0, None), now_ns=cp.ts + int(1e9) + 1)
        assert result.removed_records > 0 and d.log.first_offset() <= cp.offset + 1
        for p in (before_expiry, after_expiry):
            assert await restored_digest(d.data, Point("offset", p), tmp_path / f"after-{p}") == ref[p]
        restored = Projection(tmp_path / f"after-{before_expiry}" / "projection")
        try:
            assert restored.count(REQUESTS_TABLE) == 20  # the memos, as they were before the cleanup
        finally:
            restored.close()
    finally:
        await d.stop()
