"""Checkpoint hygiene and transfer: the keep policy, SIGKILL during creation, the verified tar stream."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from projections.checkpoint_transfer import (CheckpointReceiver, CheckpointTransferError, pin_checkpoint,
                                             tar_checkpoint)
from projections.checkpoints import (CheckpointInfo, CheckpointPolicy, clean_partial, copy_projection,
                                     list_checkpoints, partial_checkpoints, take_checkpoint)
from projections.store import Projection

ROOT = Path(__file__).resolve().parents[2]
S = 1_000_000_000


def info(offset: int, ts_s: float) -> CheckpointInfo:
    return CheckpointInfo(path=Path(f"/cp/{offset}"), offset=offset, ts=int(ts_s * S))


def test_policy_keeps_newest_n_one_per_step_and_the_window_edge() -> None:
    found = [info(i * 10, i) for i in range(100)]  # one checkpoint per second for 100 s
    policy = CheckpointPolicy(keep=2, step_ns=10 * S, window_ns=40 * S)
    kept = [c.offset // 10 for c in policy.kept(found, now_ns=100 * S)]
    # newest 2 (98, 99); the newest of each 10 s step inside the window (69, 79, 89, 99);
    # the newest at or before the window start (60)
    assert kept == [60, 69, 79, 89, 98, 99]
    assert [c.offset for c in CheckpointPolicy(keep=3).kept(found, 0)] == [970, 980, 990]


async def test_checkpoint_transfer_round_trip_and_tamper_detection(make_runtime: Any, tmp_path: Path) -> None:
    data = tmp_path / "node"
    rt = await make_runtime("kitchen", data)
    lid = (await rt.run_mutation("lists:create", {"name": "l"})).value
    for i in range(30):
        await rt.run_mutation("lists:add", {"list_id": lid, "text": f"t{i}"})
    cp = take_checkpoint(rt.projection, data)
    assert cp is not None
    pinned = pin_checkpoint(cp, data)
    stream = b"".join(tar_checkpoint(pinned))
    # a plain tar: any `tar x` reads it
    names = tarfile.open(fileobj=io.BytesIO(stream)).getnames()
    assert names[0] == "checkpoint.json" and names[-1] == "DIGESTS.json"
    receiver = CheckpointReceiver(tmp_path / "got" / "cp")
    for i in range(0, len(stream), 777):  # in odd-sized pieces
        receiver.feed(stream[i:i + 777])
    meta = receiver.finish()
    assert meta["offset"] == cp.offset
    copy_projection(tmp_path / "got" / "cp" / "projection", tmp_path / "opened")
    p = Projection(tmp_path / "opened")
    try:
        assert p.content_digest() == rt.projection.content_digest() and p.applied_offset == cp.offset
    finally:
        p.close()
    # one flipped byte in a member's data is refused, and nothing is installed
    sst = stream.index(b"projection/") + 2048
    bad = stream[:sst] + bytes([stream[sst] ^ 1]) + stream[sst + 1:]
    receiver = CheckpointReceiver(tmp_path / "bad" / "cp")
    receiver.feed(bad)
    with pytest.raises(CheckpointTransferError, match="digests do not match"):
        receiver.finish()
    receiver.abort()
    assert not (tmp_path / "bad" / "cp").exists()
    # a stream cut short is refused
    receiver = CheckpointReceiver(tmp_path / "short" / "cp")
    receiver.feed(stream[: len(stream) // 2])
    with pytest.raises(CheckpointTransferError, match="ended early"):
        receiver.finish()
    receiver.abort()


CRASH = """
import asyncio, os, signal, sys
from pathlib import Path
from engine.app import App
from engine.runtime import Runtime
from log.file_log import FileLog
from projections import checkpoints
from projections.store import Projection
data, where = Path(sys.argv[1]), sys.argv[2]
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
async def main():
    app = App.load(Path(sys.argv[3]))
    log = FileLog(data / "log"); await log.open()
    projection = Projection(data / "projection", app.schema.index_catalog())
    rt = Runtime(app, log, projection); await rt.start()
    lid = (await rt.run_mutation("lists:create", {"name": "l"})).value
    for i in range(20):
        await rt.run_mutation("lists:add", {"list_id": lid, "text": f"t{i}"})
    checkpoints.take_checkpoint(projection, data)  # one complete checkpoint at offset 20
    await rt.run_mutation("lists:add", {"list_id": lid, "text": "more"})
    real_write, real_rename = checkpoints._write_json, os.rename
    if where == "meta":
        checkpoints._write_json = die
    elif where == "rename":
        checkpoints.os.rename = lambda *a: die()
    elif where == "after":
        def rename_then_die(a, b):
            real_rename(a, b); die()
        checkpoints.os.rename = rename_then_die
    checkpoints.take_checkpoint(projection, data)
asyncio.run(main())
"""


@pytest.mark.parametrize("where,complete", [("meta", [20]), ("rename", [20]), ("after", [20, 21])])
def test_sigkill_during_checkpoint_creation_never_leaves_a_usable_half(
        tmp_path: Path, where: str, complete: list[int]) -> None:
    data = tmp_path / "node"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CRASH, str(data), where, str(ROOT / "tests" / "apps" / "kitchen")],
                          env=env, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert [c.offset for c in list_checkpoints(data)] == complete  # a half-made one is never listed
    assert bool(partial_checkpoints(data)) == (where != "after")
    clean_partial(data)
    assert partial_checkpoints(data) == []
    for c in list_checkpoints(data):  # every listed checkpoint opens and holds its offset
        copy_projection(c.projection_dir, tmp_path / f"open-{c.offset}")
        p = Projection(tmp_path / f"open-{c.offset}")
        try:
            assert p.applied_offset == c.offset
        finally:
            p.close()
