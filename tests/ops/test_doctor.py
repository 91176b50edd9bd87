"""`tape doctor`: read-only diagnosis of a data directory and the two repairs it offers."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.app import App
from engine.runtime import Runtime
from log.codec import HEADER, HEADER_SIZE
from log.file_log import FileLog
from log.segment import list_segments
from ops.doctor_cmd import RepairError, diagnose, rebuild_projection, truncate_log
from projections.store import Projection

ROOT = Path(__file__).parent.parent.parent
BANK = ROOT / "tests" / "apps" / "bank"
OWNERS = [f"p{i}" for i in range(6)]


def make_data(data: Path, transfers: int = 20, segment_bytes: int = 64 << 20) -> None:
    """A bank data directory: a seed and `transfers` transfers, cleanly closed."""
    async def build() -> None:
        app = App.load(BANK)
        log = FileLog(data / "log", segment_bytes=segment_bytes)
        await log.open()
        projection = Projection(data / "projection", app.schema.index_catalog())
        runtime = Runtime(app, log, projection)
        await runtime.start()
        await runtime.run_mutation("accounts:seed", {"owners": OWNERS, "balance": 50.0})
        for i in range(transfers):
            await runtime.run_mutation("accounts:transfer", {"src": OWNERS[i % 6], "dst": OWNERS[(i + 1) % 6],
                                                             "amount": 1.0})
        await runtime.stop()
        projection.close()
        await log.close()
    asyncio.run(build())


def frames(segment: Path) -> list[tuple[int, int, int]]:
    buf = segment.read_bytes()
    out, pos = [], 0
    while pos + HEADER_SIZE <= len(buf):
        _m, _v, length, offset, _ts, _c = HEADER.unpack_from(buf, pos)
        out.append((pos, length, offset))
        pos += HEADER_SIZE + length
    return out


def flip(path: Path, pos: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[pos] ^= 0x04
    path.write_bytes(bytes(raw))


def segments(data: Path) -> list[Path]:
    return [p for _, p in list_segments(data / "log")]


def cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "ops.cli", "doctor", "--data", str(data), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_healthy_directory(tmp_path: Path) -> None:
    make_data(tmp_path, 20)
    rep = diagnose(tmp_path, verify=True)
    assert rep.healthy, rep.problems
    assert rep.log.records == 21 and rep.log.damage is None and rep.log.server_pid is None
    assert rep.projection.applied_offset == 20 and rep.projection.documents == 6
    assert rep.projection.verified is True
    run = cli(tmp_path, "--verify")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "healthy" in run.stdout and "digest vs fresh replay: equal" in run.stdout


def test_torn_tail_is_not_a_problem(tmp_path: Path) -> None:
    make_data(tmp_path, 5)
    seg = segments(tmp_path)[-1]
    with open(seg, "ab") as f:
        f.write(b"TL\x01\x00" + b"\x00" * 10)
    rep = diagnose(tmp_path)
    assert rep.healthy
    assert rep.log.damage is not None and rep.log.damage.kind == "torn-tail" and rep.log.records == 6
    assert any("never acknowledged" in a for a in rep.advice)


def test_bit_flip_mid_segment_is_located_and_truncate_log_recovers(tmp_path: Path) -> None:
    make_data(tmp_path, 20)
    seg = segments(tmp_path)[-1]
    pos, length, offset = frames(seg)[8]
    flip(seg, pos + HEADER_SIZE + length // 3)
    rep = diagnose(tmp_path)
    assert not rep.healthy
    d = rep.log.damage
    assert d is not None and d.kind == "corrupt" and d.segment == seg and d.byte == pos and d.offset == offset == 8
    assert d.intact_after == 20 - 8
    assert "ahead of the log" in " ".join(rep.problems)
    text = " ".join(rep.advice)
    assert "--truncate-log" in text and "backup" in text

    backup = truncate_log(tmp_path)
    assert (backup / seg.name).read_bytes()[pos:pos + 2] == b"TL"  # the original bytes are kept
    after = diagnose(tmp_path, verify=True)
    assert after.healthy, after.problems
    assert after.log.records == 8 and after.projection.applied_offset == 7 and after.projection.verified
    assert any(p.name.startswith("projection.broken-") for p in tmp_path.iterdir())


def test_damage_in_a_sealed_segment_and_a_missing_segment(tmp_path: Path) -> None:
    make_data(tmp_path, 30, segment_bytes=4096)
    segs = segments(tmp_path)
    assert len(segs) >= 4
    pos, length, offset = frames(segs[1])[1]
    flip(segs[1], pos + HEADER_SIZE + 3)
    rep = diagnose(tmp_path)
    d = rep.log.damage
    assert d is not None and d.kind == "corrupt" and d.segment == segs[1] and "sealed" in d.reason
    assert d.later_segments == segs[2:] and d.intact_after > 0
    truncate_log(tmp_path)
    assert segments(tmp_path) == segs[:2]
    assert diagnose(tmp_path).healthy

    other = tmp_path / "gap"
    make_data(other, 30, segment_bytes=4096)
    segs = segments(other)
    segs[2].unlink()
    rep = diagnose(other)
    d = rep.log.damage
    assert d is not None and d.kind == "corrupt" and "missing" in d.reason and d.segment == segs[1]
    truncate_log(other)
    assert segments(other) == segs[:2] and diagnose(other).healthy


def test_damaged_last_frame_that_was_acknowledged_is_corruption(tmp_path: Path) -> None:
    make_data(tmp_path, 5)
    seg = segments(tmp_path)[-1]
    pos, length, offset = frames(seg)[-1]
    flip(seg, pos + HEADER_SIZE + length // 2)
    rep = diagnose(tmp_path)
    d = rep.log.damage
    assert d is not None and d.kind == "corrupt" and "acknowledged" in d.reason and d.offset == offset
    # without the marker nobody can tell it from a torn write
    (tmp_path / "log" / "COMMITTED").unlink()
    assert diagnose(tmp_path).log.damage.kind == "torn-tail"  # type: ignore[union-attr]


@pytest.mark.parametrize("damage", ["sst", "current"])
def test_damaged_projection_is_rebuilt_with_its_indexes(tmp_path: Path, damage: str) -> None:
    make_data(tmp_path, 10)
    if damage == "sst":
        sst = sorted((tmp_path / "projection").glob("*.sst"))[0]
        flip(sst, sst.stat().st_size // 3)
    else:
        (tmp_path / "projection" / "CURRENT").write_text("nonsense\n")
    rep = diagnose(tmp_path)
    assert not rep.healthy and rep.projection.error is not None
    assert any("--rebuild-projection" in a for a in rep.advice)

    moved = rebuild_projection(tmp_path, app_dir=str(BANK))
    assert moved is not None and moved.exists()
    after = diagnose(tmp_path, verify=True)
    assert after.healthy and after.projection.verified and after.projection.applied_offset == 10
    projection = Projection(tmp_path / "projection")
    try:
        assert projection.indexes == App.load(BANK).schema.index_catalog()
    finally:
        projection.close()


def test_projection_ahead_behind_and_different(tmp_path: Path) -> None:
    make_data(tmp_path, 10)

    async def cut(n: int) -> None:
        log = FileLog(tmp_path / "log")
        await log.open()
        await log.truncate(n)
        await log.close()
    asyncio.run(cut(9))
    rep = diagnose(tmp_path)
    assert not rep.healthy and "ahead of the log" in rep.problems[0]
    rebuild_projection(tmp_path)  # indexes taken from the old projection
    assert diagnose(tmp_path, verify=True).healthy

    # behind: records in the log that the projection has not applied (normal after a crash)
    other = tmp_path / "behind"
    make_data(other, 3)

    async def append_more() -> None:
        from log.record import Record, Write
        log = FileLog(other / "log")
        await log.open()
        await log.append([Record([Write("accounts", "zz", None, None)], function="x")])
        await log.close()
    asyncio.run(append_more())
    rep = diagnose(other, verify=True)
    assert rep.healthy and any("behind" in a for a in rep.advice) and rep.projection.verified

    # different: same applied offset, different content
    from rocksdict import Options, Rdict
    db = Rdict(str(tmp_path / "projection"), Options(raw_mode=True))
    db[b"dbogus"] = b"{}"
    db.close()
    rep = diagnose(tmp_path, verify=True)
    assert not rep.healthy and rep.projection.verified is False


def test_repairs_refuse_next_to_a_running_server(tmp_path: Path) -> None:
    make_data(tmp_path, 3)
    loop = asyncio.new_event_loop()
    log = FileLog(tmp_path / "log")
    loop.run_until_complete(log.open())  # what a running server holds
    try:
        rep = diagnose(tmp_path)
        assert rep.log.server_pid == os.getpid()
        with pytest.raises(RepairError, match="Stop the server"):
            rebuild_projection(tmp_path)
        assert (tmp_path / "projection").exists()  # nothing was moved
        seg = segments(tmp_path)[-1]
        pos, length, _ = frames(seg)[1]
        flip(seg, pos + HEADER_SIZE + 2)
        with pytest.raises(RepairError, match="writer lock"):
            truncate_log(tmp_path)
    finally:
        loop.run_until_complete(log.close())
        loop.close()


def test_cli_exit_codes_and_messages(tmp_path: Path) -> None:
    make_data(tmp_path, 3)
    assert cli(tmp_path).returncode == 0
    refused = cli(tmp_path, "--truncate-log")
    assert refused.returncode == 1 and "nothing to truncate" in refused.stdout
    missing = cli(tmp_path / "nope")
    assert missing.returncode == 1 and "does not exist" in missing.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    run = cli(empty)
    assert run.returncode == 1 and "no log directory" in run.stdout
