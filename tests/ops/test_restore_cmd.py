"""`tape restore`: the command line over `history.restore` (new directory, in place, confirmation)."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from history.archive import ArchiveLog
from history.errors import RestoreError
from history.points import Point
from history.restore import restore_to_dir
from log.errors import LogError
from ops import cli
from tests.bootstrap_flow import APPS, call, fill_indexed, indexed_answers
from tests.history.test_restore import digest_of, kitchen_workload, read_all, start, stop
from tests.server_process import ServerProcess


# ----------------------------------------------------------------- CLI


def _build(tmp_path: Path, n: int = 12) -> tuple[Path, list[tuple[int, int, Any]]]:
    async def go() -> list[tuple[int, int, Any]]:
        rt = await start(tmp_path / "data")
        _lid, history = await kitchen_workload(rt, n, checkpoint_every=4, data=tmp_path / "data")
        await stop(rt)
        return history
    return tmp_path / "data", asyncio.run(go())


def test_cli_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, history = _build(tmp_path)
    offset, ts, _items = history[6]
    assert cli.main(["restore", "--from", str(data), "--to", str(ts), "--data", str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    assert "Restored" in out and f"offsets 0..{offset}" in out and "done in" in out
    assert digest_of(tmp_path / "new" / "projection")[1] == offset
    assert cli.main(["restore", "--from", str(data), "--to", f"offset:{offset}", "--data", str(tmp_path / "j"),
                     "--json", "--no-checkpoints"]) == 0
    info = orjson.loads(capsys.readouterr().out)
    assert info["offset"] == offset and info["base"] == "empty" and info["replayed"] == offset + 1
    assert cli.main(["restore", "--from", str(data), "--to", "soon", "--data", str(tmp_path / "z")]) == 1
    assert "cannot read the time" in " ".join(capsys.readouterr().err.split())
    assert cli.main(["restore", "--from", str(data), "--to", "end"]) == 1


def test_cli_in_place_needs_confirmation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, history = _build(tmp_path)
    before = sorted(p.name for p in (data / "log").iterdir())
    size = sum(p.stat().st_size for p in (data / "log").iterdir())
    offset = history[4][0]
    # pytest's stdin is not a terminal: without --yes nothing happens
    assert cli.main(["restore", "--from", str(data), "--to", f"offset:{offset}", "--in-place"]) == 1
    assert "--yes" in " ".join(capsys.readouterr().err.split())
    assert sorted(p.name for p in (data / "log").iterdir()) == before
    assert sum(p.stat().st_size for p in (data / "log").iterdir()) == size
    assert cli.main(["restore", "--from", str(data), "--to", f"offset:{offset}", "--in-place", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "discarded" in out and "tape stream --log" in " ".join(out.split())
    assert digest_of(data / "projection")[1] == offset
    archives = list(data.glob("discarded-*.avro"))
    assert len(archives) == 1
    # the archive is readable by `tape stream`
    assert cli.main(["stream", "--log", str(archives[0]), "--include-system"]) == 0
    lines = [orjson.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert lines and {e["source"]["offset"] for e in lines} <= set(range(offset + 1, len(history)))
    assert min(e["source"]["offset"] for e in lines) == offset + 1


def test_archive_log_rejects_writes(tmp_path: Path) -> None:
    data, _history = _build(tmp_path, 4)
    assert cli.main(["restore", "--from", str(data), "--to", "offset:1", "--in-place", "--yes"]) == 0
    archive = next(data.glob("discarded-*.avro"))

    async def go() -> None:
        log = ArchiveLog(archive)
        await log.open()
        with pytest.raises(LogError):
            await log.append([])
        assert await log.offset_for_timestamp(0) == 2
        # an archive of a tail cannot be restored on its own
        with pytest.raises(RestoreError, match="on its own"):
            await restore_to_dir(str(archive), Point("end"), tmp_path / "from-archive")
    asyncio.run(go())
    assert not os.path.exists(tmp_path / "from-archive")


@pytest.mark.parametrize("answer", ["n", "y"])
def test_cli_in_place_asks_on_a_terminal(tmp_path: Path, answer: str) -> None:
    import subprocess
    import sys
    data, history = _build(tmp_path, 6)
    before = asyncio.run(read_all(data / "log"))
    offset = history[2][0]
    master, slave = os.openpty()
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "restore", "--from", str(data), "--to",
                             f"offset:{offset}", "--in-place"], stdin=slave, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=root, env=dict(os.environ, PYTHONPATH=str(root)))
    os.close(slave)
    try:
        os.write(master, f"{answer}\n".encode())
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    text = " ".join((out + err).decode().split())
    assert "Discard" in text
    after = asyncio.run(read_all(data / "log"))
    if answer == "n":
        assert "Aborted" in text and after == before and not list(data.glob("discarded-*.avro"))
    else:
        assert after == before[:offset + 1] and len(list(data.glob("discarded-*.avro"))) == 1


async def test_cli_restore_then_serve_answers_searches_at_once(tmp_path: Path) -> None:
    # a checkpoint taken by the live server carries both indexes; the restored server neither rebuilds nor builds
    data = tmp_path / "data"
    server = ServerProcess(APPS / "indexed", data, command="serve").start(40)
    try:
        await fill_indexed(server, seed=11, message_batches=3, docs=150)
        await indexed_answers(server)  # (once the vector index is built: the checkpoint carries ready ones)
        key = (data / "admin_key").read_text().strip()
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{server.url}/api/admin/checkpoints",
                                 headers={"Authorization": f"Convex {key}"}) as resp:
                taken = await resp.json()
        assert taken["created"] and taken["search"] and taken["vectors"], taken
        point = taken["offset"] + 2  # two more records, replayed on top of the checkpoint by the restore
        await call(server, "mutation", "messages:send_many", {"items": [{"body": "apple zzz", "channel": "a"}]})
        await call(server, "mutation", "docs:add_many", {"rows": [{"title": "n", "kind": "x",
                                                                   "embedding": [1.0, 0.0, 0.0, 0.0]}]})
        await asyncio.sleep(0.5)  # (committed: documents still pending are scored a little differently)
        expected = await indexed_answers(server)
        await call(server, "mutation", "messages:send_many", {"items": [{"body": "zzz later", "channel": "a"}]})
    finally:
        assert server.stop() == 0, server.output()
    assert await asyncio.to_thread(cli.main, ["restore", "--from", str(data), "--to", f"offset:{point}",
                                              "--data", str(tmp_path / "new")]) == 0
    restored = ServerProcess(APPS / "indexed", tmp_path / "new", command="serve", extra=["--log-level", "info"])
    await asyncio.to_thread(restored.start, 40)
    try:
        assert await indexed_answers(restored) == expected  # the first search answers, as the source did then
        output = restored.output()
        assert "vector index docs.by_embedding loaded from its saved copy" in output, output
        assert "search index messages.search_body built" not in output, output  # not rebuilt
    finally:
        assert restored.stop() == 0, restored.output()
