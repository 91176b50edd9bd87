"""`tape export --format convex-zip` and `tape import CONVEX.zip`: the command line over `history.convex_zip`."""
from __future__ import annotations

import asyncio
import zipfile
from pathlib import Path

import pytest

from ops import cli
from tests.history.test_snapshot import documents, make_deployment


def test_cli_convex_zip_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    before = asyncio.run(make_deployment(data))
    out = tmp_path / "convex_export.zip"
    assert cli.main(["export", "--data", str(data), "--out", str(out), "--format", "convex-zip"]) == 0
    printed = capsys.readouterr().out
    assert f"Exported {len(before)} document(s)" in printed and "npx convex import" in printed
    with zipfile.ZipFile(out) as zf:
        assert "_tables/documents.jsonl" in zf.namelist() and "manifest.json" not in zf.namelist()
    # recognised as a Convex export without --format
    assert cli.main(["import", str(out), "--data", str(tmp_path / "new")]) == 0
    assert "from a Convex snapshot" in capsys.readouterr().out
    assert documents(tmp_path / "new").keys() == before.keys()


def test_cli_convex_zip_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    asyncio.run(make_deployment(data))
    assert cli.main(["export", "--data", str(data), "--out", str(tmp_path / "dir"), "--format", "convex-zip"]) == 1
    assert "--out FILE.zip" in capsys.readouterr().err
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("t/documents.jsonl", b'{"_id": "nope"}\n')
    assert cli.main(["import", str(bad), "--data", str(tmp_path / "new")]) == 1
    assert "t/documents.jsonl: line 1: _id 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
