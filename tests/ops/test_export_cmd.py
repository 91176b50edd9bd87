"""`tape export` / `tape import`: the command line over `history.snapshot`."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ops import cli
from tests.history.test_snapshot import documents, make_deployment


def test_cli_export_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    before = asyncio.run(make_deployment(data))
    assert cli.main(["export", "--data", str(data), "--out", str(tmp_path / "s.zip")]) == 0
    assert f"Exported {len(before)} document(s)" in capsys.readouterr().out
    assert cli.main(["import", str(tmp_path / "s.zip"), "--data", str(tmp_path / "new")]) == 0
    assert f"Imported {len(before)} document(s)" in capsys.readouterr().out
    assert documents(tmp_path / "new").keys() == before.keys()
    assert cli.main(["import", str(tmp_path / "nothing"), "--data", str(tmp_path / "new2")]) == 1
