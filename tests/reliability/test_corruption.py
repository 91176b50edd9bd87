"""Corruption: torn log writes, bit flips in the log and in the projection's RocksDB files.

Data directories are built in-process (Runtime on FileLog + Projection, the
bank app, clean close), damaged on disk, then a real `tape dev` server is
started on them and `tape doctor` is run against them, as an operator would.

Expected behaviour:

* a torn write at the end of the log (a frame cut short, never
  acknowledged) is cut off when the server starts; everything acknowledged
  survives and new writes follow on;
* damage anywhere else in the log makes the server refuse to start with a
  message naming the segment file, byte and record offset; `tape doctor`
  reports it and the way out (`--truncate-log` or a backup);
* damage to the projection gives a clear error (no traceback) and is
  repaired by `tape doctor --rebuild-projection`; a damaged block must never
  make a query silently return a wrong answer.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from engine.app import App
from engine.runtime import Runtime
from values import encode_doc, encode_value, new_id
from log.codec import HEADER, HEADER_SIZE, encode_payload, frame_from_payload
from log.file_log import FileLog
from log.record import Record, Write
from log.segment import list_segments
from projections.store import Projection
from tests.reliability.reliability_wire import APPS, ROOT, read_log
from tests.server_process import ServerProcess

OWNERS = [f"o{i:02d}" for i in range(8)]
INITIAL = 100.0


# ------------------------------------------------------------------ helpers


def transfer_args(i: int, owners: list[str] = OWNERS) -> dict[str, Any]:
    """The arguments of `build_bank`'s i-th transfer (a retry must repeat them: requests are bound to their call)."""
    return {"src": owners[i % len(owners)], "dst": owners[(i * 3 + 1) % len(owners)], "amount": 1.0 + i % 5}


async def build_bank(data: Path, transfers: int = 30, owners: list[str] = OWNERS) -> dict[tuple[str, int], Any]:
    """A bank data directory with acknowledged mutations; returns {(session, request): result}."""
    app = App.load(APPS / "bank")
    log = FileLog(data / "log")
    await log.open()
    projection = Projection(data / "projection", app.schema.index_catalog())
    runtime = Runtime(app, log, projection)
    await runtime.start()
    acked: dict[tuple[str, int], Any] = {}
    try:
        out = await runtime.run_mutation("accounts:seed", {"owners": owners, "balance": INITIAL},
                                         session_id="setup", request_id=0)
        acked[("setup", 0)] = out.value
        for i in range(transfers):
            out = await runtime.run_mutation("accounts:transfer", transfer_args(i, owners),
                                             session_id="http:bank", request_id=i)  # = Idempotency-Key bank:<i>
            acked[("http:bank", i)] = out.value
    finally:
        await runtime.stop()
        projection.close()
        await log.close()
    return acked


def last_segment(data: Path) -> Path:
    return list_segments(data / "log")[-1][1]


def frames(segment: Path) -> list[tuple[int, int, int]]:
    """(position, body length, offset) of every frame of a segment file."""
    buf = segment.read_bytes()
    out, pos = [], 0
    while pos + HEADER_SIZE <= len(buf):
        _magic, _version, length, offset, _ts, _crc = HEADER.unpack_from(buf, pos)
        out.append((pos, length, offset))
        pos += HEADER_SIZE + length
    return out


def flip(path: Path, pos: int, mask: int = 0x10) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([byte ^ mask]))


def doctor(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "ops.cli", "doctor", "--data", str(data), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


class Servers:
    """Start `tape dev` on a data directory and capture what one start printed."""

    def __init__(self) -> None:
        self.made: list[ServerProcess] = []

    def start(self, data: Path) -> tuple[ServerProcess | None, str]:
        server = ServerProcess(APPS / "bank", data)
        self.made.append(server)
        before = server.log_path.stat().st_size if server.log_path.exists() else 0
        try:
            server.start()
            ok: ServerProcess | None = server
        except RuntimeError:
            ok = None
        return ok, server.log_path.read_bytes()[before:].decode(errors="replace")

    def stop_all(self) -> None:
        for server in self.made:
            server.stop()


@pytest.fixture
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.stop_all()


async def post(url: str, endpoint: str, path: str, args: dict[str, Any], key: str | None = None) -> tuple[int, Any]:
    import aiohttp

    from tests.reliability.reliability_wire import http_call
    async with aiohttp.ClientSession() as http:
        return await http_call(http, url, endpoint, path, args, key=key)


async def balances(url: str, owners: list[str] = OWNERS) -> dict[str, float]:
    status, body = await post(url, "query", "accounts:balances", {"owners": owners})
    assert status == 200, body
    return body["value"]


def expected_balances(transfers: int, owners: list[str] = OWNERS) -> dict[str, float]:
    bal = {o: INITIAL for o in owners}
    for i in range(transfers):
        src, dst = owners[i % len(owners)], owners[(i * 3 + 1) % len(owners)]
        if src != dst:
            bal[src] -= 1.0 + i % 5
            bal[dst] += 1.0 + i % 5
    return bal


def assert_clear_refusal(output: str, *needles: str) -> None:
    assert "Traceback" not in output, f"the server died with a traceback instead of a clear message:\n{output}"
    # rich folds the error at 80 columns when stdout is not a terminal, even inside a path
    joined = output.replace("\n", "")
    for needle in needles:
        assert needle in joined, f"{needle!r} missing from the server's message:\n{output}"


# ------------------------------------------------------------------ torn writes


TORN_CUTS = {
    "inside the header": lambda frame: frame[:HEADER_SIZE // 2],
    "inside the body": lambda frame: frame[:HEADER_SIZE + (len(frame) - HEADER_SIZE) // 2],
    "one byte short": lambda frame: frame[:-1],
}


@pytest.mark.parametrize("cut", sorted(TORN_CUTS))
async def test_torn_tail_is_cut_off_and_nothing_acknowledged_is_lost(tmp_path: Path, servers: Servers, cut: str) -> None:
    data = tmp_path / "data"
    acked = await build_bank(data, transfers=20)
    records = await read_log(data / "log")
    seg = last_segment(data)
    clean_size = seg.stat().st_size
    # The write that was in flight when the machine died: a complete frame for
    # the next offset, of which only a prefix reached the disk. Never acknowledged.
    doc = encode_doc({"_id": new_id("accounts"), "_creationTime": 1.0, "owner": "torn", "balance": 0.0})
    torn = Record([Write("accounts", "x", doc, None)], session_id="torn", request_id=0,
                  function="accounts:seed", result=encode_value(1))
    frame = frame_from_payload(encode_payload(torn), len(records), records[-1].ts + 1)
    with open(seg, "ab") as f:
        f.write(TORN_CUTS[cut](frame))

    report = doctor(data)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "TORN TAIL" in report.stdout and seg.name in report.stdout and "never acknowledged" in report.stdout

    server, output = servers.start(data)
    assert server is not None, output
    assert "torn tail" in output and seg.name in output  # the server says what it cut
    assert seg.stat().st_size == clean_size
    assert await balances(server.url) == expected_balances(20)
    # Every acknowledged mutation is still remembered: a retry is answered from the log, not re-run.
    for (_session, rid), value in list(acked.items())[-3:]:
        status, body = await post(server.url, "mutation", "accounts:transfer", transfer_args(rid),
                                  key=f"bank:{rid}")
        assert (status, body["value"]) == (200, value)
    assert await balances(server.url) == expected_balances(20)
    status, body = await post(server.url, "mutation", "accounts:transfer",
                              {"src": "o00", "dst": "o01", "amount": 2.0}, key="after:1")
    assert status == 200, body
    assert server.stop() == 0
    after = await read_log(data / "log")
    assert [(r.session_id, r.request_id) for r in after[:len(records)]] == \
        [(r.session_id, r.request_id) for r in records]
    assert [(r.session_id, r.request_id) for r in after[len(records):]] == [("http:after", 1)]
    assert all(r.session_id != "torn" for r in after)


# ------------------------------------------------------------------ bit flips in the log


async def test_bit_flip_in_the_middle_of_a_segment_is_refused_with_segment_and_offset(
        tmp_path: Path, servers: Servers) -> None:
    data = tmp_path / "data"
    await build_bank(data, transfers=30)
    seg = last_segment(data)
    pos, length, offset = frames(seg)[15]
    flip(seg, pos + HEADER_SIZE + length // 2)

    server, output = servers.start(data)
    assert server is None, "the server started on a corrupted log"
    assert_clear_refusal(output, seg.name, f"byte {pos}", f"offset {offset}")

    report = doctor(data)
    assert report.returncode == 1
    out = report.stdout
    assert "CORRUPTED" in out and seg.name in out and f"byte {pos}" in out and f"offset {offset}" in out
    assert "--truncate-log" in out and "backup" in out

    # The way out: keep the intact prefix, then the server starts again.
    fixed = doctor(data, "--truncate-log")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "healthy" in fixed.stdout
    assert any(p.name.startswith("log.damaged-") for p in data.iterdir())
    server, output = servers.start(data)
    assert server is not None, output
    # Records 0..offset-1 survive: the seed and the first offset-1 transfers.
    assert await balances(server.url) == expected_balances(offset - 1)
    status, body = await post(server.url, "mutation", "accounts:transfer", {"src": "o03", "dst": "o04", "amount": 1.0})
    assert status == 200, body


async def test_bit_flip_in_the_last_acknowledged_frame_is_not_taken_for_a_torn_write(
        tmp_path: Path, servers: Servers) -> None:
    """The last frame was fsynced and acknowledged (the COMMITTED marker says so): a damaged copy
    of it is corruption, not an unfinished write, and must not be cut off the log."""
    data = tmp_path / "data"
    await build_bank(data, transfers=10)
    seg = last_segment(data)
    pos, length, offset = frames(seg)[-1]
    flip(seg, pos + HEADER_SIZE + length // 2)
    size = seg.stat().st_size

    report = doctor(data)
    assert report.returncode == 1 and "CORRUPTED" in report.stdout and "acknowledged" in report.stdout

    server, output = servers.start(data)
    cut = [line for line in output.splitlines() if "torn tail" in line]
    assert seg.stat().st_size == size, (
        f"the server cut acknowledged record {offset} off the log as if it were a torn write "
        f"({cut[0] if cut else output[:300]!r}); with a projection that had not applied it yet "
        "(after a crash, or a rebuild) it would start without that record")
    if server is not None:
        pytest.fail(f"the server started on a log whose acknowledged record {offset} is damaged")
    assert_clear_refusal(output, seg.name, f"offset {offset}")


async def test_projection_ahead_of_the_log_is_refused(tmp_path: Path, servers: Servers) -> None:
    """If the log lost records the projection already applied, new commits must not be swallowed."""
    data = tmp_path / "data"
    await build_bank(data, transfers=10)
    log = FileLog(data / "log")
    await log.open()
    end = log.next_offset()
    await log.truncate(end - 2)
    await log.close()

    report = doctor(data)
    assert report.returncode == 1 and "ahead of the log" in report.stdout and "--rebuild-projection" in report.stdout

    server, output = servers.start(data)
    if server is not None:
        before = await balances(server.url)
        status, body = await post(server.url, "mutation", "accounts:transfer", {"src": "o01", "dst": "o02", "amount": 5.0})
        after = await balances(server.url)
        assert status == 200, body
        assert after != before, ("the server started with its projection ahead of the log: the new transfer was "
                                 f"acknowledged ({body}) but is invisible (balances unchanged: {after})")
    else:
        assert_clear_refusal(output, "projection")


# ------------------------------------------------------------------ projection damage


def _sst(data: Path) -> Path:
    return sorted((data / "projection").glob("*.sst"))[0]


PROJECTION_DAMAGE = {
    "bit flip in an sst file": lambda data: flip(_sst(data), 200),
    "truncated sst file": lambda data: os.truncate(_sst(data), _sst(data).stat().st_size // 2),
    "truncated manifest": lambda data: os.truncate(sorted((data / "projection").glob("MANIFEST-*"))[0], 40),
    "garbage CURRENT file": lambda data: (data / "projection" / "CURRENT").write_text("garbage\n"),
}


@pytest.mark.parametrize("damage", sorted(PROJECTION_DAMAGE))
async def test_projection_damage_is_reported_and_rebuilt_from_the_log(
        tmp_path: Path, servers: Servers, damage: str) -> None:
    data = tmp_path / "data"
    await build_bank(data, transfers=12)
    PROJECTION_DAMAGE[damage](data)

    server, refusal = servers.start(data)
    assert server is None, "the server started on a damaged projection"

    report = doctor(data)
    assert report.returncode == 1
    assert "projection" in report.stdout and "DAMAGED" in report.stdout
    assert "--rebuild-projection" in report.stdout

    fixed = doctor(data, "--rebuild-projection")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "healthy" in fixed.stdout
    assert any(p.name.startswith("projection.broken-") for p in data.iterdir())
    server, output = servers.start(data)
    assert server is not None, output
    assert await balances(server.url) == expected_balances(12)

    # Checked last so that the recovery path above is exercised either way.
    assert_clear_refusal(refusal, "projection")
    assert "rebuild" in refusal or "tape doctor" in refusal, f"no way out in the server's message:\n{refusal}"


async def test_damaged_projection_block_never_yields_a_silently_wrong_answer(tmp_path: Path, servers: Servers) -> None:
    """A bit flip in a data block far from the meta keys: the server may start, but a query that
    reads the block must fail loudly rather than skip the damaged keys."""
    data = tmp_path / "data"
    owners = [f"owner-{i:05d}" for i in range(2000)]
    await build_bank(data, transfers=0, owners=owners)
    sst = _sst(data)
    flip(sst, sst.stat().st_size // 2)

    report = doctor(data)
    assert report.returncode == 1 and "DAMAGED" in report.stdout and "checksum" in report.stdout

    server, output = servers.start(data)
    wrong = None
    if server is not None:
        status, body = await post(server.url, "query", "accounts:total", {})
        if status == 200 and body["value"] != INITIAL * len(owners):
            wrong = body["value"]
        else:
            assert status != 200, body
        server.stop()
    fixed = doctor(data, "--rebuild-projection")
    assert fixed.returncode == 0, fixed.stdout
    server, output = servers.start(data)
    assert server is not None, output
    status, body = await post(server.url, "query", "accounts:total", {})
    assert (status, body["value"]) == (200, INITIAL * len(owners))
    assert wrong is None, (f"accounts:total returned {wrong} instead of {INITIAL * len(owners)} from a projection "
                           "with a damaged block, without any error")


def test_rocksdb_scan_stops_silently_at_a_damaged_block(tmp_path: Path) -> None:
    """Root cause of the test above, at the Projection level: scans end early instead of raising."""
    data = tmp_path / "data"
    asyncio.run(build_bank(data, transfers=0, owners=[f"owner-{i:05d}" for i in range(2000)]))
    projection = Projection(data / "projection")
    full = len(projection.dump_items())
    projection.close()
    sst = _sst(data)
    flip(sst, sst.stat().st_size // 2)
    projection = Projection(data / "projection")
    try:
        try:
            items = projection.dump_items()
        except Exception as exc:  # the wanted outcome: an error naming the damage
            assert "Corruption" in str(exc) or "corrupt" in str(exc).lower()
            return
        pytest.fail(f"Projection.dump_items() returned {len(items)} of {full} keys without an error")
    finally:
        projection.close()
