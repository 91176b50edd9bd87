"""`tape serve --retain`: scheduled checkpoints, old segments removed, points outside the window refused."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from log.directory import read_start
from log.segment import list_segments
from tests.bootstrap_flow import KITCHEN, call
from tests.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


async def query_at(server: ServerProcess, key: str, offset: int) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/api/admin/query_at", headers={"Authorization": f"Convex {key}"},
                             json={"path": "lists:all_lists", "args": {}, "offset": offset}) as resp:
            return resp.status, await resp.json()


@pytest.mark.parametrize("archive", ["none", "default"])
async def test_serve_with_retain_keeps_a_bounded_log(tmp_path: Path, archive: str) -> None:
    data = tmp_path / "data"
    extra = ["--retain", "1s", "--log-segment-bytes", "4096"] + (["--archive", "none"] if archive == "none" else [])
    server = ServerProcess(KITCHEN, data, command="serve", extra=extra).start(40)
    try:
        key = (data / "admin_key").read_text().strip()
        deadline = time.monotonic() + 3.0
        n = 0
        while time.monotonic() < deadline:
            await call(server, "mutation", "lists:create", {"name": f"list {n}"})
            n += 1
        first = 0
        for _ in range(100):
            first = read_start(data / "log").first_offset
            if first > 0:
                break
            await asyncio.sleep(0.1)
        assert first > 0, server.output()
        assert list_segments(data / "log")[0][0] == first
        status, body = await query_at(server, key, 0)
        if archive == "none":
            assert status == 400 and body["code"] == "OutsideRetentionWindow", body
            assert "outside the retention window" in body["message"]
        else:  # the archive still serves it
            assert status == 200 and len(body["value"]) == 1, body  # the state after the first create
            assert list_segments(data / "log-archive")[0][0] == 0
        status, body = await query_at(server, key, n - 1)  # the newest state: all n lists
        assert status == 200 and len(body["value"]) == n, body
    finally:
        assert server.stop() == 0, server.output()
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    doctor = subprocess.run([sys.executable, "-m", "ops.cli", "doctor", "--data", str(data), "--verify"], cwd=ROOT,
                            capture_output=True, text=True, env=env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "retention: the log starts at offset" in doctor.stdout and "checkpoints: " in doctor.stdout
    assert "digest vs fresh replay: equal" in doctor.stdout  # replayed from the checkpoint covering the start
    if archive == "none":  # the projection is rebuilt from that checkpoint, not from offset 0
        rebuilt = subprocess.run([sys.executable, "-m", "ops.cli", "doctor", "--data", str(data),
                                  "--rebuild-projection"], cwd=ROOT, capture_output=True, text=True, env=env)
        assert rebuilt.returncode == 0 and "rebuilt" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr
    restore = subprocess.run([sys.executable, "-m", "ops.cli", "restore", "--from", str(data), "--to", "offset:1", "--data",
                              str(tmp_path / "restored")], cwd=ROOT, capture_output=True, text=True,
                             env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    if archive == "none":
        assert restore.returncode == 1 and "outside the retention window" in restore.stdout + restore.stderr
    else:
        assert restore.returncode == 0, restore.stdout + restore.stderr
